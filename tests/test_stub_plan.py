"""A stub run reaches every process: PLAN's stub writes the test profile's real plan (assets/stub/plan.csv).

Before, the stub plan had no tasks, so `-stub` ran DEMO_DATA and PLAN and nothing else. Checked here without a
Nextflow runtime: the fixture is the plan slimreg makes for the test profile (rebuilt and compared); PLAN's stub
block, run in bash, writes it; and the subworkflow's own row closure and ``branch`` conditions, evaluated in Groovy
on it, send at least one task to every process.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_nextflow_channels import _java_env, groovy
from tests.test_nextflow_contract import KIND_TO_PROCESS, PROCESSES

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "assets" / "stub" / "plan.csv"
SHEET_FIXTURE = ROOT / "assets" / "stub" / "samplesheet.csv"
SUBWORKFLOW = ROOT / "subworkflows" / "local" / "registration" / "main.nf"
sys.path.insert(0, str(ROOT / "scripts"))
from make_stub_plan import TEST_PROFILE_ARGS  # noqa: E402


def _config_value(text: str, name: str) -> str:
    match = re.search(rf"^\s*{name}\s*=\s*'?([^'\s]+)'?", text, re.M)
    assert match, f"{name} not found"
    return match.group(1)


def test_the_fixture_is_planned_with_the_test_profile_settings() -> None:
    defaults, profile = (ROOT / "nextflow.config").read_text(), (ROOT / "conf" / "test.config").read_text()
    args = {flag: value for flag, value in zip(TEST_PROFILE_ARGS, [*TEST_PROFILE_ARGS[1:], ""], strict=True)
            if flag.startswith("--")}
    for flag, param in (("--engine", "engine"), ("--preset", "preset"), ("--max-frames", "max_frames")):
        assert args[flag] == _config_value(profile, param), flag
    for flag, param in (("--batch-size", "batch_size"), ("--tile-size", "tile_size"),
                        ("--compression", "compression"), ("--qc-max-dim", "qc_max_dim")):
        assert args[flag] == _config_value(defaults, param), flag
    assert _config_value(profile, "merge_chunks") == "true" and "--merge-chunks" in TEST_PROFILE_ARGS


def test_the_fixture_is_what_slimreg_plans_for_the_test_profile() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_stub_plan.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def _run_stub(process: str, values: dict[str, str], workdir: Path) -> None:
    """Run a stub block in bash as Nextflow would: values substituted, Groovy's ``\\$`` read as ``$``."""
    shell = re.search(r'"""(.*?)"""', PROCESSES[process]["stub"], re.S).group(1)
    for key, value in {**values, "task.process": process}.items():
        shell = shell.replace("${" + key + "}", value)
    assert "${" not in shell
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", shell.replace("\\$", "$")], cwd=workdir,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_stub_blocks_write_the_fixtures_and_a_spec_per_task(tmp_path: Path) -> None:
    _run_stub("DEMO_DATA", {"stub_sheet": SHEET_FIXTURE.read_text().strip()}, tmp_path)
    sheet = list(csv.DictReader((tmp_path / "demo" / "samplesheet.csv").open()))
    named = {row["image"] for row in sheet} | {row["landmarks"] for row in sheet if row["landmarks"]}
    assert named and all((tmp_path / "demo" / name).is_file() for name in named)  # PROBE runs on each
    _run_stub("PLAN", {"stub_plan": FIXTURE.read_text().strip()}, tmp_path)
    assert (tmp_path / "plan" / "plan.csv").read_text().strip() == FIXTURE.read_text().strip()
    json.loads((tmp_path / "plan" / "plan.json").read_text())
    json.loads((tmp_path / "plan" / "preflight.json").read_text())
    rows = list(csv.DictReader(FIXTURE.open()))
    assert {p.stem for p in (tmp_path / "plan" / "task_specs").glob("*.json")} == {row["id"] for row in rows}
    sources = {s for row in rows for s in row["sources"].split(";") if s}
    assert sources <= named, f"the stub plan names files the stub samplesheet does not: {sources - named}"


def _routing_script(rows: list[dict[str, str]]) -> str:
    """Groovy: the subworkflow's row closure and branch conditions applied to the fixture rows."""
    text = SUBWORKFLOW.read_text()
    row_closure = re.search(r"\.splitCsv\(header: true\)\s*\.map (\{ row ->.*?\n        \})", text, re.S).group(1)
    conditions = re.findall(r"^\s*(\w+): (meta\.kind == '\w+')\s*$", text, re.M)
    assert conditions, "no branch conditions found in the subworkflow"
    lines = ["import groovy.json.JsonOutput", "def file(String p) { new File(p) }",
             f"def toTask = {row_closure}", "def routed = [:]", "def item", "def meta"]
    for row in rows:
        literal = ", ".join(f"{json.dumps(key)}: {json.dumps(value)}" for key, value in row.items())
        lines.append(f"item = toTask([{literal}]); meta = item.find {{ it instanceof Map }}")
        branches = " else ".join(f"if ({cond}) {{ routed['{name}'] = (routed['{name}'] ?: 0) + 1 }}"
                                 for name, cond in conditions)
        lines.append(branches)
    lines.append("println JsonOutput.toJson(routed)")
    return "\n".join(lines)


@pytest.mark.skipif(groovy() is None, reason="groovy is not installed (.ci/system-packages installs Debian's)")
def test_the_stub_plan_sends_tasks_to_every_process() -> None:
    rows = list(csv.DictReader(FIXTURE.open()))
    script = _routing_script(rows)
    result = subprocess.run([*groovy(), "-e", script], capture_output=True, text=True, env=_java_env(), timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    routed = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(routed) == set(KIND_TO_PROCESS), f"tasks per branch: {routed}; every process needs one"
    expected = {kind: sum(row["kind"] == kind for row in rows) for kind in KIND_TO_PROCESS}
    assert routed == expected

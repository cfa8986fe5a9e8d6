"""The Nextflow layer's contract with the Python package, read from the .nf/.config files.

What the pipeline does when it runs is checked by running it under a real Nextflow (scripts/check_pipeline.py:
stub, the test profile, -resume, a failing image, single-image samples, a samplesheet over HTTP) and its syntax
by Nextflow's own strict parsers (`scripts/nextflow lint -strict .`), both in CI. What is checked here, in a second,
is what a run on demo data cannot show: every flag the pipeline passes exists in slimreg's CLI, every param is in
the schema and the other way round, each kind of task goes to a process of its name, retries raise memory and not
threads, and the samplesheet schema accepts what slimreg accepts.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from slimreg.kinds import KINDS

ROOT = Path(__file__).resolve().parent.parent
MODULES = ROOT / "modules" / "local"
SUBWORKFLOW = ROOT / "subworkflows" / "local" / "registration" / "main.nf"
# the kinds run from a spec by RUN_TASK under their own process name (REPORT runs `slimreg report`)
KIND_TO_PROCESS = {name: kind.process for name, kind in KINDS.items() if name != "report"}


def nextflow_files() -> list[Path]:
    files = [*ROOT.glob("*.nf"), *ROOT.glob("*.config"), *ROOT.glob("conf/*.config"), *MODULES.glob("*/main.nf"),
             *(ROOT / "subworkflows").glob("**/*.nf")]
    return [path for path in files if path.name != "nf-test.config"]


def _block(text: str, name: str, following: tuple[str, ...]) -> str:
    match = re.search(rf"^\s*{name}:\s*$(.*?)(?=^\s*(?:{'|'.join(following)}):\s*$|^\}}|\Z)", text, re.S | re.M)
    return match.group(1) if match else ""


def modules() -> dict[str, dict[str, str]]:
    """Process name -> {file, script (its shell text), outputs, stub} for every module."""
    found = {}
    for path in sorted(MODULES.glob("*/main.nf")):
        text = path.read_text()
        name = re.search(r"^process (\w+)", text, re.M).group(1)
        script = _block(text, "script", ("stub",))
        shell = re.search(r'"""(.*?)"""', script, re.S)
        found[name] = {"file": str(path), "script": shell.group(1) if shell else "",
                       "outputs": _block(text, "output", ("script",)), "stub": _block(text, "stub", ("__never__",))}
    return found


MODULE_PROCESSES = modules()


def test_every_module_has_a_stub_meta_and_versions() -> None:
    assert set(MODULE_PROCESSES) == {"PROBE", "PLAN", "RUN_TASK", "REPORT", "DEMO_DATA", "RUN_OUTCOME"}
    for name, process in MODULE_PROCESSES.items():
        assert process["stub"].strip(), f"{name} has no stub block"
        assert "versions.yml" in process["stub"] and "versions.yml" in process["outputs"], name
        assert (Path(process["file"]).parent / "meta.yml").is_file(), name
    # every tool that runs threads is told the task's CPUs
    assert "VIPS_CONCURRENCY=${task.cpus}" in MODULE_PROCESSES["RUN_TASK"]["script"]


def test_each_kind_goes_to_run_task_under_its_process_name() -> None:
    """One registry of kinds (slimreg.kinds): the subworkflow includes RUN_TASK once per kind, under the kind's
    process name, and branches on exactly those kinds."""
    text = SUBWORKFLOW.read_text()
    aliases = set(re.findall(r"include \{ RUN_TASK as (\w+)\s*\}", text))
    assert aliases == set(KIND_TO_PROCESS.values())
    branches = dict(re.findall(r"^\s*(\w+): meta\.kind == '(\w+)'\s*$", text, re.M))
    assert branches == {kind: kind for kind in KIND_TO_PROCESS}
    for kind, process in KIND_TO_PROCESS.items():
        assert re.search(rf"{process}\((?:\w+\.out\.ready|ch_tasks\.{kind}\b)", text), f"{kind} not wired"
    assert "--spec task.json" in MODULE_PROCESSES["RUN_TASK"]["script"]
    assert KINDS["report"].process == "REPORT"


def _channel_definitions(text: str) -> dict[str, str]:
    """``ch_name`` -> the text of its assignment (continuation lines that start with ``.`` included)."""
    found = {}
    for match in re.finditer(r"^\s*(ch_\w+) = (.*?)(?=\n(?!\s*\.))", text, re.S | re.M):
        found[match.group(1)] = match.group(2)
    return found


def _processes_in(expression: str, definitions: dict[str, str], seen: frozenset[str] = frozenset()) -> set[str]:
    """The processes whose outputs flow into a channel expression, following ``ch_`` names to their definitions."""
    processes = set(re.findall(r"\b([A-Z][A-Z_]+)\.out\b", expression))
    for name in set(re.findall(r"\bch_\w+\b", expression)) - seen:
        if name in definitions:
            processes |= _processes_in(definitions[name], definitions, seen | {name})
    return processes


def test_every_task_is_handed_the_files_of_every_kind_it_depends_on() -> None:
    """Each kind's tasks wait (WAIT_FOR_DEPENDENCIES) on a channel of finished tasks: every kind of task a task of
    the stub plan (every kind, the demo's samples) depends on must flow into that channel, or the task never starts
    and its outputs are silently missing (a reference's corrected pieces merged from CORRECT_MOTION were)."""
    text = SUBWORKFLOW.read_text()
    definitions = _channel_definitions(text)
    waits = {}  # kind -> processes whose finished tasks its tasks are released by
    for wait, kind in re.findall(r"^\s*(WAIT_\w+)\(ch_tasks\.(\w+),", text, re.M):
        call = re.search(rf"^\s*{wait}\(ch_tasks\.{kind}, (.*)\)\s*$", text, re.M).group(1)
        waits[kind] = _processes_in(call, definitions)
    with open(ROOT / "assets" / "stub" / "plan.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    kind_of = {row["id"]: row["kind"] for row in rows}
    checked = 0
    for row in rows:
        if row["kind"] == "report" or not row["depends_on"]:
            continue
        for dependency in row["depends_on"].split(";"):
            assert KIND_TO_PROCESS[kind_of[dependency]] in waits.get(row["kind"], set()), (
                f"{row['id']} depends on {dependency}, whose process {KIND_TO_PROCESS[kind_of[dependency]]} does "
                f"not feed the wait of {row['kind']} tasks")
            checked += 1
    assert checked > 20


def _slimreg_help(command: str) -> str:
    return subprocess.run([sys.executable, str(ROOT / "bin" / "slimreg"), command, "--help"], capture_output=True,
                          text=True, check=True).stdout


def test_every_flag_the_pipeline_passes_exists_in_slimregs_cli() -> None:
    modules_config = (ROOT / "conf" / "modules.config").read_text()
    plan_flags = set(re.findall(r"(--[a-z][a-z0-9-]+)", _withname_block(modules_config, "PLAN")))
    task_flags = set(re.findall(r"(--[a-z][a-z0-9-]+)", _withname_block(modules_config, "REGISTER")))
    checked = 0
    for name, process in MODULE_PROCESSES.items():
        for line in process["script"].splitlines():
            words = line.split()
            if len(words) < 2 or words[0] != "slimreg" or words[1] == "versions":
                continue
            flags = set(re.findall(r"(--[a-z][a-z0-9-]+)", line))
            flags |= plan_flags if words[1] == "plan" else task_flags if words[1] == "run-task" else set()
            missing = [flag for flag in flags if flag not in _slimreg_help(words[1])]
            assert not missing, f"{name}: slimreg {words[1]} does not accept {missing}"
            checked += 1
    assert checked >= 5


def _withname_block(text: str, name: str) -> str:
    match = re.search(rf"withName: '{name}' \{{(.*?)^    \}}", text, re.S | re.M)
    assert match, f"no withName: '{name}' block"
    return match.group(1)


def _params_in(text: str) -> set[str]:
    return set(re.findall(r"params\.([A-Za-z_]\w*)", text))


def test_params_match_config_and_schema() -> None:
    used = set()
    for path in nextflow_files():
        if path.name != "nextflow.config":
            used |= _params_in(path.read_text())
    config = (ROOT / "nextflow.config").read_text()
    block = re.search(r"^params\s*\{(.*?)^\}", config, re.S | re.M).group(1)
    declared = set(re.findall(r"^\s*([A-Za-z_]\w*)\s*=", block, re.M))
    test_params = set(re.findall(r"^\s*([A-Za-z_]\w*)\s*=", re.search(
        r"params\s*\{(.*?)\}", (ROOT / "conf" / "test.config").read_text(), re.S).group(1), re.M))
    schema = json.loads((ROOT / "nextflow_schema.json").read_text())
    in_schema = {name for group in schema["$defs"].values() for name in group["properties"]}
    assert used <= declared, f"used but not declared in nextflow.config: {used - declared}"
    assert test_params <= declared
    assert declared == in_schema, f"config only: {declared - in_schema}; schema only: {in_schema - declared}"
    for group in schema["$defs"].values():
        for name, spec in group["properties"].items():
            assert spec.get("description"), f"{name} has no description in nextflow_schema.json"


def test_retries_raise_memory_not_threads() -> None:
    """A retry after an out-of-memory kill asks for more memory (the plan's estimate times the attempt) and a
    lower preset (slimreg's own ladder), never more CPUs: threads follow task.cpus and would raise memory use."""
    base = (ROOT / "conf" / "base.config").read_text()
    assert "task.exitStatus in ((130..145) + 104 + 175) ? 'retry' : 'finish'" in base
    assert re.search(r"maxRetries\s*=\s*2", base) and "resourceLimits" in base
    cpus = re.findall(r"cpus\s*=\s*\{([^}]*)\}", base)
    assert cpus and not [c for c in cpus if "attempt" in c], f"cpus that grow with the attempt: {cpus}"
    run_task = Path(MODULE_PROCESSES["RUN_TASK"]["file"]).read_text()
    memory = re.search(r"^\s*memory \{(.*)\}\s*$", run_task, re.M).group(1)
    assert "meta.peak_memory_bytes" in memory and "task.attempt" in memory
    assert re.search(r"^\s*disk \{.*meta\.disk_bytes", run_task, re.M), "each task asks for its planned disk"
    assert "--preset-for-attempt ${task.attempt}" in _withname_block((ROOT / "conf" / "modules.config").read_text(),
                                                                      "REGISTER")
    assert "process.cache = 'lenient'" in (ROOT / "nextflow.config").read_text()


def test_plan_compares_estimates_with_the_limits_tasks_really_get() -> None:
    plan = _withname_block((ROOT / "conf" / "modules.config").read_text(), "PLAN")
    assert "--task-memory-limit '${task.resourceLimits?.memory ?: params.max_memory}'" in plan
    assert "--task-disk-limit" in plan


def test_samplesheet_schema_accepts_every_reference_word_slimreg_reads() -> None:
    """nf-schema validates rows before slimreg sees them: it must not reject what slimreg accepts (yes, 1, T)."""
    from slimreg.samplesheet import FALSE_WORDS, TRUE_WORDS

    schema = json.loads((ROOT / "assets" / "schema_input.json").read_text())
    reference = schema["items"]["properties"]["reference"]
    assert "string" in reference["type"] and "boolean" in reference["type"]
    pattern = re.compile(reference["pattern"])
    for word in (TRUE_WORDS | FALSE_WORDS) - {""}:
        for variant in (word, word.upper(), word.capitalize()):
            assert pattern.match(variant), variant
    for wrong in ("maybe", "2", "truth", "nope"):
        assert not pattern.match(wrong), wrong


ROW_SCHEMA = json.loads((ROOT / "assets" / "schema_input.json").read_text())


def _schema_accepts(row: dict[str, str]) -> bool:
    return not list(jsonschema.Draft202012Validator(ROW_SCHEMA).iter_errors([row]))


# (.ndpi: the schema accepts it, but tifffile reads any file of that name as Hamamatsu's format, so a plain TIFF
# renamed cannot stand in for one here)
@pytest.mark.parametrize("name", ["UPPER.TIF", "slide.SVS", "with space.ome.tif", "a.btf",
                                  "sub/dir/x.tiff", "s3://bucket/x.TIFF", "round 1 (DAPI).tif"])
def test_the_samplesheet_schema_and_slimreg_accept_the_same_image_names(tmp_path: Path, name: str) -> None:
    """One rule for image names, slimreg's: any name, the file's header decides. nf-schema must not refuse a name
    that `slimreg validate` accepts (upper-case extensions, spaces, .ndpi)."""
    from slimreg.samplesheet import read_samplesheet

    row = {"sample": "s", "image": name, "reference": "false"}
    assert _schema_accepts(row), f"the schema refuses {name!r}"
    assert _schema_accepts({**row, "image": "scan.ndpi"})
    if "://" in name:
        return
    import numpy as np
    import tifffile

    for stem in ("ref.tif", name):  # a plain TIFF under each name (tifffile would pick a format by extension)
        (tmp_path / stem).parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(tmp_path / "plain.tif", np.zeros((64, 64), np.uint8))
        (tmp_path / "plain.tif").rename(tmp_path / stem)
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(f"sample,image,reference\ns,ref.tif,true\ns,{name},false\n")
    assert len(read_samplesheet(sheet, probe_images=True).rows) == 2


@pytest.mark.parametrize("sample", ["has space", "a/b", ".hidden", "tab\there", ""])
def test_the_samplesheet_schema_refuses_sample_names_slimreg_refuses(tmp_path: Path, sample: str) -> None:
    from slimreg.errors import InputError
    from slimreg.samplesheet import read_samplesheet

    assert not _schema_accepts({"sample": sample, "image": "x.tif", "reference": "true"})
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(f'sample,image,reference\n"{sample}",x.tif,true\n')
    with pytest.raises(InputError):
        read_samplesheet(sheet, probe_images=False)

"""A stub run reaches every process: PLAN's stub writes the test profile's real plan (assets/stub/plan.csv).

Checked here: the fixture is the plan slimreg makes for the test profile (rebuilt and compared), so it does not go
stale. That a `-stub` run of the pipeline then reaches every process is checked by running it under a real
Nextflow (scripts/check_pipeline.py, in CI).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
    assert _config_value(profile, "merge_channels") == "true" and "--merge-channels" in TEST_PROFILE_ARGS


def test_the_fixture_is_what_slimreg_plans_for_the_test_profile() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_stub_plan.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr

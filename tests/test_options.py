"""One source for options and defaults: the CLI, the Python API, the settings and the Nextflow pipeline's schema and
config all say what slimreg/options.py says (a default changed in one place only fails here)."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

from slimreg import options
from slimreg.cli import build_parser
from slimreg.plan import PlanSettings
from slimreg.register.settings import RegistrationSettings
from slimreg.runner import run_job

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = {name: spec for group in json.loads((ROOT / "nextflow_schema.json").read_text())["$defs"].values()
          for name, spec in group["properties"].items()}
# pipeline param -> (option list or None, default)
PIPELINE = {"engine": (options.ENGINES, options.DEFAULT_ENGINE), "preset": (options.PRESET_ORDER,
                                                                          options.DEFAULT_PRESET),
            "compression": (options.COMPRESSIONS, options.DEFAULT_COMPRESSION),
            "format": (options.FORMATS, options.DEFAULT_FORMAT),
            "motion_correction": (options.MOTION_CORRECTION_MODES, options.DEFAULT_MOTION_CORRECTION),
            "tile_size": (None, options.DEFAULT_TILE_SIZE), "batch_size": (None, options.DEFAULT_BATCH_SIZE),
            "qc_max_dim": (None, options.DEFAULT_QC_MAX_DIM)}


def test_the_schema_offers_and_defaults_what_slimreg_does() -> None:
    for name, (choices, default) in PIPELINE.items():
        assert SCHEMA[name]["default"] == default, name
        if choices is not None:
            assert set(SCHEMA[name]["enum"]) == set(choices), name


def test_nextflow_config_defaults_are_slimregs() -> None:
    config = (ROOT / "nextflow.config").read_text()
    for name, (_, default) in PIPELINE.items():
        value = re.search(rf"^\s*{name}\s*=\s*'?([^'\s]+)'?", config, re.M).group(1)
        assert value == str(default), name


def test_the_cli_and_the_python_api_default_to_the_same_values() -> None:
    args = build_parser().parse_args(["run", "--input", "s.csv", "--outdir", "o"])
    api = {name: p.default for name, p in inspect.signature(run_job).parameters.items()}
    for name, default in (("engine", options.DEFAULT_ENGINE), ("preset", options.DEFAULT_PRESET),
                          ("compression", options.DEFAULT_COMPRESSION), ("tile_size", options.DEFAULT_TILE_SIZE),
                          ("batch_size", options.DEFAULT_BATCH_SIZE), ("qc_max_dim", options.DEFAULT_QC_MAX_DIM),
                          ("mode", options.DEFAULT_MODE), ("max_retries", options.DEFAULT_MAX_RETRIES),
                          ("output_format", options.DEFAULT_FORMAT),
                          ("motion_correction", options.DEFAULT_MOTION_CORRECTION)):
        assert getattr(args, name) == default == api[name], name
    settings, plan = RegistrationSettings(), PlanSettings()
    assert (settings.engine, settings.preset, settings.tile_size, settings.compression) == (
        options.DEFAULT_ENGINE, options.DEFAULT_PRESET, options.DEFAULT_TILE_SIZE, options.DEFAULT_COMPRESSION)
    assert (plan.batch_size, plan.qc_max_dim, plan.motion_correction) == (
        options.DEFAULT_BATCH_SIZE, options.DEFAULT_QC_MAX_DIM, options.DEFAULT_MOTION_CORRECTION)

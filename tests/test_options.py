"""One source for options and defaults: the CLI, the Python API, the settings and the Nextflow pipeline's schema and
config all say what slimreg/options.py says (a default changed in one place only fails here)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from slimreg import options
from slimreg.cli import build_parser
from slimreg.job_options import JobOptions
from slimreg.plan import PlanSettings
from slimreg.register.settings import RegistrationSettings

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = {name: spec for group in json.loads((ROOT / "nextflow_schema.json").read_text())["$defs"].values()
          for name, spec in group["properties"].items()}
# pipeline param -> (option list or None, default)
PIPELINE = {"engine": (options.ENGINES, options.DEFAULT_ENGINE), "preset": (options.PRESET_ORDER,
                                                                          options.DEFAULT_PRESET),
            "compression": (options.COMPRESSIONS, options.DEFAULT_COMPRESSION),
            "format": (options.FORMATS, options.DEFAULT_FORMAT),
            "motion_correction": (options.MOTION_CORRECTION_MODES, options.DEFAULT_MOTION_CORRECTION),
            "motion_dtype": (options.MOTION_DTYPES, options.DEFAULT_MOTION_DTYPE),
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
    api = {f.name: f.default for f in dataclasses.fields(JobOptions)}
    for name, default in (("engine", options.DEFAULT_ENGINE), ("preset", options.DEFAULT_PRESET),
                          ("compression", options.DEFAULT_COMPRESSION), ("tile_size", options.DEFAULT_TILE_SIZE),
                          ("batch_size", options.DEFAULT_BATCH_SIZE), ("qc_max_dim", options.DEFAULT_QC_MAX_DIM),
                          ("mode", options.DEFAULT_MODE), ("max_retries", options.DEFAULT_MAX_RETRIES),
                          ("output_format", options.DEFAULT_FORMAT),
                          ("motion_correction", options.DEFAULT_MOTION_CORRECTION),
                          ("motion_dtype", options.DEFAULT_MOTION_DTYPE)):
        assert getattr(args, name) == default == api[name], name
    settings, plan = RegistrationSettings(), PlanSettings()
    assert (settings.engine, settings.preset, settings.tile_size, settings.compression) == (
        options.DEFAULT_ENGINE, options.DEFAULT_PRESET, options.DEFAULT_TILE_SIZE, options.DEFAULT_COMPRESSION)
    assert (plan.batch_size, plan.qc_max_dim, plan.motion_correction, plan.motion_dtype) == (
        options.DEFAULT_BATCH_SIZE, options.DEFAULT_QC_MAX_DIM, options.DEFAULT_MOTION_CORRECTION,
        options.DEFAULT_MOTION_DTYPE)


def test_every_job_option_is_a_slimreg_run_flag_and_reaches_the_options_object() -> None:
    """The CLI hands run_job one JobOptions built from its arguments: a field with no flag of the same name would be
    silently left at its default."""
    args = build_parser().parse_args(["run", "--input", "s.csv", "--outdir", "o", "--preset", "low", "--format",
                                      "ome-zarr", "--workers", "2", "--mode", "parallel", "--max-frames", "7"])
    missing = [f.name for f in dataclasses.fields(JobOptions) if not hasattr(args, f.name) and f.name != "progress"]
    assert not missing, missing
    job = JobOptions.from_values(args)
    assert (job.preset, job.output_format, job.workers, job.mode, job.max_frames) == (
        "low", "ome-zarr", 2, "parallel", 7)
    assert job.registration_settings().preset == "low" and job.plan_settings().max_frames == 7


def test_job_options_refuse_impossible_values_and_unknown_names_at_once() -> None:
    import pytest

    from slimreg.errors import ParameterError

    with pytest.raises(ParameterError, match="needs --mode parallel"):
        JobOptions(workers=2)
    with pytest.raises(ParameterError, match=r"unknown option\(s\) engin; the options are"):
        JobOptions().changed(engin="feature")
    assert JobOptions().changed(preset="low").preset == "low"

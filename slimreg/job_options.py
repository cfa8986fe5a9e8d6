"""Everything a whole job (``slimreg run``, :func:`slimreg.run_job`) is told, as one typed object.

The CLI builds it from its arguments, the Python API takes it (or its fields as keywords), and it hands the plan
its two parts: :class:`RegistrationSettings` (what REGISTER does) and :class:`PlanSettings` (how the work is cut
into tasks). The rest says how this machine runs the plan. Every default comes from :mod:`slimreg.options`, so
the CLI, the API, the pipeline's params and the schema cannot drift (tests/test_options.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from slimreg.errors import ParameterError
from slimreg.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_COMPRESSION,
    DEFAULT_ENGINE,
    DEFAULT_FORMAT,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MODE,
    DEFAULT_MOTION_CORRECTION,
    DEFAULT_MOTION_DTYPE,
    DEFAULT_PRESET,
    DEFAULT_QC_MAX_DIM,
    DEFAULT_TILE_SIZE,
    MODES,
)
from slimreg.plan_model import PlanSettings
from slimreg.register.settings import RegistrationSettings

# fields that override the preset's registration values only when given (None: the preset's)
PRESET_OVERRIDES = ("processing_dim", "non_rigid_dim", "micro_dim", "transform_model", "allow_mirror")


@dataclass(frozen=True)
class JobOptions:
    """One job's options; each field is the ``slimreg run`` flag of the same name (``output_format``: --format)."""

    # registration (RegistrationSettings)
    engine: str = DEFAULT_ENGINE
    preset: str = DEFAULT_PRESET
    channel: str | None = None
    non_rigid: bool = True
    micro: bool = True
    processing_dim: int | None = None
    non_rigid_dim: int | None = None
    micro_dim: int | None = None
    transform_model: str | None = None
    allow_mirror: bool | None = None
    tile_size: int = DEFAULT_TILE_SIZE
    compression: str = DEFAULT_COMPRESSION
    # the plan (PlanSettings)
    batch_size: int = DEFAULT_BATCH_SIZE
    max_frames: int | None = None
    max_chunk_gb: float | None = None
    merge_chunks: bool = False
    merge_channels: bool = False
    merge_nuclear_once: bool = False
    output_format: str = DEFAULT_FORMAT
    motion_correction: str = DEFAULT_MOTION_CORRECTION
    motion_dtype: str = DEFAULT_MOTION_DTYPE
    qc_max_dim: int = DEFAULT_QC_MAX_DIM
    # how this machine runs the plan
    mode: str = DEFAULT_MODE
    workers: int = 1
    timeout_per_task: float | None = None
    max_retries: int = DEFAULT_MAX_RETRIES
    resume: bool = False
    force: bool = False
    memory_debug: bool = False
    progress: bool | None = None  # None: bars on a terminal, log lines otherwise
    max_memory: int | None = None  # bytes a task's process tree may use, below its estimate's budget

    def __post_init__(self) -> None:
        """Refuse impossible execution options at once, before anything is read or written."""
        if self.mode not in MODES:
            raise ParameterError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}.")
        if self.workers < 1:
            raise ParameterError(f"--workers must be at least 1, got {self.workers}.")
        if self.mode != "parallel" and self.workers > 1:
            raise ParameterError(f"--workers {self.workers} needs --mode parallel.",
                                 fix="add --mode parallel or drop --workers.")
        if self.max_retries < 0:
            raise ParameterError(f"--max-retries must be 0 or more, got {self.max_retries}.")
        if self.timeout_per_task is not None and self.timeout_per_task <= 0:
            raise ParameterError(f"--timeout-per-task must be positive, got {self.timeout_per_task}.")
        if self.max_memory is not None and self.max_memory <= 0:
            raise ParameterError(f"--max-memory must be positive, got {self.max_memory}.")
        if self.timeout_per_task is not None and self.mode == "serial":
            raise ParameterError("--timeout-per-task needs a task in its own process.",
                                 fix="add --mode subprocess (or parallel).")

    @classmethod
    def from_values(cls, values: Any) -> JobOptions:
        """From any object with these names as attributes (the CLI's parsed arguments); others are ignored."""
        return cls(**{f.name: getattr(values, f.name) for f in fields(cls) if hasattr(values, f.name)})

    def changed(self, **changes: Any) -> JobOptions:
        """A copy with ``changes``; an unknown name is an error that lists the known ones."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ParameterError(f"unknown option(s) {', '.join(unknown)}; the options are {', '.join(sorted(known))}.")
        return type(self)(**{**{name: getattr(self, name) for name in known}, **changes})

    def registration_settings(self) -> RegistrationSettings:
        """What REGISTER does: the preset's values, with the options given here taking precedence."""
        overrides = {name: getattr(self, name) for name in PRESET_OVERRIDES}
        return RegistrationSettings.from_preset(
            self.preset, engine=self.engine, channel=self.channel, non_rigid=self.non_rigid, micro=self.micro,
            tile_size=self.tile_size, compression=self.compression, **overrides)

    def plan_settings(self) -> PlanSettings:
        """How the work is cut into tasks."""
        return PlanSettings(batch_size=self.batch_size, max_frames=self.max_frames, max_chunk_gb=self.max_chunk_gb,
                            merge_chunks=self.merge_chunks, merge_channels=self.merge_channels,
                            merge_nuclear_once=self.merge_nuclear_once, qc_max_dim=self.qc_max_dim,
                            workers=self.workers, output_format=self.output_format,
                            motion_correction=self.motion_correction, motion_dtype=self.motion_dtype)

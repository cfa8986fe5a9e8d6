"""The plan as data: its tasks, each task's own spec, and reading and writing plan.json / plan.csv.

Low in the package: the kinds, the estimates, the executor and the report all read tasks, and nothing here
reads them back. Making a plan from a samplesheet is :mod:`slimreg.plan`'s job.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import slimreg.layout as layout
from slimreg._version import __version__
from slimreg.atomic import write_json_atomic, write_text_atomic
from slimreg.errors import InputError, ParameterError
from slimreg.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FORMAT,
    DEFAULT_MOTION_CORRECTION,
    DEFAULT_MOTION_DTYPE,
    DEFAULT_QC_MAX_DIM,
    FORMATS,
    MOTION_CORRECTION_MODES,
    MOTION_DTYPES,
)

TASK_SPEC_FORMAT = "slimreg-task"


@dataclass(frozen=True)
class PlanSettings:
    """Settings that shape the plan (registration settings travel inside register tasks)."""

    batch_size: int = DEFAULT_BATCH_SIZE
    max_frames: int | None = None
    max_chunk_gb: float | None = None
    merge_chunks: bool = False
    merge_channels: bool = False  # one multi-channel image per sample of fluorescence rounds
    merge_nuclear_once: bool = False  # in it, the registration (nuclear) channel of the reference round only
    qc_max_dim: int = DEFAULT_QC_MAX_DIM
    workers: int = 1
    output_format: str = DEFAULT_FORMAT  # --format: what registered/<sample>/ and merged/ hold
    motion_correction: str = DEFAULT_MOTION_CORRECTION  # each recording's frames onto its session's template
    motion_dtype: str = DEFAULT_MOTION_DTYPE  # the corrected frames' type (--motion-dtype)

    def validate(self) -> None:
        if self.motion_correction not in MOTION_CORRECTION_MODES:
            raise ParameterError(f"unknown --motion-correction {self.motion_correction!r}; choose one of "
                                 f"{', '.join(MOTION_CORRECTION_MODES)}.")
        if self.motion_dtype not in MOTION_DTYPES:
            raise ParameterError(f"unknown --motion-dtype {self.motion_dtype!r}; choose one of "
                                 f"{', '.join(MOTION_DTYPES)}.")
        if self.output_format not in FORMATS:
            raise ParameterError(f"unknown --format {self.output_format!r}; choose one of {', '.join(FORMATS)}.")
        if self.batch_size < 1:
            raise ParameterError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if self.max_frames is not None and self.max_frames < 1:
            raise ParameterError(f"--max-frames must be at least 1, got {self.max_frames}.")
        if self.max_chunk_gb is not None and self.max_chunk_gb <= 0:
            raise ParameterError(f"--max-chunk-gb must be positive, got {self.max_chunk_gb}.")
        if self.workers < 1:
            raise ParameterError(f"--workers must be at least 1, got {self.workers}.")
        if self.qc_max_dim < 64:
            raise ParameterError(f"--qc-max-dim must be at least 64, got {self.qc_max_dim}.")


@dataclass
class Task:
    """One unit of work; ``params`` holds what the executor needs beyond inputs and outputs."""

    id: str
    kind: str
    sample: str
    inputs: list[str]
    outputs: list[str]
    settings: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    depends_on: list[str] = field(default_factory=list)
    peak_memory_bytes: int = 0
    disk_bytes: int = 0
    # the inputs that come from the samplesheet, not from another task (Nextflow stages these, in this order)
    sources: list[str] = field(default_factory=list)


@dataclass
class Plan:
    samplesheet: str
    outdir: str
    registration: dict[str, Any]
    settings: dict[str, Any]
    tasks: list[Task]
    notes: list[str]
    version: str = __version__

    def task(self, task_id: str) -> Task:
        for task in self.tasks:
            if task.id == task_id:
                return task
        raise InputError(f"the plan has no task {task_id!r}.", fix="list task ids with `slimreg plan`.")

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "samplesheet": self.samplesheet, "outdir": self.outdir,
                "registration": self.registration, "settings": self.settings, "notes": self.notes,
                "tasks": [asdict(t) for t in self.tasks]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        return cls(samplesheet=data["samplesheet"], outdir=data["outdir"], registration=data["registration"],
                   settings=data["settings"], tasks=[Task(**t) for t in data["tasks"]], notes=data.get("notes", []),
                   version=data.get("version", __version__))

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        try:
            return cls.from_json(json.loads(path.read_text()))
        except FileNotFoundError as error:
            raise InputError("plan file not found.", path, "create it with `slimreg plan`.") from error
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise InputError(f"is not a slimreg plan ({error}).", path, "create it with `slimreg plan`.") from error

    def task_spec(self, task: Task) -> dict[str, Any]:
        """What one task needs to run, and only that: its own settings, files and outputs.

        No output folder, samplesheet path or other task is in it, so a change elsewhere in the plan leaves it
        byte for byte the same (Nextflow hashes it as the task's input, so ``-resume`` keeps the task's result).
        """
        spec = {"format": TASK_SPEC_FORMAT, "version": self.version, **asdict(task)}
        spec.pop("depends_on")  # the order of tasks is the workflow's business, not the task's
        return spec

    @staticmethod
    def task_from_spec(spec: dict[str, Any], where: Path | None = None) -> Task:
        """The task a spec file describes (:meth:`task_spec`); ``where`` names the file in errors."""
        if not isinstance(spec, dict) or spec.get("format") != TASK_SPEC_FORMAT:
            raise InputError("is not a slimreg task spec.", where,
                             "use a task_specs/<id>.json written by `slimreg plan`.")
        fields = {k: v for k, v in spec.items() if k not in ("format", "version")}
        try:
            return Task(**fields)
        except TypeError as error:
            raise InputError(f"is not a task spec of this slimreg version ({error}).", where,
                             f"plan again with slimreg {__version__}.") from error

    def write(self, folder: str | Path) -> tuple[Path, Path]:
        """Write ``plan.json``, a flat ``plan.csv`` (for Nextflow's splitCsv) and one spec per task
        (``task_specs/<id>.json``) into ``folder``."""
        folder = Path(folder)
        json_path = write_json_atomic(folder / "plan.json", self.to_json())
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["id", "kind", "sample", "peak_memory_bytes", "disk_bytes", "depends_on", "sources", "inputs",
                         "outputs"])
        for t in self.tasks:
            writer.writerow([t.id, t.kind, t.sample, t.peak_memory_bytes, t.disk_bytes, ";".join(t.depends_on),
                             ";".join(t.sources), ";".join(t.inputs), ";".join(t.outputs)])
        csv_path = write_text_atomic(folder / "plan.csv", buffer.getvalue())
        specs = folder / layout.TASK_SPECS
        for stale in specs.glob("*.json") if specs.is_dir() else []:
            stale.unlink()
        for t in self.tasks:
            write_json_atomic(specs / f"{t.id}.json", self.task_spec(t))
        return json_path, csv_path


__all__ = ["TASK_SPEC_FORMAT", "Plan", "PlanSettings", "Task"]

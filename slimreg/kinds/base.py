"""What every kind of task provides, and what it is given to estimate and to run.

A kind (split, project, register, merge, qc, report) is one module in this package: its params type (what its
spec's ``params`` hold, read and written as JSON), the Nextflow process that runs it, its memory and disk
estimate, and its run function. The plan writes params through the kind's type, the estimate and the executor
dispatch through the registry (slimreg.kinds), and the subworkflow's ``branch`` names the same processes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import slimreg.layout as layout
from slimreg.io.probe import ImageInfo, probe

if TYPE_CHECKING:
    from slimreg.locations import Locations
    from slimreg.memory import MemoryTracker
    from slimreg.plan_model import Plan, Task

P = TypeVar("P", bound="Params")


class Params:
    """A kind's params as a dataclass, stored in a task's JSON as a plain dict."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls: type[P], data: dict[str, Any]) -> P:
        return cls(**data)


@dataclass(frozen=True)
class NoParams(Params):
    """Kinds whose inputs and outputs say everything (merge, report)."""


@dataclass
class EstimateContext:
    """Headers known while estimating a plan in order: samplesheet files (probed once) and earlier tasks' outputs.

    Settings are not here: each task carries its own (a register task all its registration settings, a QC task
    its size), so a task's estimate depends on nothing outside it."""

    infos: dict[str, ImageInfo] = field(default_factory=dict)
    produced: dict[str, ImageInfo] = field(default_factory=dict)

    def source(self, path: str) -> ImageInfo | None:
        """The header of a samplesheet image (None for an output of an earlier task)."""
        if path.startswith(layout.PRODUCED_PREFIXES):
            return None
        if path not in self.infos:
            self.infos[path] = probe(path)
        return self.infos[path]

    def info(self, path: str) -> ImageInfo:
        """The header of any image a task reads: a samplesheet image, or what an earlier task will write."""
        known = self.produced.get(path) or self.source(path)
        assert known is not None, f"no header for {path}: a task reads it before any task writes it"
        return known


@dataclass
class RunContext:
    """What one task is given to run: where its files are, the memory tracker, and the run's choices."""

    where: Locations
    inputs: dict[str, Path]
    tracker: MemoryTracker
    preset: str | None = None
    keep_work: bool = False
    plan: Plan | None = None  # the report alone needs it (it lists every task)


class Kind(Protocol):
    name: str
    process: str  # the Nextflow process that runs tasks of this kind
    params: type[Params]

    def estimate(self, task: Task, ctx: EstimateContext) -> tuple[int, int]:
        """Peak memory and disk in bytes (before the floor every task pays for decoding a tile)."""
        ...

    def run(self, task: Task, ctx: RunContext) -> None: ...

"""Pre-flight: refuse, before any work starts, a run that cannot fit in memory or on disk.

Like exo2micro's check (its "Memory and Performance" documentation) but per task and cgroup-aware: the peak of the
``workers`` largest tasks running at once is compared with the memory this process may really use, and the disk all
tasks write with the free space where outputs go. At most 80 %: silent; 80-100 %: a warning; above: ``MemoryError``
/ ``OSError`` with a remediation list that shows the user's current values. ``force`` turns refusal into a warning.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from slimreg.atomic import write_json_atomic
from slimreg.errors import InputError, InsufficientDiskError, InsufficientMemoryError, SlimregError
from slimreg.estimate import MAX_PLAUSIBLE_TASK_BYTES
from slimreg.io.probe import probe
from slimreg.plan import describe
from slimreg.plan_model import Plan
from slimreg.register.settings import PRESET_ORDER, PRESETS
from slimreg.resources import Resources, available_resources

GB = 1024**3
WARN_FRACTION = 0.8


@dataclass
class Check:
    resource: str
    needed_bytes: int
    available_bytes: int
    level: str  # ok | warn | fail
    per_task: bool = False  # disk compared task by task (a scheduler gives each task its own)

    @property
    def fraction(self) -> float:
        return self.needed_bytes / max(1, self.available_bytes)

    def line(self) -> str:
        word = "estimated peak" if self.resource == "RAM" else "largest task" if self.per_task else "estimated total"
        mark = {"ok": "", "warn": "  HIGH", "fail": "  EXCEEDS AVAILABLE"}[self.level]
        return (f"{self.resource}: {word} {self.needed_bytes / GB:.1f} GB vs {self.available_bytes / GB:.1f} GB "
                f"available ({self.fraction:.0%}){mark}")


def _level(needed: int, available: int) -> str:
    fraction = needed / max(1, available)
    return "ok" if fraction <= WARN_FRACTION else "warn" if fraction <= 1.0 else "fail"


def concurrent_peak(plan: Plan, workers: int) -> int:
    """Peak of ``workers`` tasks at once: the sum of the largest estimates (a safe upper bound)."""
    peaks = sorted((t.peak_memory_bytes for t in plan.tasks), reverse=True)
    return sum(peaks[:workers]) if peaks else 0


def _has_stacks(plan: Plan) -> bool:
    """Whether any image of the plan has more than one frame: only then can ``--max-frames`` lower a peak.

    Stacks are registered as sessions, through ``project`` tasks (and ``split`` ones when already cut); a plan
    with neither holds single-frame images only. A session of several single-frame images has project tasks too,
    so their sources' headers decide; a header that cannot be read here (the pipeline plans from headers PROBE
    read elsewhere) counts as a stack, so the hint is never lost where it may help."""
    if any(task.kind in ("split", "motion") for task in plan.tasks):
        return True
    for task in (t for t in plan.tasks if t.kind == "project"):
        for source in task.sources or task.inputs:
            try:
                if probe(source).frames > 1:
                    return True
            except (SlimregError, OSError):
                return True
    return False


def _recordings_narrower_than_float32(plan: Plan) -> bool:
    """Whether a recording the plan corrects has pixels narrower than float32, so that ``--motion-dtype input`` would
    write it in less disk; a header that cannot be read here (the pipeline plans from headers PROBE read elsewhere)
    counts as narrower, so the hint is never lost where it may help."""
    for recording in dict.fromkeys(t.inputs[0] for t in plan.tasks if t.kind == "motion"):  # once per file, not piece
        try:
            if probe(recording).itemsize < 4:
                return True
        except (SlimregError, OSError):
            return True
    return False


def remediation(plan: Plan, workers: int, resource: str, outdir: Path) -> list[str]:
    """Concrete changes, with the user's current values inline."""
    registration, settings = plan.registration, plan.settings
    hints = []
    if resource == "RAM":
        if workers > 1:
            hints.append(f"run fewer tasks at once: --workers {workers} -> 1 (or --mode serial)")
        preset = registration["preset"]
        if preset in PRESET_ORDER and preset != PRESET_ORDER[-1]:
            lower = PRESET_ORDER[PRESET_ORDER.index(preset) + 1]
            # each value as it is now -> as the lower preset sets it (the current ones may be overridden)
            changes = ", ".join(f"{name} {registration[name]} -> {value}" for name, value in PRESETS[lower].items()
                                if name in registration)
            hints.append(f"use a lower preset: --preset {preset} -> {lower} ({changes})")
        if registration.get("micro"):
            hints.append("skip the high-resolution refinement: --no-micro")
        hints.append(f"write smaller tiles: --tile-size {registration['tile_size']} -> 512")
        if settings.get("max_frames") is None and _has_stacks(plan):
            hints.append("split long stacks into pieces: --max-frames 300 (currently no limit)")
        if registration["engine"] == "valis":
            hints.append("use the light engine: --engine valis -> feature (no torch, less memory)")
    else:
        hints.append(f"write outputs to a disk with more free space: --outdir {outdir} -> another disk")
        if registration["compression"] in ("none", "lzw"):
            hints.append(f"use stronger compression: --compression {registration['compression']} -> deflate")
        elif registration["compression"] == "deflate":
            hints.append("for 8-bit RGB brightfield only: lossy but far smaller tiles, --compression deflate -> jpeg")
        if settings.get("merge_chunks"):
            hints.append("do not write merged stacks as well as pieces: drop --merge-chunks")
        if settings.get("motion_dtype") == "float32" and _recordings_narrower_than_float32(plan):
            # float32 is the default for its crisper mean (docs/motion.md); a 16-bit recording's own type is half
            hints.append("write corrected recordings in their own type: --motion-dtype float32 -> input (half the "
                         "disk for 16-bit recordings; what subpixel moves overshoot below zero is then clipped)")
    hints.append("override at your own risk: --force")
    return hints


def run_preflight(plan: Plan, outdir: str | Path, *, workers: int = 1, force: bool = False,
                  stream: TextIO | None = None, resources: Resources | None = None,
                  write_to: str | Path | None = None, per_task_disk: bool = False) -> dict[str, Any]:
    """Check ``plan`` against the machine; print the summary; write ``preflight.json``; raise when it cannot fit.

    ``per_task_disk``: a scheduler runs the tasks (the pipeline), each in its own scratch folder with the disk it
    asks for: compare the largest task's need with ``resources.disk_bytes`` (the most a task may ask for; 0: no
    limit known, not checked), not the run's total with this process's own folder."""
    stream = stream or sys.stderr
    outdir = Path(outdir)
    for task in plan.tasks:
        if task.peak_memory_bytes > MAX_PLAUSIBLE_TASK_BYTES:
            raise InputError(f"task {task.id} would need {task.peak_memory_bytes / GB:.0f} GB of memory, more than "
                             "any machine offers; the image headers describe an implausibly large image.",
                             task.inputs[0] if task.inputs else None, "check the image's dimensions with "
                             "`slimreg info`.")
    resources = resources or available_resources(outdir)
    peak = concurrent_peak(plan, workers)
    checks = [Check("RAM", peak, resources.memory_bytes, _level(peak, resources.memory_bytes))]
    if not per_task_disk:
        disk = sum(t.disk_bytes for t in plan.tasks)
        checks.append(Check("Disk", disk, resources.disk_bytes, _level(disk, resources.disk_bytes)))
    elif resources.disk_bytes > 0:
        disk = max((t.disk_bytes for t in plan.tasks), default=0)
        checks.append(Check("Disk", disk, resources.disk_bytes, _level(disk, resources.disk_bytes), per_task=True))
    verdict = "fail" if any(c.level == "fail" for c in checks) else \
        "warn" if any(c.level == "warn" for c in checks) else "ok"
    if verdict == "fail" and force:
        verdict = "forced"
    report = {"tasks": [describe(t) for t in plan.tasks], "workers": workers,
              "available": resources.to_json(), "checks": [{**asdict(c), "fraction": c.fraction} for c in checks],
              "verdict": verdict, "largest_task": max(plan.tasks, key=lambda t: t.peak_memory_bytes).id
              if plan.tasks else None}
    print("=== Pre-flight resource check ===", file=stream)
    if per_task_disk and resources.disk_bytes <= 0:
        largest = max((t.disk_bytes for t in plan.tasks), default=0)
        print(f"Disk: largest task {largest / GB:.1f} GB; not checked here: each task asks the scheduler for its "
              "own (the disk directive)", file=stream)
    for check in checks:
        print(check.line() + ("" if check.resource == "Disk" else f"  [{resources.memory_source}, "
                              f"{workers} worker(s)]"), file=stream)
    failed = [c for c in checks if c.level == "fail"]
    for check in failed:
        hints = remediation(plan, workers, check.resource, outdir)
        print(f"{check.resource} would not fit. Options:", file=stream)
        for hint in hints:
            print(f"  - {hint}", file=stream)
    if failed and force:
        print("--force given: running anyway; a task may be killed for lack of memory or disk.", file=stream)
    print("=================================", file=stream, flush=True)
    if write_to is not None:
        write_json_atomic(Path(write_to) / "preflight.json", report)
    if failed and not force:
        check = failed[0]
        hints = "; ".join(remediation(plan, workers, check.resource, outdir))
        message = f"{check.line()}. Options: {hints}."
        if check.resource == "RAM":
            raise InsufficientMemoryError(message, fix=None)
        raise InsufficientDiskError(message, path=resources.disk_path)
    return report

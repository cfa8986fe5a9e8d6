"""Execute one task of a plan. The local runner and the Nextflow processes both come through here.

Relative paths in a task are resolved under ``root`` (the run's output folder, or a Nextflow work
directory). When a relative input is not found at its path under ``root``, its file name is looked up directly
under ``root``: Nextflow stages other tasks' outputs flat.

Files from the samplesheet (the task's ``sources``) are read where they are (`slimreg run`), or, with
``staged=True`` (Nextflow), only where Nextflow staged them: source ``i`` (from 1) at ``sources/<i>/<file name>``
(:func:`staged_source`).
A staged task never opens a samplesheet path itself, so the same task runs on cloud storage, where the sheet
names ``s3://...`` locations, and in a work folder of another machine.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path, PurePosixPath
from typing import Any

from slimreg import layout
from slimreg.chunking import Piece, merge_pieces, project_session, split_stack
from slimreg.errors import InputError, RegistrationError
from slimreg.io.integrity import damaged_input_error, is_decode_error
from slimreg.io.vips import pyvips
from slimreg.memory import MemoryTracker
from slimreg.plan import Plan, Task
from slimreg.register.batch import MovingUnit, register_units
from slimreg.register.settings import RegistrationSettings

TEST_OOM_HOOK = "SLIMREG_TEST_OOM_TASK"  # "<task id>:<preset>": simulate the kernel's OOM killer (tests only)
TEST_SLEEP_HOOK = "SLIMREG_TEST_SLEEP_TASK"  # "<task id>:<seconds>": make a task hang (tests of timeouts)


STAGED_SOURCES = "sources"  # where Nextflow stages a task's samplesheet files (stageAs: 'sources/*/*')


def resolve(path: str, root: Path, must_exist: bool = False) -> Path:
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate
    full = root / candidate
    if must_exist and not full.exists() and (root / candidate.name).exists():
        return root / candidate.name
    return full


def staged_source(task: Task, source: str, root: Path) -> Path:
    """Where Nextflow staged one of the task's samplesheet files: ``sources/<its position>/<its name>``.

    Nextflow numbers the folders of a list of files; a list of one may be staged without the number, so a file
    is also found by its name alone when no other staged source has that name (names of one sample's images are
    unique: the samplesheet check sees to it).
    """
    name = PurePosixPath(source).name
    numbered = root / STAGED_SOURCES / str(task.sources.index(source) + 1) / name
    if numbered.exists():
        return numbered
    same_name = sorted((root / STAGED_SOURCES).rglob(name)) if (root / STAGED_SOURCES).is_dir() else []
    return same_name[0] if len(same_name) == 1 else numbered


class Locations:
    """Where a task finds each path it names: its sources as staged (or in place), other paths under ``root``."""

    def __init__(self, task: Task, root: Path, staged: bool = False):
        self.task, self.root, self.staged = task, root, staged

    def input(self, path: str) -> Path:
        if self.staged and path in self.task.sources:
            return staged_source(self.task, path, self.root)
        return resolve(path, self.root, must_exist=True)

    def output(self, path: str) -> Path:
        return resolve(path, self.root)


def registration_settings(task: Task, preset: str | None = None) -> RegistrationSettings:
    """A register task's settings (it carries all of them), optionally moved to another preset (out-of-memory
    retries)."""
    values: dict[str, Any] = dict(task.settings)
    settings = RegistrationSettings(**values)
    if preset and preset != settings.preset:
        settings = RegistrationSettings.from_preset(preset, **{k: v for k, v in values.items()
                                                               if k not in ("preset", "processing_dim",
                                                                            "non_rigid_dim", "micro_dim")})
    return settings


def _maybe_simulate_oom(task: Task, settings: RegistrationSettings | None) -> None:
    """Test hook: allocate until far above the task's baseline, then die by SIGKILL as the OOM killer would."""
    hook = os.environ.get(TEST_OOM_HOOK)
    if not hook:
        return
    task_id, _, preset = hook.rpartition(":")
    if task_id != task.id or (settings is not None and settings.preset != preset):
        return
    hoard = []
    for _ in range(8):
        hoard.append(bytearray(32 * 1024**2))
    os.kill(os.getpid(), signal.SIGKILL)


def execute(plan: Plan | None, task: Task, root: Path, *, tracker: MemoryTracker | None = None,
            preset: str | None = None, keep_work: bool = False, staged: bool = False) -> None:
    """Run ``task``; raise a :class:`~slimreg.errors.SlimregError` if it fails.

    ``plan`` is needed by the report alone (it lists every task); ``staged``: read samplesheet files only where
    Nextflow staged them (see the module's docstring).
    """
    tracker = tracker or MemoryTracker()
    sleep_hook = os.environ.get(TEST_SLEEP_HOOK, "")
    if sleep_hook.rpartition(":")[0] == task.id:
        time.sleep(float(sleep_hook.rpartition(":")[2]))
    where = Locations(task, root, staged)
    inputs = {p: where.input(p) for p in task.inputs}
    for original, path in inputs.items():
        if path.exists() or task.kind == "report":  # the report lists what is missing as failures
            continue
        if staged and original in task.sources:
            raise InputError(f"samplesheet file {original} of task {task.id} was not staged.", path,
                             "stage each of the task's sources (plan.csv, column sources) in order under "
                             "sources/<n>/, as the pipeline's modules do.")
        raise InputError(f"input of task {task.id} is missing: {original}.", path,
                         "run the tasks it depends on first (slimreg run does this in order).")
    try:
        _run_kind(plan, task, where, inputs, tracker, preset, keep_work)
    except pyvips.Error as error:
        # a tile that cannot be decompressed fails the read (slimreg.io.read opens with fail_on="warning");
        # name the damaged file and tile rather than print libvips' bare message
        damaged = damaged_input_error(error, list(inputs.values())) if is_decode_error(error) else None
        if damaged is not None:
            raise damaged from error
        raise


def _run_kind(plan: Plan | None, task: Task, where: Locations, inputs: dict[str, Path], tracker: MemoryTracker,
              preset: str | None, keep_work: bool) -> None:
    if task.kind == "split":
        pieces = [Piece(**{**p, "path": str(where.output(p["path"]))}) for p in task.params["pieces"]]
        with tracker.step(task.id):
            split_stack(inputs[task.inputs[0]], pieces, tile_size=task.params["tile_size"])
    elif task.kind == "project":
        with tracker.step(task.id):
            project_session([inputs[p] for p in task.inputs], where.output(task.outputs[0]),
                            channel=task.params["channel"], factor=task.params["factor"])
    elif task.kind == "register":
        _register(task, where, tracker, preset, keep_work)
    elif task.kind == "merge":
        with tracker.step(task.id):
            merge_pieces([inputs[p] for p in task.inputs], where.output(task.outputs[0]))
    elif task.kind == "qc":
        _qc(task, where, tracker)
    elif task.kind == "report":
        from slimreg.report import build_report

        with tracker.step(task.id):
            build_report(where.root, layout.report_page(where.root).parent, plan=plan)
    else:
        raise InputError(f"task {task.id} has an unknown kind {task.kind!r}.")


def _register(task: Task, where: Locations, tracker: MemoryTracker, preset: str | None, keep_work: bool) -> None:
    settings = registration_settings(task, preset)
    _maybe_simulate_oom(task, settings)
    params = task.params
    units = [MovingUnit(name=u["name"], registration_image=where.input(u["registration_image"]),
                        apply_to=[where.input(p) for p in u["apply_to"]],
                        registered=[where.output(p) for p in u["registered"]], transform=where.output(u["transform"]),
                        scale=int(u["scale"]),
                        registered_projection=where.output(u["registered_projection"])
                        if u["registered_projection"] else None) for u in params["units"]]
    log = where.output(task.outputs[-1])
    batch = register_units(where.input(params["reference"]), units, settings, log_dir=log.parent,
                           reference_scale=int(params["reference_scale"]),
                           reference_shape=tuple(params["reference_shape"]), tracker=tracker, keep_work=keep_work,
                           log_name=log.name.removesuffix(".json"))
    if batch.failed:
        raise RegistrationError("; ".join(f"{r.stem}: {r.error}" for r in batch.failed))


def _qc(task: Task, where: Locations, tracker: MemoryTracker) -> None:
    from slimreg.qc import run_qc

    params = task.params
    png = where.output(task.outputs[0])

    def optional(path: str | None) -> Path | None:
        return where.input(path) if path else None

    with tracker.step(task.id):
        run_qc(where.input(params["reference"]), where.input(params["registered"]), png.parent,
               original_path=where.input(params["original"]), transform_path=where.input(params["transform"]),
               landmarks_reference=optional(params.get("landmarks_reference")),
               landmarks_moving=optional(params.get("landmarks_moving")),
               max_dim=params["max_dim"], stem=png.name.removesuffix(layout.QC_PNG_SUFFIX),
               reference_scale=params.get("reference_scale", 1), moving_scale=params.get("moving_scale", 1),
               sample=task.sample)


def lower_preset_for_retry(task: Task, current: str | None) -> str | None:
    """The next lower preset for a register task after an out-of-memory kill (None: no lower one)."""
    if task.kind != "register":
        return current
    settings = registration_settings(task, current)
    lower = settings.lower_preset()
    return lower.preset if lower else None


__all__ = ["Locations", "execute", "lower_preset_for_retry", "registration_settings", "resolve", "staged_source"]

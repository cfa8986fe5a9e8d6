"""Execute one task of a plan. The local runner and the Nextflow processes both come through here.

Relative paths in a task are resolved under ``root`` (the run's output folder, or a Nextflow work
directory); absolute paths (samplesheet inputs) are used as they are. When a relative input is not found at
its path under ``root``, its file name is looked up directly under ``root``: Nextflow stages inputs flat.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
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


def resolve(path: str, root: Path, must_exist: bool = False) -> Path:
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate
    full = root / candidate
    if must_exist and not full.exists() and (root / candidate.name).exists():
        return root / candidate.name
    return full


def registration_settings(plan: Plan, task: Task, preset: str | None = None) -> RegistrationSettings:
    """The task's registration settings, optionally moved to another preset (out-of-memory retries)."""
    values: dict[str, Any] = {**plan.registration, **task.settings}
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


def execute(plan: Plan, task: Task, root: Path, *, tracker: MemoryTracker | None = None,
            preset: str | None = None, keep_work: bool = False) -> None:
    """Run ``task``; raise a :class:`~slimreg.errors.SlimregError` if it fails."""
    tracker = tracker or MemoryTracker()
    sleep_hook = os.environ.get(TEST_SLEEP_HOOK, "")
    if sleep_hook.rpartition(":")[0] == task.id:
        time.sleep(float(sleep_hook.rpartition(":")[2]))
    inputs = {p: resolve(p, root, must_exist=True) for p in task.inputs}
    for original, path in inputs.items():
        if not path.exists() and task.kind != "report":  # the report lists what is missing as failures
            raise InputError(f"input of task {task.id} is missing: {original}.", path,
                             "run the tasks it depends on first (slimreg run does this in order).")
    try:
        _run_kind(plan, task, root, inputs, tracker, preset, keep_work)
    except pyvips.Error as error:
        # a tile that cannot be decompressed fails the read (slimreg.io.read opens with fail_on="warning");
        # name the damaged file and tile rather than print libvips' bare message
        damaged = damaged_input_error(error, list(inputs.values())) if is_decode_error(error) else None
        if damaged is not None:
            raise damaged from error
        raise


def _run_kind(plan: Plan, task: Task, root: Path, inputs: dict[str, Path], tracker: MemoryTracker,
              preset: str | None, keep_work: bool) -> None:
    if task.kind == "split":
        pieces = [Piece(**{**p, "path": str(resolve(p["path"], root))}) for p in task.params["pieces"]]
        with tracker.step(task.id):
            split_stack(inputs[task.inputs[0]], pieces, tile_size=task.params["tile_size"])
    elif task.kind == "project":
        with tracker.step(task.id):
            project_session([inputs[p] for p in task.inputs], resolve(task.outputs[0], root),
                            channel=task.params["channel"], factor=task.params["factor"])
    elif task.kind == "register":
        _register(plan, task, root, tracker, preset, keep_work)
    elif task.kind == "merge":
        with tracker.step(task.id):
            merge_pieces([inputs[p] for p in task.inputs], resolve(task.outputs[0], root))
    elif task.kind == "qc":
        _qc(task, root, tracker)
    elif task.kind == "report":
        from slimreg.report import build_report

        with tracker.step(task.id):
            build_report(root, layout.report_page(root).parent, plan=plan)
    else:
        raise InputError(f"task {task.id} has an unknown kind {task.kind!r}.")


def _register(plan: Plan, task: Task, root: Path, tracker: MemoryTracker, preset: str | None,
              keep_work: bool) -> None:
    settings = registration_settings(plan, task, preset)
    _maybe_simulate_oom(task, settings)
    params = task.params
    units = [MovingUnit(name=u["name"], registration_image=resolve(u["registration_image"], root, True),
                        apply_to=[resolve(p, root, True) for p in u["apply_to"]],
                        registered=[resolve(p, root) for p in u["registered"]], transform=resolve(u["transform"], root),
                        scale=int(u["scale"]),
                        registered_projection=resolve(u["registered_projection"], root)
                        if u["registered_projection"] else None) for u in params["units"]]
    log = resolve(task.outputs[-1], root)
    batch = register_units(resolve(params["reference"], root, True), units, settings, log_dir=log.parent,
                           reference_scale=int(params["reference_scale"]),
                           reference_shape=tuple(params["reference_shape"]), tracker=tracker, keep_work=keep_work,
                           log_name=log.name.removesuffix(".json"))
    if batch.failed:
        raise RegistrationError("; ".join(f"{r.stem}: {r.error}" for r in batch.failed))


def _qc(task: Task, root: Path, tracker: MemoryTracker) -> None:
    from slimreg.qc import run_qc

    params = task.params
    png = resolve(task.outputs[0], root)
    with tracker.step(task.id):
        run_qc(resolve(params["reference"], root, True), resolve(params["registered"], root, True), png.parent,
               original_path=resolve(params["original"], root, True),
               transform_path=resolve(params["transform"], root, True),
               landmarks_reference=params.get("landmarks_reference"), landmarks_moving=params.get("landmarks_moving"),
               max_dim=params["max_dim"], stem=png.name.removesuffix(layout.QC_PNG_SUFFIX),
               reference_scale=params.get("reference_scale", 1), moving_scale=params.get("moving_scale", 1),
               sample=task.sample)


def lower_preset_for_retry(plan: Plan, task: Task, current: str | None) -> str | None:
    """The next lower preset for a register task after an out-of-memory kill (None: no lower one)."""
    if task.kind != "register":
        return current
    settings = registration_settings(plan, task, current)
    lower = settings.lower_preset()
    return lower.preset if lower else None


__all__ = ["execute", "lower_preset_for_retry", "registration_settings", "resolve"]

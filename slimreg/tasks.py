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

import json
import os
import signal
import time
from pathlib import Path, PurePosixPath

import slimreg.layout as layout
from slimreg.errors import DependencyNotProducedError, InputError
from slimreg.guard import protecting, refuse_outputs_over_inputs
from slimreg.io.integrity import damaged_input_error, is_decode_error
from slimreg.io.vips import pyvips
from slimreg.kinds import RunContext, kind_named
from slimreg.kinds.register import task_registration_settings
from slimreg.locations import Locations, resolve, staged_source
from slimreg.memory import MemoryTracker
from slimreg.plan_model import Plan, Task

TEST_OOM_HOOK = "SLIMREG_TEST_OOM_TASK"  # "<task id>:<preset>": simulate the kernel's OOM killer (tests only)
TEST_SLEEP_HOOK = "SLIMREG_TEST_SLEEP_TASK"  # "<task id>:<seconds>": make a task hang (tests of timeouts)


def _not_registered(task: Task, missing: list[str], root: Path) -> bool:
    """Whether the task's missing inputs are missing because its image could not be registered: a register log
    staged beside the task (``*.register.json``) records a failed image one of whose outputs (its transform, its
    registered copies: named by session or piece, not by the image it registered) is among them."""
    names = {PurePosixPath(path).name for path in missing}
    for log in root.glob(f"*{layout.REGISTER_LOG_SUFFIX}"):
        try:
            images = json.loads(log.read_text()).get("images", [])
        except (OSError, ValueError):
            continue
        failed = {str(name) for image in images if image.get("status") != "ok" for name in image.get("outputs", [])}
        if names & failed:
            return True
    return False


def _maybe_simulate_oom(task: Task, preset: str | None) -> None:
    """Test hook: allocate until far above the task's baseline, then die by SIGKILL as the OOM killer would.

    ``preset``: the preset the task runs at (None for kinds without one, which match any)."""
    hook = os.environ.get(TEST_OOM_HOOK)
    if not hook:
        return
    task_id, _, wanted = hook.rpartition(":")
    if task_id != task.id or (preset is not None and preset != wanted):
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
        missing = [p for p, found in inputs.items() if not found.exists()]
        if staged and _not_registered(task, missing, root):
            raise DependencyNotProducedError(f"task {task.id} has nothing to do: {original} was not written, "
                                             "its image could not be registered (its register log says why).")
        raise InputError(f"input of task {task.id} is missing: {original}.", path,
                         "run the tasks it depends on first (slimreg run does this in order).")
    kind = kind_named(task.kind, task.id)
    _maybe_simulate_oom(task, preset or task.settings.get("preset"))
    try:
        refuse_outputs_over_inputs([where.output(p) for p in task.outputs], inputs.values(),
                                   fix=f"give task {task.id} a --root (work folder) that holds none of its inputs "
                                       "at its output paths.")
        with protecting(inputs.values()):  # and nothing the task writes besides its outputs either
            kind.run(task, RunContext(where, inputs, tracker, preset=preset, keep_work=keep_work, plan=plan))
    except pyvips.Error as error:
        # a tile that cannot be decompressed fails the read (slimreg.io.read opens with fail_on="warning");
        # name the damaged file and tile rather than print libvips' bare message
        damaged = damaged_input_error(error, list(inputs.values())) if is_decode_error(error) else None
        if damaged is not None:
            raise damaged from error
        raise


def preset_for_attempt(task: Task, current: str | None, attempt: int) -> str | None:
    """The preset of a register task's ``attempt`` (1: as planned), one lower per attempt and never below the
    lowest: the one ladder both `slimreg run` and the pipeline retry down."""
    preset = current
    for _ in range(attempt - 1):
        preset = lower_preset_for_retry(task, preset) or preset
    return preset


def lower_preset_for_retry(task: Task, current: str | None) -> str | None:
    """The next lower preset for a register task after an out-of-memory kill (None: no lower one)."""
    if task.kind != "register":
        return current
    settings = task_registration_settings(task, current)
    lower = settings.lower_preset()
    return lower.preset if lower else None


__all__ = ["Locations", "execute", "lower_preset_for_retry", "preset_for_attempt", "resolve",
           "staged_source"]

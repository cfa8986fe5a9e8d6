"""Process supervision for `slimreg run`: start one attempt of a task in its own process, bound to the run,
measure its process tree, and stop it past its budget (so the kernel's out-of-memory killer never has to)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import psutil

import slimreg.layout as layout
from slimreg.estimate import BUDGET_MARGIN
from slimreg.guard import open_append
from slimreg.memory import tree_rss
from slimreg.plan_model import Task
from slimreg.register.bounded import child_of_this_process
from slimreg.run_summary import TaskOutcome

KILLED_CODES = (-9, 137)

Running = tuple[subprocess.Popen[bytes], float, TaskOutcome, str | None]  # process, start, outcome, preset


def task_budget(task: Task, max_memory: int | None) -> int:
    """What a task's process tree may use before slimreg stops it: its estimate times the margin, or less."""
    budget = int(task.peak_memory_bytes * BUDGET_MARGIN) if task.peak_memory_bytes else 0
    if max_memory is not None:
        budget = min(budget, max_memory) if budget else max_memory
    return budget


def budget_words(task: Task, max_memory: int | None) -> str:
    """Where a task's budget came from, for the message that says why it was stopped."""
    estimate = f"estimate {task.peak_memory_bytes / 1024**3:.2f} GB x {BUDGET_MARGIN:g}"
    if max_memory is not None and max_memory < task.peak_memory_bytes * BUDGET_MARGIN:
        return f"--max-memory {max_memory / 1024**3:.2f} GB, below the {estimate}"
    return estimate


def over_budget(process: subprocess.Popen[bytes], budget: int) -> int | None:
    """The resident bytes of a task's process tree if they exceed ``budget``, else None."""
    if budget <= 0:
        return None
    try:
        used = tree_rss(psutil.Process(process.pid))
    except psutil.NoSuchProcess:
        return None
    return used if used > budget else None


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """Kill a task and every process it started (a VALIS child must not outlive its task)."""
    try:
        family = [*psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.wait()


def task_log_path(root: Path, task_id: str) -> Path:
    """Where a task's own stderr goes (every attempt appended): a file, never a pipe, so a chatty task cannot
    fill a pipe's buffer and hang until its timeout."""
    return layout.task_log(root, task_id)


def task_command(plan_path: Path, task: Task, root: Path, preset: str | None) -> list[str]:
    """The command line of one attempt: ``slimreg run-task`` on the written plan, at ``preset`` if given."""
    command = [sys.executable, "-m", "slimreg.cli", "run-task", "--plan", str(plan_path), "--task", task.id,
               "--root", str(root), "--memory-log", str(layout.task_memory_log(root, task.id))]
    if preset:
        command += ["--preset", preset]
    return command


def start_task(plan_path: Path, task: Task, root: Path, preset: str | None, outcome: TaskOutcome,
               lock_fd: int | None = None) -> Running:
    """Start one attempt of a task in its own process, bound to this run: it is killed when the runner dies
    (PR_SET_PDEATHSIG, slimreg.register.bounded) and holds the output folder's lock (``lock_fd``) until it has
    exited. Killing only the runner (``kill``, ``kill -9``) used to leave the task running as an orphan with the
    lock released: a ``--resume`` started at once deleted its live partial files, and the orphan replaced outputs
    afterwards."""
    outcome.attempts += 1
    outcome.presets.append(preset or "")
    with open_append(task_log_path(root, task.id), root, binary=True) as stderr:
        stderr.write(f"=== attempt {outcome.attempts} (preset {preset or 'as planned'})\n".encode())
        stderr.flush()
        process = subprocess.Popen(task_command(plan_path, task, root, preset), stdout=subprocess.DEVNULL,
                                   stderr=stderr, pass_fds=() if lock_fd is None else (lock_fd,),
                                   preexec_fn=child_of_this_process())
    return process, time.monotonic(), outcome, preset

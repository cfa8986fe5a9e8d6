"""`slimreg run`: the whole job on one machine, executing the same plan as the Nextflow pipeline.

Modes (exo2micro's, shared/seeds/002, made plan-aware):
- ``subprocess`` (default): each task runs in a fresh process, one at a time; leaks cannot accumulate, each
  task's peak is its own, and its budget is enforced (below).
- ``parallel``: up to ``workers`` fresh processes at once (the pre-flight multiplies memory by ``workers``).
- ``serial``: tasks run in this process, one at a time, with a garbage collection between them (for debugging:
  no budget is enforced, and a task's measured peak includes what earlier tasks left loaded).

Budgets are held, not only predicted: every ``WATCH_INTERVAL_S`` the runner measures each task's process tree
(the task and any child it starts, such as the valis engine's); past its estimate times ``BUDGET_MARGIN`` (or
``--max-memory``, if lower) slimreg stops the tree itself, records why with the budget named, and retries one
preset lower, so the kernel's out-of-memory killer is never what ends a task. A task killed by a signal all the
same (return code -9 or 137) is recorded as "killed (likely out of memory)" and retried the same way, up to
``max_retries``; a task past ``timeout_per_task`` is killed and recorded. A task whose dependency failed still
runs if its own inputs exist; otherwise it is recorded as blocked. Each finished task leaves a completion record
(inputs, settings, outputs' size and checksum); ``resume`` skips tasks whose record still matches.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from slimreg import layout
from slimreg.atomic import remove_partials, write_json_atomic, write_text_atomic
from slimreg.errors import ParameterError, SlimregError, os_error_message
from slimreg.guard import open_append, protecting, refuse_links
from slimreg.io.write import require_writable_compression
from slimreg.lock import OutputFolderLock
from slimreg.memory import MemoryTracker, release_memory, tree_rss
from slimreg.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_COMPRESSION,
    DEFAULT_ENGINE,
    DEFAULT_FORMAT,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MODE,
    DEFAULT_MOTION_CORRECTION,
    DEFAULT_PRESET,
    DEFAULT_QC_MAX_DIM,
    DEFAULT_TILE_SIZE,
    MODES,
)
from slimreg.plan import Plan, PlanSettings, Task, build_plan
from slimreg.preflight import run_preflight
from slimreg.register.bounded import child_of_this_process
from slimreg.register.settings import RegistrationSettings
from slimreg.samplesheet import read_samplesheet
from slimreg.tasks import execute, lower_preset_for_retry, resolve
from slimreg.versions import versions_yaml

KILLED_CODES = (-9, 137)
# a task's process tree may use its estimate times this before slimreg stops it (the pre-flight predicts peaks
# within 1.1-1.5x; the valis engine's own child budget uses the same factor)
BUDGET_MARGIN = 2.0
WATCH_INTERVAL_S = 0.25  # how often each running task's process tree is measured
# how a serial-mode task's peak is labelled: it is the run's process RSS, which holds what earlier tasks loaded
SHARED_PROCESS = "shared process"
SUMMARY_MESSAGE_CHARS = 4000  # a batch's message names every failed image with its fix (about 300 chars each)


@dataclass
class TaskOutcome:
    id: str
    kind: str
    status: str  # done | skipped (resumed) | failed | killed | timeout | blocked
    attempts: int = 0
    presets: list[str] = field(default_factory=list)
    message: str = ""
    seconds: float = 0.0


@dataclass
class RunSummary:
    outdir: str
    report: str | None
    outcomes: list[TaskOutcome]

    @property
    def failures(self) -> list[TaskOutcome]:
        return [o for o in self.outcomes if o.status not in ("done", "skipped")]

    @property
    def ok(self) -> bool:
        return not self.failures


class RunLog:
    """Plain log lines into pipeline_info/run.log (and onto stderr when no progress bar is shown)."""

    def __init__(self, path: Path, echo: bool, root: Path | None = None):
        self.path, self.echo = path, echo
        # appended in place, so never through a link planted there (slimreg.guard); closed in close()
        self.handle = open_append(path, root)

    def __call__(self, text: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}"
        self.handle.write(line + "\n")
        self.handle.flush()
        if self.echo:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        self.handle.close()


def completion_record(plan: Plan, task: Task, root: Path, preset: str | None) -> dict[str, Any]:
    """What a finished task depended on: its inputs' size and mtime, and its settings."""
    inputs = {}
    for path in task.inputs:
        resolved = resolve(path, root, must_exist=True)
        stat = resolved.stat() if resolved.exists() else None
        inputs[path] = [stat.st_size, int(stat.st_mtime_ns)] if stat else None
    settings = {"task_settings": task.settings, "params": task.params, "registration": plan.registration,
                "preset": preset}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    return {"task": task.id, "inputs": inputs, "settings_sha256": digest, "outputs": task.outputs}


def _record_path(root: Path, task: Task) -> Path:
    return layout.task_record(root, task.id)


def is_complete(plan: Plan, task: Task, root: Path) -> bool:
    record_path = _record_path(root, task)
    if not record_path.is_file():
        return False
    try:
        record = json.loads(record_path.read_text())
    except (json.JSONDecodeError, OSError):
        return False
    if not all(resolve(p, root).exists() for p in task.outputs):
        return False
    if record.get("output_fingerprints") != {p: output_fingerprint(resolve(p, root)) for p in task.outputs}:
        return False  # an output was truncated, replaced or edited since the task finished
    expected = completion_record(plan, task, root, record.get("preset_used"))
    return record.get("inputs") == expected["inputs"] and record.get("settings_sha256") == expected["settings_sha256"]


FINGERPRINT_BYTES = 65536


def output_fingerprint(path: Path) -> list[Any]:
    """Size and a SHA-256 of the first and last 64 KiB: a TIFF's header, and where its tile index and last IFDs
    are written; a truncated or rewritten output no longer matches, and checking costs two small reads. A folder
    (an OME-Zarr): every file's name and size, and the root metadata's bytes."""
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file())
        digest = hashlib.sha256()
        for file in files:
            digest.update(f"{file.relative_to(path)}\0{file.stat().st_size}\n".encode())
        attributes = path / ".zattrs"
        if attributes.is_file():
            digest.update(attributes.read_bytes())
        return [sum(f.stat().st_size for f in files), digest.hexdigest()]
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(FINGERPRINT_BYTES))
        handle.seek(max(0, size - FINGERPRINT_BYTES))
        digest.update(handle.read(FINGERPRINT_BYTES))
    return [size, digest.hexdigest()]


def _mark_complete(plan: Plan, task: Task, root: Path, preset: str | None) -> None:
    record = completion_record(plan, task, root, preset)
    record["preset_used"] = preset
    record["output_fingerprints"] = {p: output_fingerprint(resolve(p, root)) for p in task.outputs
                                     if resolve(p, root).exists()}
    write_json_atomic(_record_path(root, task), record)


def _subprocess_command(plan_path: Path, task: Task, root: Path, preset: str | None) -> list[str]:
    command = [sys.executable, "-m", "slimreg.cli", "run-task", "--plan", str(plan_path), "--task", task.id,
               "--root", str(root), "--memory-log", str(layout.task_memory_log(root, task.id))]
    if preset:
        command += ["--preset", preset]
    return command


def run_job(input: str | Path, outdir: str | Path, *, engine: str = DEFAULT_ENGINE, preset: str = DEFAULT_PRESET,
             channel: str | None = None, non_rigid: bool = True, micro: bool = True,
             batch_size: int = DEFAULT_BATCH_SIZE, max_frames: int | None = None, max_chunk_gb: float | None = None,
             merge_chunks: bool = False, merge_channels: bool = False, merge_nuclear_once: bool = False,
             output_format: str = DEFAULT_FORMAT, motion_correction: str = DEFAULT_MOTION_CORRECTION,
             mode: str = DEFAULT_MODE, workers: int = 1,
             timeout_per_task: float | None = None, max_retries: int = DEFAULT_MAX_RETRIES, resume: bool = False,
             force: bool = False, memory_debug: bool = False, tile_size: int = DEFAULT_TILE_SIZE,
             compression: str = DEFAULT_COMPRESSION, qc_max_dim: int = DEFAULT_QC_MAX_DIM,
             progress: bool | None = None, registration_overrides: dict[str, Any] | None = None,
             max_memory: int | None = None) -> RunSummary:
    """Validate, pre-flight, plan and execute a whole job; return a summary (see the module docstring)."""
    if mode not in MODES:
        raise ParameterError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}.")
    if workers < 1:
        raise ParameterError(f"--workers must be at least 1, got {workers}.")
    if mode != "parallel" and workers > 1:
        raise ParameterError(f"--workers {workers} needs --mode parallel.",
                             fix="add --mode parallel or drop --workers.")
    if max_retries < 0:
        raise ParameterError(f"--max-retries must be 0 or more, got {max_retries}.")
    if timeout_per_task is not None and timeout_per_task <= 0:
        raise ParameterError(f"--timeout-per-task must be positive, got {timeout_per_task}.")
    if max_memory is not None and max_memory <= 0:
        raise ParameterError(f"--max-memory must be positive, got {max_memory}.")
    if timeout_per_task is not None and mode == "serial":
        raise ParameterError("--timeout-per-task needs a task in its own process.",
                             fix="add --mode subprocess (or parallel).")
    require_writable_compression(compression)  # before any work, not when the first image is written
    sheet = read_samplesheet(input)
    root = Path(outdir).resolve()
    registration = RegistrationSettings.from_preset(
        preset, engine=engine, channel=channel, non_rigid=non_rigid, micro=micro, tile_size=tile_size,
        compression=compression, **(registration_overrides or {}))
    plan_settings = PlanSettings(batch_size=batch_size, max_frames=max_frames, max_chunk_gb=max_chunk_gb,
                                 merge_chunks=merge_chunks, merge_channels=merge_channels,
                                 merge_nuclear_once=merge_nuclear_once, qc_max_dim=qc_max_dim, workers=workers,
                                 output_format=output_format, motion_correction=motion_correction)
    plan = build_plan(sheet, root, registration, plan_settings)
    inputs = refuse_outputs_over_inputs(plan, sheet, root)
    # nothing slimreg writes, plan files and logs included, may land on the samplesheet or a file it names
    with protecting({Path(input), *inputs}), OutputFolderLock(root) as lock:  # before anything is written there
        refuse_links([layout.info_dir(root) / "run.log", *(task_log_path(root, t.id) for t in plan.tasks)], root)
        info_dir = layout.info_dir(root)
        info_dir.mkdir(parents=True, exist_ok=True)
        run_preflight(plan, root, workers=workers if mode == "parallel" else 1, force=force, write_to=info_dir)
        plan_path, _ = plan.write(info_dir)
        write_text_atomic(info_dir / "versions.yml", versions_yaml("SLIMREG_RUN"))
        removed = remove_partials(root, protected=inputs)
        show_bar = sys.stderr.isatty() if progress is None else progress
        log = RunLog(info_dir / "run.log", echo=not show_bar, root=root)
        if removed:
            log(f"removed {len(removed)} partial file(s) left by an interrupted run")
        for note in plan.notes:
            log(note)
        try:
            outcomes = _execute_plan(plan, plan_path, root, mode, workers, timeout_per_task, max_retries, resume,
                                     memory_debug, log, show_bar, max_memory, lock_fd=lock.fd)
        finally:
            log.close()
    report = layout.report_page(root)
    # only this run's report: a report left by an earlier run must not stand in for one this run failed to write
    report_written = any(o.kind == "report" and o.status in ("done", "skipped") for o in outcomes)
    summary = RunSummary(outdir=str(root), report=str(report) if report_written and report.is_file() else None,
                         outcomes=outcomes)
    write_json_atomic(info_dir / "run_summary.json", {"outdir": summary.outdir, "report": summary.report,
                                                      "outcomes": [asdict(o) for o in outcomes]})
    return summary


def refuse_outputs_over_inputs(plan: Plan, sheet: Any, root: Path) -> set[Path]:
    """The run's input files; an error if any output would be written over one of them (outputs never touch
    inputs: a run must not overwrite an image, nor call it complete on --resume)."""
    inputs = {Path(r.image).resolve() for r in sheet.rows} | \
        {Path(r.landmarks).resolve() for r in sheet.rows if r.landmarks}
    for task in plan.tasks:
        for output in task.outputs:
            target = resolve(output, root).resolve()
            if target in inputs:
                raise ParameterError(f"the output {output} of task {task.id} would be written over an input of this "
                                     f"run ({target}).", fix="choose an --outdir that holds none of the inputs "
                                     "at slimreg's output paths (for example a new, empty folder).")
    return inputs


def task_budget(task: Task, max_memory: int | None) -> int:
    """What a task's process tree may use before slimreg stops it: its estimate times the margin, or less."""
    budget = int(task.peak_memory_bytes * BUDGET_MARGIN) if task.peak_memory_bytes else 0
    if max_memory is not None:
        budget = min(budget, max_memory) if budget else max_memory
    return budget


def over_budget(process: subprocess.Popen[bytes], budget: int) -> int | None:
    """The resident bytes of a task's process tree if they exceed ``budget``, else None."""
    if budget <= 0:
        return None
    try:
        used = tree_rss(psutil.Process(process.pid))
    except psutil.NoSuchProcess:
        return None
    return used if used > budget else None


def _kill_tree(process: subprocess.Popen[bytes]) -> None:
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


def _execute_plan(plan: Plan, plan_path: Path, root: Path, mode: str, workers: int, timeout: float | None,
                  max_retries: int, resume: bool, memory_debug: bool, log: RunLog, show_bar: bool,
                  max_memory: int | None = None, lock_fd: int | None = None) -> list[TaskOutcome]:
    outcomes: dict[str, TaskOutcome] = {}
    pending = list(plan.tasks)
    running: dict[str, tuple[subprocess.Popen[bytes], float, TaskOutcome, str | None]] = {}
    bar = StageBars(plan.tasks) if show_bar else None
    tracker = MemoryTracker(debug=memory_debug) if mode == "serial" else None
    last_watch = 0.0

    def finished(outcome: TaskOutcome) -> None:
        outcomes[outcome.id] = outcome
        # before the report task runs, so the report can show retries and failures
        write_json_atomic(layout.run_outcomes(root), {"outcomes": [asdict(o) for o in outcomes.values()]})
        log(f"{outcome.id}: {outcome.status}{' - ' + outcome.message if outcome.message else ''}")
        if bar is not None:
            bar.update(outcome)

    try:
        while pending or running:
            progressed = False
            for task in list(pending):
                if any(d not in outcomes for d in task.depends_on):
                    continue  # decide only once every dependency has finished, one way or the other
                blocked = [d for d in task.depends_on if outcomes[d].status not in ("done", "skipped")]
                if blocked and can_run_without(task, root):
                    blocked = []  # e.g. QC of an image whose batch-mate failed: its own inputs are all there
                if blocked:
                    pending.remove(task)
                    finished(TaskOutcome(task.id, task.kind, "blocked", message=f"depends on failed {blocked[0]}"))
                    progressed = True
                    continue
                if resume and is_complete(plan, task, root):
                    pending.remove(task)
                    finished(TaskOutcome(task.id, task.kind, "skipped", message="already complete (resume)"))
                    progressed = True
                    continue
                if mode == "serial":
                    pending.remove(task)
                    finished(_run_in_process(plan, task, root, tracker))
                    progressed = True
                elif len(running) < (workers if mode == "parallel" else 1):
                    pending.remove(task)
                    outcome = TaskOutcome(task.id, task.kind, "running")
                    running[task.id] = _start_task(plan_path, task, root, None, outcome, lock_fd)
                    progressed = True
            watch = time.monotonic() - last_watch >= WATCH_INTERVAL_S
            if watch:
                last_watch = time.monotonic()
            for task_id, (process, started, outcome, preset) in list(running.items()):
                code = process.poll()
                budget = task_budget(plan.task(task_id), max_memory)
                used = over_budget(process, budget) if code is None and watch else None
                if used is not None:
                    _kill_tree(process)
                    del running[task_id]
                    progressed = True
                    task = plan.task(task_id)
                    outcome.seconds += time.monotonic() - started
                    current = preset or plan.registration["preset"]
                    stopped = (f"stopped by slimreg: its processes used {used / 1024**3:.2f} GB, past its budget of "
                               f"{budget / 1024**3:.2f} GB ({_budget_words(task, max_memory)}) at preset {current}")
                    log(f"{task_id}: {stopped}")
                    lower = lower_preset_for_retry(task, current)
                    if outcome.attempts <= max_retries and lower is not None:
                        log(f"{task_id}: retrying with preset {lower}")
                        running[task_id] = _start_task(plan_path, task, root, lower, outcome, lock_fd)
                    else:
                        outcome.status, outcome.message = "killed", f"{stopped}; no retry left"
                        finished(outcome)
                    continue
                if code is None and timeout is not None and time.monotonic() - started > timeout:
                    _kill_tree(process)
                    del running[task_id]
                    outcome.status, outcome.message = "timeout", f"killed after --timeout-per-task {timeout:g} s"
                    outcome.seconds = time.monotonic() - started
                    finished(outcome)
                    progressed = True
                    continue
                if code is None:
                    continue
                del running[task_id]
                progressed = True
                task = plan.task(task_id)
                outcome.seconds += time.monotonic() - started
                if code == 0:
                    outcome.status = "done"
                    _mark_complete(plan, task, root, preset)
                    finished(outcome)
                elif code in KILLED_CODES:
                    lower = lower_preset_for_retry(task, preset or plan.registration["preset"])
                    log(f"{task_id}: killed (likely out of memory) at preset {preset or plan.registration['preset']}")
                    if outcome.attempts <= max_retries and lower is not None:
                        log(f"{task_id}: retrying with preset {lower}")
                        running[task_id] = _start_task(plan_path, task, root, lower, outcome, lock_fd)
                    else:
                        outcome.status, outcome.message = "killed", "killed (likely out of memory); no retry left"
                        finished(outcome)
                else:
                    outcome.status = "failed"
                    task_log = task_log_path(root, task_id)
                    own_lines = [line for line in _tail(task_log).splitlines() if not line.startswith("=== attempt ")]
                    outcome.message = _last_line("\n".join(own_lines), task_log) or f"exit status {code}"
                    finished(outcome)
            if not progressed:
                time.sleep(0.05)
    finally:
        for process, *_ in running.values():
            _kill_tree(process)
        if bar is not None:
            bar.close()
        if tracker is not None:
            tracker.report()
            tracker.close()
    return [outcomes[t.id] for t in plan.tasks if t.id in outcomes]


def _budget_words(task: Task, max_memory: int | None) -> str:
    estimate = f"estimate {task.peak_memory_bytes / 1024**3:.2f} GB x {BUDGET_MARGIN:g}"
    if max_memory is not None and max_memory < task.peak_memory_bytes * BUDGET_MARGIN:
        return f"--max-memory {max_memory / 1024**3:.2f} GB, below the {estimate}"
    return estimate


def can_run_without(task: Task, root: Path) -> bool:
    """Whether a task whose dependency failed can still run: the report always can (it lists the failures);
    any other task when every one of its own inputs exists (one failed image does not block its batch-mates)."""
    if task.kind == "report":
        return True
    return all(resolve(p, root, must_exist=True).exists() for p in task.inputs)


def task_log_path(root: Path, task_id: str) -> Path:
    """Where a task's own stderr goes (every attempt appended): a file, never a pipe, so a chatty task cannot
    fill a pipe's buffer and hang until its timeout."""
    return layout.task_log(root, task_id)


def _start_task(plan_path: Path, task: Task, root: Path, preset: str | None, outcome: TaskOutcome,
                lock_fd: int | None = None) -> tuple[subprocess.Popen[bytes], float, TaskOutcome, str | None]:
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
        process = subprocess.Popen(_subprocess_command(plan_path, task, root, preset), stdout=subprocess.DEVNULL,
                                   stderr=stderr, pass_fds=() if lock_fd is None else (lock_fd,),
                                   preexec_fn=child_of_this_process())
    return process, time.monotonic(), outcome, preset


def _run_in_process(plan: Plan, task: Task, root: Path, tracker: MemoryTracker | None) -> TaskOutcome:
    outcome = TaskOutcome(task.id, task.kind, "failed", attempts=1, presets=[""])
    start = time.monotonic()
    task_tracker = MemoryTracker()
    try:
        execute(plan, task, root, tracker=task_tracker)
        _mark_complete(plan, task, root, None)
        outcome.status = "done"
    except SlimregError as error:
        outcome.message = str(error)
    except MemoryError as error:
        outcome.status, outcome.message = "killed", f"out of memory in this process ({error})"
    except OSError as error:  # disk full, permission denied: this task's failure, not the run's
        outcome.message = os_error_message(error)
    except Exception as error:  # a defect in slimreg: recorded for this task, the other tasks go on
        trace = task_log_path(root, task.id)
        with open_append(trace, root) as handle:
            handle.write(traceback.format_exc())
        outcome.message = (f"internal error {type(error).__name__}: {error} (traceback in {trace}; please report "
                           "it with that file)")
    finally:
        task_tracker.write(layout.task_memory_log(root, task.id),
                           {"task": task.id, "measured_in": SHARED_PROCESS})
        if tracker is not None:
            tracker.steps.extend(task_tracker.steps)
        task_tracker.close()
        release_memory()
    outcome.seconds = time.monotonic() - start
    return outcome


class StageBars:
    """One tqdm bar per stage (split, project, register, merge, qc, report), shown on a terminal."""

    def __init__(self, tasks: list[Task]):
        from tqdm import tqdm

        kinds = list(dict.fromkeys(t.kind for t in tasks))
        self.bars = {kind: tqdm(total=sum(t.kind == kind for t in tasks), desc=f"{kind:>8}", unit="task",
                                position=index, file=sys.stderr, leave=True) for index, kind in enumerate(kinds)}

    def update(self, outcome: TaskOutcome) -> None:
        bar = self.bars.get(outcome.kind)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{outcome.id[-28:]} {outcome.status}")

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _tail(path: Path, size: int = 16384) -> str:
    """The end of a task's log (its last message is what the summary shows)."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - size))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def _last_line(text: str, log: Path, limit: int = SUMMARY_MESSAGE_CHARS) -> str:
    """A failed task's last message, for the summary; one that is too long (a traceback's last line, a batch of
    many failed images) is cut at a word and names ``log``, the task's log, which has all of it."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1]
    if len(line) <= limit:
        return line
    return f"{line[:limit].rsplit(' ', 1)[0]} ... (cut here; all of it is in {log})"


def print_summary(summary: RunSummary, stream: Any = None) -> None:
    stream = stream or sys.stdout
    counts: dict[str, int] = {}
    for outcome in summary.outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    print("=== slimreg run summary ===", file=stream)
    print(", ".join(f"{n} {status}" for status, n in sorted(counts.items())), file=stream)
    for outcome in summary.failures:
        retries = f" (attempts: {outcome.attempts}, presets: {', '.join(p or 'plan' for p in outcome.presets)})" \
            if outcome.attempts > 1 else ""
        print(f"FAILED {outcome.id}: {outcome.status}{retries} - {outcome.message}", file=stream)
    print(f"outputs: {summary.outdir}", file=stream)
    print(f"report: {summary.report or 'not written'}", file=stream)

"""`slimreg run`: the whole job on one machine, executing the same plan as the Nextflow pipeline.

Modes (exo2micro's, from its "Memory and Performance" documentation, made plan-aware):
- ``subprocess`` (default): each task runs in a fresh process, one at a time; leaks cannot accumulate, each
  task's peak is its own, and its budget is enforced (below).
- ``parallel``: up to ``workers`` fresh processes at once (the pre-flight multiplies memory by ``workers``).
- ``serial``: tasks run in this process, one at a time, with a garbage collection between them (for debugging:
  no budget is enforced, and a task's measured peak includes what earlier tasks left loaded).

Budgets are held, not only predicted: every ``WATCH_INTERVAL_S`` the runner measures each task's process tree (the
task and any child it starts, such as the valis engine's); past its estimate times ``BUDGET_MARGIN``
(slimreg.supervise; or ``--max-memory``, if lower) slimreg stops the tree itself, records why with the budget
named, and retries one preset lower, so the kernel's out-of-memory killer is never what ends a task. A task killed
by a signal all the same (return code -9 or 137) is recorded as "killed (likely out of memory)" and retried the
same way, up to ``max_retries``; a task past ``timeout_per_task`` is killed and recorded. A task whose dependency
failed still runs if its own inputs exist; otherwise it is recorded as blocked. Each finished task leaves a
completion record (inputs, settings, outputs' size and checksum); ``resume`` skips tasks whose record still
matches.
"""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import slimreg.layout as layout
from slimreg.atomic import remove_partials, write_json_atomic, write_text_atomic
from slimreg.completion import code_digest, is_complete, mark_complete
from slimreg.errors import ParameterError, SlimregError, os_error_message
from slimreg.guard import open_append, protecting, refuse_links
from slimreg.io.write import require_writable_compression
from slimreg.job_options import JobOptions
from slimreg.lock import OutputFolderLock
from slimreg.memory import MemoryTracker, release_memory
from slimreg.plan import Plan, Task, build_plan
from slimreg.preflight import run_preflight
from slimreg.run_summary import (
    RunLog,
    RunSummary,
    StageBars,
    TaskOutcome,
    image_outcomes,
    last_message,
    log_tail,
)
from slimreg.samplesheet import read_samplesheet
from slimreg.supervise import (
    KILLED_CODES,
    Running,
    budget_words,
    kill_tree,
    over_budget,
    start_task,
    task_budget,
    task_log_path,
)
from slimreg.tasks import execute, lower_preset_for_retry, resolve
from slimreg.versions import versions_yaml

WATCH_INTERVAL_S = 0.25  # how often each running task's process tree is measured
# how a serial-mode task's peak is labelled: it is the run's process RSS, which holds what earlier tasks loaded
SHARED_PROCESS = "shared process"


def run_job(input: str | Path, outdir: str | Path, options: JobOptions | None = None,
            **changes: Any) -> RunSummary:
    """Validate, pre-flight, plan and execute a whole job; return each task's outcome and each image's result.

    ``options`` holds every setting (:class:`slimreg.job_options.JobOptions`; its defaults when None);
    ``changes`` are fields of it given as keywords: ``run_job(sheet, out, engine="feature", preset="low")``."""
    options = (options or JobOptions()).changed(**changes)
    require_writable_compression(options.compression)  # before any work, not when the first image is written
    sheet = read_samplesheet(input)
    root = Path(outdir).resolve()
    plan = build_plan(sheet, root, options.registration_settings(), options.plan_settings())
    code_digest()  # of the code this run starts with, before any task runs (completion records)
    inputs = job_inputs(plan, sheet, root)
    # nothing slimreg writes, plan files and logs included, may land on the samplesheet or a file it names
    with protecting({Path(input), *inputs}), OutputFolderLock(root) as lock:  # before anything is written there
        refuse_links([layout.info_dir(root) / "run.log", *(task_log_path(root, t.id) for t in plan.tasks)], root)
        info_dir = layout.info_dir(root)
        info_dir.mkdir(parents=True, exist_ok=True)
        run_preflight(plan, root, workers=options.workers if options.mode == "parallel" else 1, force=options.force,
                      write_to=info_dir)
        plan_path, _ = plan.write(info_dir)
        write_text_atomic(info_dir / "versions.yml", versions_yaml("SLIMREG_RUN"))
        removed = remove_partials(root, protected=inputs)
        show_bar = sys.stderr.isatty() if options.progress is None else options.progress
        log = RunLog(info_dir / "run.log", echo=not show_bar, root=root)
        if removed:
            log(f"removed {len(removed)} partial file(s) left by an interrupted run")
        for note in plan.notes:
            log(note)
        try:
            outcomes = _execute_plan(plan, plan_path, root, options.mode, options.workers, options.timeout_per_task,
                                     options.max_retries, options.resume, options.memory_debug, log, show_bar,
                                     options.max_memory, lock_fd=lock.fd)
        finally:
            log.close()
    report = layout.report_page(root)
    # only this run's report: a report left by an earlier run must not stand in for one this run failed to write
    report_written = any(o.kind == "report" and o.status in ("done", "skipped") for o in outcomes)
    summary = RunSummary(outdir=str(root), report=str(report) if report_written and report.is_file() else None,
                         outcomes=outcomes, images=image_outcomes(root, plan.tasks))
    write_json_atomic(info_dir / "run_summary.json", {"outdir": summary.outdir, "report": summary.report,
                                                      "outcomes": [asdict(o) for o in outcomes],
                                                      "images": [asdict(i) for i in summary.images]})
    return summary


def job_inputs(plan: Plan, sheet: Any, root: Path) -> set[Path]:
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


def _execute_plan(plan: Plan, plan_path: Path, root: Path, mode: str, workers: int, timeout: float | None,
                  max_retries: int, resume: bool, memory_debug: bool, log: RunLog, show_bar: bool,
                  max_memory: int | None = None, lock_fd: int | None = None) -> list[TaskOutcome]:
    outcomes: dict[str, TaskOutcome] = {}
    pending = list(plan.tasks)
    running: dict[str, Running] = {}
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
                    running[task.id] = start_task(plan_path, task, root, None, outcome, lock_fd)
                    progressed = True
            watch = time.monotonic() - last_watch >= WATCH_INTERVAL_S
            if watch:
                last_watch = time.monotonic()
            for task_id, (process, started, outcome, preset) in list(running.items()):
                code = process.poll()
                budget = task_budget(plan.task(task_id), max_memory)
                used = over_budget(process, budget) if code is None and watch else None
                if used is not None:
                    kill_tree(process)
                    del running[task_id]
                    progressed = True
                    task = plan.task(task_id)
                    outcome.seconds += time.monotonic() - started
                    current = preset or plan.registration["preset"]
                    stopped = (f"stopped by slimreg: its processes used {used / 1024**3:.2f} GB, past its budget of "
                               f"{budget / 1024**3:.2f} GB ({budget_words(task, max_memory)}) at preset {current}")
                    log(f"{task_id}: {stopped}")
                    lower = lower_preset_for_retry(task, current)
                    if outcome.attempts <= max_retries and lower is not None:
                        log(f"{task_id}: retrying with preset {lower}")
                        running[task_id] = start_task(plan_path, task, root, lower, outcome, lock_fd)
                    else:
                        outcome.status, outcome.message = "killed", f"{stopped}; no retry left"
                        finished(outcome)
                    continue
                if code is None and timeout is not None and time.monotonic() - started > timeout:
                    kill_tree(process)
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
                    mark_complete(plan, task, root, preset)
                    finished(outcome)
                elif code in KILLED_CODES:
                    lower = lower_preset_for_retry(task, preset or plan.registration["preset"])
                    log(f"{task_id}: killed (likely out of memory) at preset {preset or plan.registration['preset']}")
                    if outcome.attempts <= max_retries and lower is not None:
                        log(f"{task_id}: retrying with preset {lower}")
                        running[task_id] = start_task(plan_path, task, root, lower, outcome, lock_fd)
                    else:
                        outcome.status, outcome.message = "killed", "killed (likely out of memory); no retry left"
                        finished(outcome)
                else:
                    outcome.status = "failed"
                    task_log = task_log_path(root, task_id)
                    own_lines = [line for line in log_tail(task_log).splitlines()
                                 if not line.startswith("=== attempt ")]
                    outcome.message = last_message("\n".join(own_lines), task_log) or f"exit status {code}"
                    finished(outcome)
            if not progressed:
                time.sleep(0.05)
    finally:
        for process, *_ in running.values():
            kill_tree(process)
        if bar is not None:
            bar.close()
        if tracker is not None:
            tracker.report()
            tracker.close()
    return [outcomes[t.id] for t in plan.tasks if t.id in outcomes]


def can_run_without(task: Task, root: Path) -> bool:
    """Whether a task whose dependency failed can still run: the report always can (it lists the failures);
    any other task when every one of its own inputs exists (one failed image does not block its batch-mates)."""
    if task.kind == "report":
        return True
    return all(resolve(p, root, must_exist=True).exists() for p in task.inputs)


def _run_in_process(plan: Plan, task: Task, root: Path, tracker: MemoryTracker | None) -> TaskOutcome:
    outcome = TaskOutcome(task.id, task.kind, "failed", attempts=1, presets=[""])
    start = time.monotonic()
    task_tracker = MemoryTracker()
    try:
        execute(plan, task, root, tracker=task_tracker)
        mark_complete(plan, task, root, None)
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

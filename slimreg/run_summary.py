"""What a `slimreg run` tells its user: each task's outcome, each image's result (registered or not, its QC
verdict, its error), the run log, the progress bars on a terminal, and the summary printed at the end."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import slimreg.layout as layout
from slimreg.guard import open_append
from slimreg.plan_model import Task

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
class ImageOutcome:
    """One moving image (or session) of a sample: registered or not, and what QC made of it."""

    sample: str
    image: str  # the image's (or session's) name, as in the report
    registered: bool
    error: str | None = None
    qc: str | None = None  # pass | warn | fail, or None when QC did not run
    qc_reasons: list[str] = field(default_factory=list)
    registered_file: str | None = None


@dataclass
class RunSummary:
    outdir: str
    report: str | None
    outcomes: list[TaskOutcome]
    images: list[ImageOutcome] = field(default_factory=list)

    @property
    def failures(self) -> list[TaskOutcome]:
        return [o for o in self.outcomes if o.status not in ("done", "skipped")]

    @property
    def ok(self) -> bool:
        return not self.failures


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def image_outcomes(root: Path, tasks: list[Task]) -> list[ImageOutcome]:
    """Every moving image's result, from the REGISTER logs of ``tasks`` (this run's plan: an earlier run's logs
    in the same folder are not this run's images) and the QC files beside them."""
    images = []
    logs = [root / output for task in tasks for output in task.outputs
            if output.endswith(layout.REGISTER_LOG_SUFFIX)]
    for log_path in logs:
        sample = log_path.parent.name
        for entry in (_read_json(log_path) or {}).get("images", []):
            name = entry.get("stem") or Path(entry.get("image", "")).name
            qc = _read_json(root / layout.QC / sample / f"{name}{layout.QC_JSON_SUFFIX}") or {}
            images.append(ImageOutcome(sample=sample, image=name, registered=entry.get("status") == "ok",
                                       error=entry.get("error"), qc=qc.get("status"),
                                       qc_reasons=list(qc.get("reasons") or []),
                                       registered_file=entry.get("registered")))
    return images


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


def log_tail(path: Path, size: int = 16384) -> str:
    """The end of a task's log (its last message is what the summary shows)."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - size))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def last_message(text: str, log: Path, limit: int = SUMMARY_MESSAGE_CHARS) -> str:
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
    """The end of a run on the terminal: counts, each failure with its fix, each image's result, where to look."""
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
    if summary.images:
        passed = sum(image.registered and image.qc == "pass" for image in summary.images)
        print(f"images: {len(summary.images)}, registered with QC pass: {passed}", file=stream)
    for image in summary.images:
        if image.registered and image.qc == "pass":
            continue  # the report lists every image; the terminal names only what needs a look
        result = f"QC {image.qc}" if image.qc else "no QC"
        if image.qc_reasons:
            result += f" ({'; '.join(image.qc_reasons)})"
        state = "registered" if image.registered else f"not registered ({image.error or 'see its task log'})"
        print(f"  {image.sample}/{image.image}: {state}, {result}", file=stream)
    print(f"outputs: {summary.outdir}", file=stream)
    print(f"report: {summary.report or 'not written'}", file=stream)

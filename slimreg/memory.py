"""Measure what a step really used: resident memory of this process and its children, sampled in a thread.

Every CLI step records baseline, peak and final RSS per task, so the pre-flight estimate can be checked
against reality (`benchmarks/preflight_accuracy.py`) and users can tell a leak (RSS climbs across tasks and
stays) from a peak (RSS returns to baseline between tasks), as exo2micro's ``memory_debug`` does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import itertools
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import psutil

from slimreg.atomic import write_json_atomic

GB = 1024**3
LEAK_THRESHOLD_BYTES = 512 * 1024**2


def _load_libc_function(function: str) -> object | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return getattr(libc, function, None) if libc is not None else None


_MALLOC_TRIM = _load_libc_function("malloc_trim")
_M_ARENA_MAX = -8  # glibc's mallopt parameter number
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """Cap glibc's per-thread malloc arenas (as ``MALLOC_ARENA_MAX`` would), before worker threads start.

    The writer renders on one thread, encodes on others and libvips adds its own; glibc gives each thread an
    arena up to 8 per core, and freed tile buffers then sit in all of them. Measured on a 10000 px RGB warp:
    peak 290 MB with glibc's default, 215 MB with two arenas, at the same speed. A no-op where glibc is absent.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return  # the user's own setting wins
    mallopt = _load_libc_function("mallopt")
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, arenas)  # type: ignore[operator]


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS.

    libvips frees its buffers after each warp, but glibc keeps them in per-thread arenas, so without
    ``malloc_trim`` the RSS of a process that warps several files climbs by one warp's worth each time
    (measured: 81 MB -> 217 MB over five warps; with the trim it stays at 81-84 MB).
    """
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)  # type: ignore[operator]


# the libvips buffers a writer may free between two releases: a release costs a full garbage collection (36 ms in a
# task's process), which per 512 px frame of a recording was a third of its write; a slide's plane is past it alone
RELEASE_EVERY_BYTES = 64 * 1024**2


class PlaneReleases:
    """``release_memory`` after planes of ``plane_bytes`` once they add up to ``RELEASE_EVERY_BYTES``: after every
    plane of a large image, after every 128th 512 px 16-bit frame of a recording."""

    def __init__(self, plane_bytes: int, every: int = RELEASE_EVERY_BYTES):
        self.plane_bytes, self.every, self.pending = plane_bytes, every, 0

    def plane_written(self) -> None:
        self.pending += self.plane_bytes
        if self.pending >= self.every:
            release_memory()
            self.pending = 0


def process_high_water_bytes() -> int | None:
    """Peak RSS of this process's address space (Linux ``VmHWM``), or None where not available.

    Unlike ``ru_maxrss``, which Linux carries over from the parent across fork and exec, ``VmHWM`` starts
    afresh with each program, so it is the true peak of a task run in its own process.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# where the kernel lists each thread's children (Linux 3.5+; absent without CONFIG_PROC_CHILDREN), a process tree is
# walked from its root; psutil instead reads the parent of every process on the machine, which on a node running
# hundreds of processes makes each 20 ms sample cost milliseconds (1.07 ms against 0.11 ms walked, with 70 processes)
_CHILDREN_LISTED = Path(f"/proc/self/task/{os.getpid()}/children").is_file()
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def tree_rss(process: psutil.Process | int) -> int:
    """Resident bytes of ``process`` (or the process of that id) and all its descendants (processes that vanish
    are skipped; 0 once it is gone)."""
    pid = process.pid if isinstance(process, psutil.Process) else process
    if not _CHILDREN_LISTED:
        return _tree_rss_by_psutil(process)
    total, pending, seen = 0, [pid], set()
    while pending:
        member = pending.pop()
        if member in seen:  # the lists are read while children come and go: one may be listed twice
            continue
        seen.add(member)
        try:
            # statm's second field: resident pages, what psutil's memory_info().rss reads on Linux
            total += int(Path(f"/proc/{member}/statm").read_text().split()[1]) * _PAGE_BYTES
            threads = os.listdir(f"/proc/{member}/task")
        except (OSError, IndexError, ValueError):
            continue  # it ended between two reads
        for thread in threads:
            try:
                pending += [int(child) for child in Path(f"/proc/{member}/task/{thread}/children").read_text().split()]
            except OSError:
                continue
    return total


def _tree_rss_by_psutil(process: psutil.Process | int) -> int:
    """``tree_rss`` where the kernel does not list children: psutil finds them from every process's parent."""
    try:
        process = process if isinstance(process, psutil.Process) else psutil.Process(process)
        members = [process, *process.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return 0
    total = 0
    for proc in members:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return total


@dataclass
class StepMemory:
    """Memory of one step (a task, or a part of one such as one warp): RSS before, at peak and after (after a
    garbage collection)."""

    step: str
    baseline_bytes: int
    peak_bytes: int = 0
    final_bytes: int = 0
    wall_seconds: float = 0.0
    samples: int = 0

    @property
    def peak_above_baseline_bytes(self) -> int:
        return max(0, self.peak_bytes - self.baseline_bytes)


@dataclass
class MemoryTracker:
    """Sample RSS every ``interval`` seconds while steps run; summarise per step and over the run.

    Use ``with tracker.step("name"):`` around each unit of work. ``debug=True`` prints before/after lines.
    """

    interval: float = 0.02
    debug: bool = False
    stream: TextIO = field(default=sys.stderr, repr=False)
    steps: list[StepMemory] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._process = psutil.Process()
        self.start_bytes = tree_rss(self._process)
        self._current: StepMemory | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._sample_loop, name="slimreg-memory", daemon=True)
        self._thread.start()

    def _sample_loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> int:
        """Take one reading now (also called by the background thread)."""
        rss = tree_rss(self._process)
        with self._lock:
            if self._current is not None:
                self._current.peak_bytes = max(self._current.peak_bytes, rss)
                self._current.samples += 1
        return rss

    def _log(self, rss: int, text: str) -> None:
        if self.debug:
            print(f"[mem] {rss / GB:6.2f} GB {text}", file=self.stream, flush=True)

    def step(self, name: str) -> _StepContext:
        return _StepContext(self, name)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)

    def summary(self) -> dict[str, Any]:
        """Baseline, peak and final over the run, and whether RSS climbed across tasks (a leak)."""
        if not self.steps:
            return {"baseline_bytes": self.start_bytes, "peak_bytes": self.start_bytes, "final_bytes": self.start_bytes,
                    "pattern": "no tasks"}
        baseline = self.steps[0].baseline_bytes
        final = self.steps[-1].final_bytes
        peak = max(t.peak_bytes for t in self.steps)
        finals = [t.final_bytes for t in self.steps]
        climbing = len(finals) > 1 and all(b >= a for a, b in itertools.pairwise(finals))
        leak = final - baseline > LEAK_THRESHOLD_BYTES and climbing
        return {"baseline_bytes": baseline, "peak_bytes": peak, "final_bytes": final,
                "pattern": "leak: RSS climbs across tasks and stays" if leak
                else "peak: RSS returns towards baseline between tasks"}

    def report(self) -> None:
        summary = self.summary()
        if self.debug:
            print("[mem] === memory summary ===", file=self.stream)
            for key in ("baseline_bytes", "peak_bytes", "final_bytes"):
                print(f"[mem] {key.removesuffix('_bytes')}: {summary[key] / GB:.2f} GB", file=self.stream)
            print(f"[mem] {summary['pattern']}", file=self.stream, flush=True)

    def write(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write the per-task log and summary as JSON (next to the step's outputs)."""
        data = {"steps": [asdict(t) for t in self.steps], "summary": self.summary(), **(extra or {})}
        return write_json_atomic(path, data)

    def __enter__(self) -> MemoryTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _StepContext:
    def __init__(self, tracker: MemoryTracker, name: str):
        self.tracker, self.name = tracker, name

    def __enter__(self) -> StepMemory:
        rss = tree_rss(self.tracker._process)
        record = StepMemory(step=self.name, baseline_bytes=rss, peak_bytes=rss)
        with self.tracker._lock:
            self.tracker._current = record
        self._start = time.perf_counter()
        self.tracker._log(rss, f"before {self.name}")
        return record

    def __exit__(self, *exc: object) -> None:
        self.tracker.sample()
        with self.tracker._lock:
            record = self.tracker._current
            self.tracker._current = None
        assert record is not None
        release_memory()
        record.final_bytes = tree_rss(self.tracker._process)
        record.peak_bytes = max(record.peak_bytes, record.final_bytes)
        record.wall_seconds = time.perf_counter() - self._start
        self.tracker.steps.append(record)
        self.tracker._log(record.final_bytes, f"after gc {self.name} (peak {record.peak_bytes / GB:.2f} GB)")

"""Run one registration attempt in its own process under a memory budget, and stop it cleanly past the budget.

VALIS can grow without bound when a fit goes wrong (one run here grew past 23 GB inside its crop-mask step on
images under one megapixel; its tracker has a 664 GB allocation from one bad fit). In-process, slimreg cannot
stop such a step, and the kernel's OOM killer would take the whole task with no message. So the attempt runs in
a fresh (spawned) process whose resident memory, children included, is watched; past the budget it is killed and
the image fails with a message naming the budget. A fresh process also returns torch's memory when it ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from slimreg.errors import RegistrationError
from slimreg.memory import tree_rss

POLL_SECONDS = 0.2
PR_SET_PDEATHSIG = 1  # linux/prctl.h
GB = 1024**3


def _child(connection: Any, function: Callable[..., Any], args: tuple[Any, ...], parent: int) -> None:
    end_with_parent(parent)
    try:
        connection.send(("ok", function(*args)))
    except BaseException as error:
        connection.send(("error", error))
    finally:
        connection.close()


@functools.cache
def _libc() -> Any:
    """The C library, loaded once: ``end_with_parent`` also runs between fork and exec (``preexec_fn``), where
    loading a library could deadlock on a lock another thread held at the fork."""
    return ctypes.CDLL(None, use_errno=True)


def end_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when the process that started it dies (prctl PR_SET_PDEATHSIG).

    A scheduler that kills a task (SLURM's scancel, Nextflow on a failed sibling, a user's kill) signals the task's
    process; without this, an attempt it had started runs on as an orphan, holding gigabytes that nobody watches.
    `slimreg run` starts each task through it too (``preexec_fn``, see ``child_of_this_process``): a task outliving
    its runner would write outputs after the lock is gone. Elsewhere than Linux this does nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request was in place
        os._exit(1)


def child_of_this_process() -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child is killed when this process dies (see
    ``end_with_parent``). The C library is loaded here, before the fork, not in the forked child.

    The death signal follows the thread that forked, not the process: start children from a thread that lives as
    long as they should (the runner's main loop does)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            _libc()
    return functools.partial(end_with_parent, os.getpid())


def run_within_budget(function: Callable[..., Any], args: tuple[Any, ...], budget_bytes: int, what: str,
                      path: str) -> tuple[Any, int]:
    """``function(*args)`` in a spawned process; (result, peak bytes). Raises what it raised, or a
    RegistrationError naming the budget if it outgrew ``budget_bytes`` (it is killed first)."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, function, args, os.getpid()), daemon=True)
    process.start()
    sender.close()
    peak = 0
    try:
        while True:
            if receiver.poll(POLL_SECONDS):
                try:
                    status, payload = receiver.recv()
                    break
                except EOFError:  # the child's end closed with nothing sent: it died (killed, crashed, exited)
                    process.join()
                    raise _ended_without_result(what, path, process.exitcode) from None
            if not process.is_alive():
                raise _ended_without_result(what, path, process.exitcode)
            rss = tree_rss(process.pid)
            peak = max(peak, rss)
            if rss > budget_bytes:
                process.kill()
                raise RegistrationError(
                    f"{what} grew to {rss / GB:.1f} GB, past its memory budget of {budget_bytes / GB:.1f} GB, and "
                    "was stopped.", path, "try --preset low, or the light engine: --engine feature.")
    finally:
        if process.is_alive():
            process.kill()
        process.join()
        receiver.close()
    if status == "error":
        raise payload
    return payload, peak


def _ended_without_result(what: str, path: str, exit_status: int | None) -> RegistrationError:
    """A child that ended without answering: killed (a negative status names the signal, -9 the OOM killer's),
    crashed in native code, or exited."""
    return RegistrationError(f"{what} ended without a result (exit status {exit_status}).", path,
                             "look for an out-of-memory kill in the system log, or try --engine feature.")

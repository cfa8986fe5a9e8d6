"""A registration attempt that outgrows its memory budget is stopped by slimreg with a message, not by the kernel."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from slimreg.errors import RegistrationError
from slimreg.register.bounded import run_within_budget

MB = 1024**2


def allocate(megabytes: int) -> int:
    block = np.ones(megabytes * MB, dtype=np.uint8)  # touched, so resident
    import time

    time.sleep(1.0)  # give the watchdog time to see it
    return int(block[::4096].sum())


def fail_clearly() -> None:
    raise RegistrationError("no luck", "image.tif", "try again")


def test_result_and_peak_come_back() -> None:
    value, peak = run_within_budget(allocate, (50,), 2000 * MB, "test step", "image.tif")
    assert value == 50 * MB // 4096 and peak > 50 * MB


def test_outgrowing_the_budget_stops_the_step_with_a_message() -> None:
    with pytest.raises(RegistrationError, match=r"past its memory budget of 0\.2 GB") as error:
        run_within_budget(allocate, (600,), 200 * MB, "test step", "image.tif")
    assert "image.tif" in str(error.value) and "Fix:" in str(error.value)


def test_the_child_s_own_error_is_raised_as_it_was() -> None:
    with pytest.raises(RegistrationError, match="no luck"):
        run_within_budget(fail_clearly, (), 2000 * MB, "test step", "image.tif")


def test_a_child_that_dies_without_answering_is_a_clear_failure() -> None:
    # the OOM killer or a crash in native code ends the child without a word: its end of the pipe closes
    with pytest.raises(RegistrationError, match=r"ended without a result \(exit status 3\)") as caught:
        run_within_budget(os._exit, (3,), 2000 * MB, "test step", "image.tif")
    assert "image.tif" in str(caught.value) and "Fix:" in str(caught.value)


def test_the_attempt_ends_with_the_process_that_started_it() -> None:
    # a task killed by its scheduler must not leave a VALIS child running on (and holding memory) as an orphan
    starter = subprocess.Popen([sys.executable, "-c", "import time\nfrom slimreg.register.bounded import "
                                "run_within_budget\nrun_within_budget(time.sleep, (120,), 2**31, 'test step', 'x')"])
    try:
        deadline = time.monotonic() + 60
        while not psutil.Process(starter.pid).children() and time.monotonic() < deadline:
            time.sleep(0.2)
        started = psutil.Process(starter.pid).children()
        assert started, "no attempt was started"
        starter.kill()
        starter.wait()
        _, alive = psutil.wait_procs(started, timeout=10)
        assert not alive, "the attempt outlived the process that started it"
    finally:
        starter.kill()


DESCENDANT = """
import subprocess, sys, threading, time
import numpy as np
held = np.ones({megabytes} * 2**20, dtype=np.uint8)  # touched, so resident
if {depth} > 1:
    # started from a thread other than the main one, which lives on: the kernel lists a child under its thread
    started = threading.Event()
    def start() -> None:
        subprocess.Popen([sys.executable, "-c", sys.argv[1].format(megabytes={megabytes}, depth={depth} - 1),
                          sys.argv[1]])
        started.set()
        time.sleep(60)
    threading.Thread(target=start, daemon=True).start()
    started.wait()
print("ready", flush=True)  # the descendants write theirs to the same pipe
time.sleep(60)
"""


def test_a_process_tree_is_measured_with_every_descendant() -> None:
    """The tree is walked from its root (/proc's children lists where the kernel has them, psutil otherwise): a child
    and a grandchild, each started from a thread other than the main one, count, and the sum is psutil's process by
    process once every block is resident."""
    from slimreg.memory import _tree_rss_by_psutil, tree_rss

    child = subprocess.Popen([sys.executable, "-c", DESCENDANT.format(megabytes=100, depth=3), DESCENDANT],
                             stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert all(child.stdout.readline().startswith(b"ready") for _ in range(3))  # all three hold their blocks
        family = [psutil.Process(child.pid), *psutil.Process(child.pid).children(recursive=True)]
        assert len(family) == 3
        walked = tree_rss(child.pid)
        assert walked > 300 * MB  # three blocks: a walk that stops a level short counts two
        assert abs(walked - _tree_rss_by_psutil(child.pid)) < 8 * MB
        assert abs(walked - sum(member.memory_info().rss for member in family)) < 8 * MB
    finally:
        for member in psutil.Process(child.pid).children(recursive=True):
            member.kill()
        child.kill()
        child.wait()
    assert tree_rss(child.pid) == 0  # gone

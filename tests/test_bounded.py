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

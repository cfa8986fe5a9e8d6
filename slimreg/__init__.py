"""slimreg: register series of very large microscopy images at a bounded, predicted memory cost.

The package holds all logic; the `slimreg` command (and the pipeline's `bin/slimreg`, the same command) is a thin
front end over it. Heavy modules (VALIS, torch) are imported lazily by the code that needs them.
"""

from __future__ import annotations

import warnings
from typing import Any

from slimreg._version import __version__

__all__ = ["JobOptions", "__version__", "run_job"]


def __getattr__(name: str) -> Any:
    """``run_job`` and ``JobOptions``, imported on first use (the runner pulls in numpy, pyvips and OpenCV), with
    their own signatures and docstrings for ``help()``."""
    if name == "run_job":
        from slimreg.runner import run_job

        return run_job
    if name == "JobOptions":
        from slimreg.job_options import JobOptions

        return JobOptions
    raise AttributeError(f"module 'slimreg' has no attribute {name!r}")


def run_batch(*args: Any, **kwargs: Any) -> Any:
    """The former name of :func:`run_job` (a "batch" is the group of images one REGISTER task holds)."""
    warnings.warn("slimreg.run_batch is now slimreg.run_job", DeprecationWarning, stacklevel=2)
    from slimreg.runner import run_job

    return run_job(*args, **kwargs)

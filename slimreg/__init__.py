"""slimreg: register series of very large microscopy images at a bounded, predicted memory cost.

The package holds all logic; the `slimreg` command (and the pipeline's `bin/slimreg`, the same command) is a thin
front end over it. Heavy modules (VALIS, torch) are imported lazily by the code that needs them.
"""

from __future__ import annotations

import warnings
from typing import Any

from slimreg._version import __version__

__all__ = ["__version__", "run_job"]


def run_job(*args: Any, **kwargs: Any) -> Any:
    """Run a whole job on one machine; see :func:`slimreg.runner.run_job` (imported lazily)."""
    from slimreg.runner import run_job as _run_job

    return _run_job(*args, **kwargs)


def run_batch(*args: Any, **kwargs: Any) -> Any:
    """The former name of :func:`run_job` (a "batch" is the group of images one REGISTER task holds)."""
    warnings.warn("slimreg.run_batch is now slimreg.run_job", DeprecationWarning, stacklevel=2)
    return run_job(*args, **kwargs)

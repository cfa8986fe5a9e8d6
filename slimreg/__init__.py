"""slimreg: register series of very large microscopy images at a bounded, predicted memory cost.

The package holds all logic; the `slimreg` command and the Nextflow pipeline's `bin/` scripts are
thin front ends over it. Heavy modules (VALIS, torch) are imported lazily by the code that needs them.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "run_batch"]


def run_batch(*args: Any, **kwargs: Any) -> Any:
    """Run a whole job on one machine; see :func:`slimreg.runner.run_batch` (imported lazily)."""
    from slimreg.runner import run_batch as _run_batch

    return _run_batch(*args, **kwargs)

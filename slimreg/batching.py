"""Reference-plus-N batching (from the VALIS-in-Nextflow memory notes this project started from): a REGISTER task
holds one reference and a few moving units.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from slimreg.errors import ParameterError
from slimreg.options import DEFAULT_BATCH_SIZE

T = TypeVar("T")


def collate(items: Sequence[T], batch_size: int) -> list[list[T]]:
    """Split ``items`` (kept in order) into consecutive batches of at most ``batch_size``."""
    if batch_size < 1:
        raise ParameterError(f"--batch-size must be at least 1, got {batch_size}.",
                             fix=f"use the default {DEFAULT_BATCH_SIZE}, or 1 for one moving image per task.")
    return [list(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]

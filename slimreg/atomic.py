"""Write-then-rename helpers so a killed or failed step never leaves a file that looks complete."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slimreg.guard import refuse_if_input

PARTIAL_MARKER = ".partial-"


def temporary_sibling(final_path: Path) -> Path:
    """A unique hidden name in the same folder (same filesystem, so the rename is atomic).

    The real suffix is kept at the end because libvips and others choose a format by suffix.
    """
    suffix = "".join(final_path.suffixes[-2:]) if final_path.name.endswith(".ome.tif") else final_path.suffix
    stem = final_path.name[: len(final_path.name) - len(suffix)] if suffix else final_path.name
    return final_path.with_name(f".{stem}{PARTIAL_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


@contextlib.contextmanager
def atomic_output(final_path: str | Path) -> Iterator[Path]:
    """Yield a temporary path; rename it to ``final_path`` only if the block completes.

    On any exception the temporary file is removed and ``final_path`` is left untouched. An output that would
    replace an input of the command now running is refused before anything is written (slimreg.guard).
    """
    final_path = Path(final_path)
    refuse_if_input(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(final_path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: the writer produced no file")
        _replace(tmp, final_path)
    except BaseException:
        _remove(tmp)
        raise


def _replace(tmp: Path, final_path: Path) -> None:
    """Rename ``tmp`` to ``final_path``. A folder (an OME-Zarr) cannot be renamed over a non-empty folder: the
    old one is first renamed aside (a partial name, so a kill here leaves nothing that looks finished besides the
    old output, and the next run's clean-up removes the rest), then removed."""
    if tmp.is_dir() and (final_path.exists() or final_path.is_symlink()):
        aside = temporary_sibling(final_path)
        os.replace(final_path, aside)
        os.replace(tmp, final_path)
        _remove(aside)
        return
    os.replace(tmp, final_path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a small text file through a temporary name."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return path


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write JSON (sorted keys, indented) through a temporary name; NaN and infinities become null, because bare
    ``NaN`` is not JSON and other tools (MultiQC, browsers, jq) refuse the file."""
    return write_text_atomic(path, json.dumps(_finite(data), indent=2, sort_keys=True, default=str,
                                              allow_nan=False) + "\n")


def finite_for_json(value: Any) -> Any:
    """``value`` with every NaN or infinity (numpy's too) replaced by None, so that it dumps as valid JSON."""
    return _finite(value)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0:  # numpy scalars
        return _finite(value.item())
    return value


# exactly what temporary_sibling makes (plus the tile writer's ``.tiles`` scratch file next to it)
PARTIAL_NAME = re.compile(r"^\..+" + re.escape(PARTIAL_MARKER) + r"\d+-[0-9a-f]{4,32}(\.[A-Za-z0-9.]+)?(\.tiles)?$")
SCRATCH_FOLDER = re.compile(r"^\.slimreg-work-[A-Za-z0-9_]+$")


def remove_partials(folder: str | Path, protected: set[Path] | frozenset[Path] = frozenset()) -> list[Path]:
    """Delete leftovers of interrupted slimreg writes below ``folder``: files and OME-Zarr folders named exactly as
    slimreg names its temporary files, and its ``.slimreg-work-*`` scratch folders; never a path in ``protected``
    (the run's inputs), and nothing of any other name. Returns what was removed."""
    removed = []
    protected = {Path(p).resolve() for p in protected}
    for path in sorted(Path(folder).rglob(".*")):
        if path.resolve() in protected:
            continue
        if path.is_file() and PARTIAL_NAME.match(path.name):
            path.unlink()
            removed.append(path)
        elif path.is_dir() and path.exists() and (PARTIAL_NAME.match(path.name) or SCRATCH_FOLDER.match(path.name)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed

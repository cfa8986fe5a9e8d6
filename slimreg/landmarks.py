"""Landmarks: corresponding points as ``x,y`` CSV files of level-0 pixel positions (one point per line, in order).

Read by validation, QC and the benchmarks; written by the demo generator. Row ``i`` of a reference's file and
row ``i`` of a moving image's file mark the same structure.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from slimreg.atomic import write_text_atomic
from slimreg.errors import InputError


def write_landmarks(path: Path, points: np.ndarray) -> Path:
    """Write landmarks as CSV with header ``x,y`` (level-0 pixels)."""
    lines = ["x,y"] + [f"{x:.4f},{y:.4f}" for x, y in points]
    return write_text_atomic(path, "\n".join(lines) + "\n")


def read_landmarks(path: str | Path) -> np.ndarray:
    """Read an ``x,y`` CSV of level-0 pixel positions as an N x 2 array."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError as error:
        raise InputError("landmarks file not found.", path, "check the samplesheet's landmarks column.") from error
    except UnicodeDecodeError as error:  # an image or a Latin-1 export given as landmarks
        raise InputError(f"is not a UTF-8 text file (byte 0x{error.object[error.start]:02x} at byte "
                         f"{error.start}), so not a landmarks CSV.", path, "give a CSV with header x,y and one "
                         "point per line, saved as UTF-8 (or plain ASCII) text.") from error
    except csv.Error as error:
        raise InputError(f"is not a readable CSV ({error}).", path, "give a CSV with header x,y and one point per "
                         "line.") from error
    if not rows or not {"x", "y"} <= set(rows[0]):
        raise InputError("landmarks CSV needs a header with columns x and y and at least one row.", path,
                         "write it as 'x,y' followed by one point per line.")
    try:
        points = np.array([[float(r["x"]), float(r["y"])] for r in rows], dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InputError(f"landmarks CSV has a value that is not a number ({error}).", path) from error
    bad = np.flatnonzero(~np.isfinite(points).all(axis=1))
    if bad.size:
        raise InputError(f"landmarks CSV has a value that is not a finite number in data row {bad[0] + 1}.", path,
                         "give every landmark as two numbers (level-0 pixels).")
    return points

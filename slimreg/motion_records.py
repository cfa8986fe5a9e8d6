"""A recording's per-frame motion results, held in a fixed few bytes per frame, and written out streamed.

Motion correction must keep its peak memory flat with the recording's length (issue 40: 100 000 frames within 10 %
of 1000). A list of per-frame objects and a JSON document built whole took a few hundred bytes per frame, tens of
megabytes at 100 000 frames. Here each frame costs 33 bytes of numpy arrays (shift, status, correlations, the
largest patch residual), the piecewise mode's full patch shifts go to an anonymous scratch file, and the CSV is
written a block of frames at a time. The JSON record holds the summary, not the frames.
"""

from __future__ import annotations

import csv
import tempfile
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from slimreg.atomic import atomic_output
from slimreg.motion import FrameShift

STATUSES = ("ok", "blank", "nan")
CSV_BLOCK_FRAMES = 4096  # frames whose patch shifts are read back at once when the CSV is written


class FrameTable:
    """Every frame's shift (how far its content moved from the template), status and correlations with the mean
    before and after correction, in frame order; ``patches`` residuals per frame in piecewise mode."""

    def __init__(self, count: int, patches: int = 0, scratch_dir: Path | None = None):
        self.count, self.patches = count, patches
        self.dy = np.zeros(count, np.float64)
        self.dx = np.zeros(count, np.float64)
        self.status = np.zeros(count, np.uint8)
        self.correlation_before = np.full(count, np.nan, np.float32)
        self.correlation_after = np.full(count, np.nan, np.float32)
        self.largest_residual = np.zeros((count, 2), np.float32)  # max |patch - rigid| in y and x
        # open as long as the table: ``close()``, or when the table is collected
        self._patch_file = tempfile.TemporaryFile(dir=scratch_dir) if patches else None  # noqa: SIM115
        self._filled = 0

    def extend(self, shifts: list[FrameShift]) -> None:
        """Append the next frames' shifts (a chunk, in order)."""
        for shift in shifts:
            index = self._filled
            if shift.frame != index:
                raise ValueError(f"frame {shift.frame} given where frame {index} was expected")
            self.dy[index], self.dx[index] = shift.dy, shift.dx
            self.status[index] = STATUSES.index(shift.status)
            if self._patch_file is not None:
                residuals = np.zeros((2, self.patches), np.float32)
                if shift.patch_dy is not None and shift.patch_dx is not None:
                    residuals = np.stack([np.ravel(shift.patch_dy), np.ravel(shift.patch_dx)]).astype(np.float32)
                    self.largest_residual[index] = np.abs(residuals).max(axis=1)
                self._patch_file.write(residuals.tobytes())
            self._filled += 1

    def patch_residuals(self, start: int, stop: int) -> np.ndarray:
        """Patch residuals of frames [start, stop), shape (frames, 2, patches): dy then dx."""
        if self._patch_file is None:
            raise ValueError("no patch shifts: the recording was corrected rigidly")
        row = 2 * self.patches * 4
        self._patch_file.flush()
        self._patch_file.seek(start * row)
        data = np.frombuffer(self._patch_file.read((stop - start) * row), np.float32)
        return data.reshape(stop - start, 2, self.patches)

    def frames_with(self, status: str) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.status == STATUSES.index(status))]

    def largest_shift(self) -> float:
        """The largest rigid shift of an aligned frame (px)."""
        ok = self.status == 0
        return float(np.hypot(self.dy[ok], self.dx[ok]).max()) if ok.any() else 0.0

    def __len__(self) -> int:
        return self._filled

    def __getitem__(self, index: int) -> FrameShift:
        if not 0 <= index < self._filled:
            raise IndexError(index)
        patch_dy = patch_dx = None
        if self._patch_file is not None and STATUSES[self.status[index]] == "ok":
            patch_dy, patch_dx = self.patch_residuals(index, index + 1)[0]
        return FrameShift(index, float(self.dy[index]), float(self.dx[index]), STATUSES[self.status[index]],
                          patch_dy, patch_dx)

    def __iter__(self) -> Iterator[FrameShift]:
        return (self[i] for i in range(self._filled))

    def write_csv(self, path: Path) -> None:
        """frame,dy,dx,status,correlation_before,correlation_after and, in piecewise mode,
        patch_max_abs_dy,patch_max_abs_dx and every patch's residual (patch_dy_<k>, patch_dx_<k>, patches in
        row-major order of the grid the JSON record describes); under a temporary name until complete."""
        with atomic_output(path) as tmp, open(tmp, "w", newline="") as handle:
            out = csv.writer(handle)
            extra = (["patch_max_abs_dy", "patch_max_abs_dx"] + [f"patch_dy_{k}" for k in range(self.patches)]
                     + [f"patch_dx_{k}" for k in range(self.patches)]) if self.patches else []
            out.writerow(["frame", "dy", "dx", "status", "correlation_before", "correlation_after", *extra])
            for start in range(0, self._filled, CSV_BLOCK_FRAMES):
                stop = min(start + CSV_BLOCK_FRAMES, self._filled)
                residuals = self.patch_residuals(start, stop) if self.patches else None
                for index in range(start, stop):
                    row = [index, f"{self.dy[index]:.4f}", f"{self.dx[index]:.4f}", STATUSES[self.status[index]],
                           _number(self.correlation_before[index]), _number(self.correlation_after[index])]
                    if residuals is not None:
                        row += [f"{v:.4f}" for v in self.largest_residual[index]]
                        row += [f"{v:.4f}" for v in residuals[index - start].ravel()]
                    out.writerow(row)

    def close(self) -> None:
        if self._patch_file is not None:
            self._patch_file.close()


def _number(value: float) -> str:
    return f"{value:.4f}" if np.isfinite(value) else ""


# How a session transform's "motion" block (``frame_shifts_record``) reads: what a user needs to go from a raw frame
# to the reference frame without slimreg.
FRAME_SHIFTS_CONVENTION = (
    "frame t of a corrected piece is frame first_frame + t of its recording moved back by its shift: "
    "corrected_t(x, y) = raw_(first_frame + t)(x + dx[t], y + dy[t]), plus, in piecewise mode, the patch residuals "
    "in the piece's shifts CSV; blank and nan frames have shift 0 and are left as they were. The transform's pull "
    "map then takes reference pixels to the corrected frames' pixels")


def frame_shifts_record(pieces: list[tuple[Path, Path, str, int]]) -> dict[str, object]:
    """Each motion-corrected piece's per-frame rigid shifts (``(corrected piece, its shifts CSV, its recording's file
    name, the recording's frame the piece starts at)``), for the
    session's transform file: the transform alone then maps every raw frame to the reference. The CSV is read a
    row at a time into two arrays of doubles (16 bytes per frame); the lists JSON needs are made per piece."""
    records = []
    for corrected, shifts_csv, recording, first_frame in pieces:
        dy, dx = array("d"), array("d")
        with open(shifts_csv, newline="") as handle:
            for row in csv.DictReader(handle):
                dy.append(float(row["dy"]))
                dx.append(float(row["dx"]))
        records.append({"file": Path(corrected).name, "recording": recording, "first_frame": first_frame,
                        "shifts_csv": Path(shifts_csv).name, "frames": len(dy),
                        "dy": dy.tolist(), "dx": dx.tolist()})
    return {"convention": FRAME_SHIFTS_CONVENTION, "pieces": records}

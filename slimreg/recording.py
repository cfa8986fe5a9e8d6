"""A recording's frames corrected for motion and written, streamed: what `slimreg motion-correct` runs on one file
and what the plan's ``template`` and ``motion`` tasks run on a session's stacks (slimreg.kinds.template, .motion).

Frames are read and corrected a chunk at a time as the writer reaches their planes, so peak memory depends on the
frame size and the chunk, not on the number of frames, and the disk holds only the input and the output. Two passes:
(1) each frame's shift against the template (the registration channel), every channel of the frame moved by it and
written (``write_planes`` writes under a temporary name), and the means before and after; (2) each frame's
correlation with those means (CaImAn's metric), the corrected frames read back from the file written. A long
recording's pieces are corrected as separate tasks against one shared template: each frame is corrected on its
own, so the pieces hold exactly the frames one task would have written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np
import tifffile

from slimreg.atomic import atomic_output
from slimreg.errors import InputError, ParameterError
from slimreg.motion import (
    MODES,
    PatchGrid,
    apply_frame_shift,
    build_template,
    correlations_with,
    crispness,
    frame_shifts,
    template_spectrum,
)
from slimreg.motion_records import FrameTable
from slimreg.options import DEFAULT_MOTION_DTYPE, MOTION_DTYPES, corrected_dtype

if TYPE_CHECKING:
    import pyvips

# frames of the registration channel held at once (float32): a few dozen 512 x 512 frames
CHUNK_BYTES = 32 * 1024**2


class Frames(Protocol):
    """Frames of a recording: ``frame(i)`` is frame ``i``'s registration channel, ``frame(i, c)`` channel ``c``."""

    path: Path
    count: int
    shape: tuple[int, int]
    dtype: np.dtype
    channel: int
    channel_names: tuple[str, ...]
    pixel_size_um: tuple[float, float] | None

    def frame(self, index: int, channel: int | None = None) -> np.ndarray: ...

    def close(self) -> None: ...


class PageFrames:
    """A plain TIFF of one grey plane per page (`slimreg motion-correct`'s input); every page checked against the
    first before any pixel is read."""

    channel = 0
    channel_names = ("frames",)
    pixel_size_um = None

    def __init__(self, path: Path):
        self.path = path
        self.tif = tifffile.TiffFile(path)
        self.tif.pages.cache = False  # a page's header would otherwise be kept: memory growing with length
        self.count = len(self.tif.pages)
        if self.count == 0:
            raise InputError("the file holds no frames.", path=path)
        first = self.tif.pages[0]
        self.shape, self.dtype = first.shape, first.dtype
        if len(self.shape) != 2:
            raise InputError(f"frame 0 has shape {self.shape}; motion correction takes one grey plane per page.",
                             path=path, fix="split channels into separate files first.")
        for index in range(1, self.count):
            page = self.tif.pages[index]
            if page.shape != self.shape or page.dtype != self.dtype:
                raise InputError(f"frame {index} is {page.shape} {page.dtype}, frame 0 is {self.shape} "
                                 f"{self.dtype}: a recording's frames must all have one size and type.", path=path,
                                 fix=f"cut the file before frame {index} or resample the frames.")

    def frame(self, index: int, channel: int | None = None) -> np.ndarray:
        return self.tif.pages[index].asarray().astype(np.float32)

    def close(self) -> None:
        self.tif.close()


class StackFrames:
    """Frames ``[start, stop)`` of an OME stack (a time series: one Z), every channel, read one plane at a time."""

    def __init__(self, path: Path, channel: int, start: int = 0, stop: int | None = None):
        from slimreg.io.read import TiffImage

        self.image = TiffImage(path, access="random")
        info = self.image.info
        if info.is_rgb or info.size_z > 1:
            raise InputError("is not a grey time series (RGB, or Z planes): motion correction takes one grey "
                             "plane per channel and time point.", path,
                             "register it without motion correction: --motion-correction off.")
        stop = info.frames if stop is None else stop
        if not 0 <= start < stop <= info.frames:
            raise InputError(f"frames {start}-{stop} asked for, but the file holds {info.frames}.", path,
                             "plan again from the file as it is now.")
        if not 0 <= channel < info.channels:
            raise InputError(f"channel {channel} asked for, but the file has {info.channels}.", path,
                             "plan again from the file as it is now.")
        self.path, self.start, self.count, self.channel = Path(path), start, stop - start, channel
        self.shape, self.dtype = (info.height, info.width), np.dtype(info.dtype)
        self.channel_names, self.pixel_size_um = tuple(info.channel_names), info.pixel_size_um

    def frame(self, index: int, channel: int | None = None) -> np.ndarray:
        plane = self.image.plane_array(self.channel if channel is None else channel, self.start + index)
        return plane.astype(np.float32)

    def close(self) -> None:
        self.image.close()


def chunk_frames_for(shape: tuple[int, int]) -> int:
    """Frames per chunk: CHUNK_BYTES of float32 frames, at least one."""
    return max(1, CHUNK_BYTES // (4 * shape[0] * shape[1]))


def _chunks(frames: Frames, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first index, registration-channel frames) of consecutive chunks of at most ``chunk`` frames, read into one
    buffer that every chunk reuses (a list stacked would hold each chunk twice)."""
    buffer = np.empty((min(chunk, frames.count), *frames.shape), np.float32)
    for start in range(0, frames.count, chunk):
        yield start, _read_frames(frames, start, min(start + chunk, frames.count), buffer)


def _read_frames(frames: Frames, start: int, stop: int, buffer: np.ndarray) -> np.ndarray:
    """Registration-channel frames [start, stop) read into the head of ``buffer``; that view."""
    for row, index in enumerate(range(start, stop)):
        buffer[row] = frames.frame(index)
    return buffer[:stop - start]


def session_template(recordings: list[Frames]) -> np.ndarray:
    """One template for a session's recordings: frames spread over all of them, in order (slimreg.motion)."""
    offsets = np.cumsum([0] + [r.count for r in recordings])

    def frame_at(index: int) -> np.ndarray:
        which = int(np.searchsorted(offsets, index, side="right")) - 1
        return recordings[which].frame(index - int(offsets[which]))

    shapes = {r.shape for r in recordings}
    if len(shapes) > 1:
        raise InputError(f"the session's recordings have frames of different sizes ({sorted(shapes)}).",
                         recordings[0].path, "put recordings of different sizes in different sessions.")
    return build_template(frame_at, int(offsets[-1]), recordings[0].path)


def write_template(template: np.ndarray, path: str | Path) -> Path:
    """The template as a float32 TIFF, under a temporary name until complete."""
    with atomic_output(path) as tmp:
        tifffile.imwrite(tmp, template.astype(np.float32))
    return Path(path)


def read_template(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    template = tifffile.imread(path).astype(np.float32)
    if template.shape != shape:
        raise InputError(f"the template is {template.shape}, the frames {shape}: it belongs to another session.",
                         path, "plan and run again: the template task writes the session's own.")
    return template


@dataclass(frozen=True)
class MotionOutputs:
    """Where one corrected recording and its records go."""

    corrected: Path
    shifts_csv: Path
    json: Path
    plot: Path

    @classmethod
    def in_folder(cls, outdir: Path, stem: str) -> MotionOutputs:
        return cls(outdir / f"{stem}.corrected.ome.tif", outdir / f"{stem}.shifts.csv", outdir / f"{stem}.motion.json",
                   outdir / f"{stem}.motion.png")


@dataclass
class MotionResult:
    """What ``correct_recording`` wrote and measured."""

    outputs: dict[str, str]
    frames: int
    mode: str
    blank_frames: list[int]
    nan_frames: list[int]
    qc: dict[str, float]
    shifts: FrameTable = field(repr=False)
    dtype: str = ""  # the corrected frames' type


def correct_motion(input_path: str | Path, outdir: str | Path, *, mode: str = "rigid",
                   chunk_frames: int = 100, dtype: str = DEFAULT_MOTION_DTYPE) -> MotionResult:
    """`slimreg motion-correct`: one TIFF recording against its own template; outputs in ``outdir``, frames of the
    recording's type or of ``dtype``."""
    _check_mode(mode)
    if dtype not in MOTION_DTYPES:
        raise ParameterError(f"unknown --dtype {dtype!r}.", fix=f"use one of {', '.join(MOTION_DTYPES)}.")
    if chunk_frames < 1:
        raise ParameterError(f"--chunk-frames must be at least 1, got {chunk_frames}.")
    input_path, outdir = Path(input_path), Path(outdir)
    frames = PageFrames(input_path)  # refuses a mid-file size or type change before anything is written
    try:
        template = session_template([frames])
        outdir.mkdir(parents=True, exist_ok=True)
        stem = input_path.name.split(".")[0]
        return correct_recording(frames, template, mode, MotionOutputs.in_folder(outdir, stem), name=stem,
                                 chunk_frames=chunk_frames, pyramid=False,
                                 dtype=np.dtype(corrected_dtype(dtype, str(frames.dtype))))
    finally:
        frames.close()


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ParameterError(f"unknown motion-correction mode {mode!r}.", fix=f"use one of {', '.join(MODES)}.")


def correct_recording(frames: Frames, template: np.ndarray, mode: str, outputs: MotionOutputs, *, name: str,
                      chunk_frames: int | None = None, tile_size: int = 512, compression: str = "deflate",
                      pyramid: bool = True, dtype: np.dtype | None = None) -> MotionResult:
    """Correct every frame against ``template`` and write the corrected OME-TIFF (every channel, moved alike, of
    type ``dtype``, the recording's own when None), the shifts (CSV, per frame), the summary (JSON) and the shift
    plot; frame numbers in the records count from the recording's start. Memory does not grow with the number of
    frames beyond a few bytes each (slimreg.motion_records), and the disk holds the input and the output only."""
    _check_mode(mode)
    dtype = np.dtype(dtype or frames.dtype)
    chunk = chunk_frames or chunk_frames_for(frames.shape)
    outputs.corrected.parent.mkdir(parents=True, exist_ok=True)
    grid = PatchGrid.for_shape(frames.shape) if mode == "piecewise" else None
    table = FrameTable(frames.count, len(grid.starts_y) * len(grid.starts_x) if grid else 0,
                       scratch_dir=outputs.corrected.parent)
    corrected = CorrectedPlanes(frames, template, dtype, grid, chunk, table)
    _write_recording(frames, corrected, dtype, outputs.corrected, name, tile_size, compression, pyramid)
    mean_before, mean_after = corrected.means()
    del corrected  # its chunk buffers, before the QC pass takes its own
    _frame_correlations(frames, outputs.corrected, mean_before, mean_after, chunk, table)
    table.write_csv(outputs.shifts_csv)
    plot_shifts(table, outputs.plot)
    qc = _qc_numbers(mean_before, mean_after, table)
    result = MotionResult({"corrected": str(outputs.corrected), "shifts_csv": str(outputs.shifts_csv),
                           "plot": str(outputs.plot), "json": str(outputs.json)}, frames.count, mode,
                          table.frames_with("blank"), table.frames_with("nan"), qc, table, str(dtype))
    _write_json(outputs.json, result, grid, first_frame=getattr(frames, "start", 0))
    return result


def _channels(frames: Frames) -> int:
    return len(frames.channel_names)


def _to_dtype(frame: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A float frame in the output's type: rounded and clipped for integers."""
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(np.nan_to_num(frame)), info.min, info.max).astype(dtype)
    return frame.astype(dtype)


class CorrectedPlanes:
    """Every channel of every frame, corrected, made a chunk of frames at a time as the writer asks for its planes
    (frame-major, channels within a frame). The first time a chunk is corrected, its shifts go into the table and
    its frames into the means before and after. The corrected planes go straight to the output file: a scratch copy
    of the whole recording (52 GB for 100 000 frames of 512 px) is not needed. A plane asked for again (the writer
    renders a large plane in several blocks) comes from the chunk held; a chunk asked for out of order is corrected
    again and not counted twice."""

    def __init__(self, frames: Frames, template: np.ndarray, dtype: np.dtype, grid: PatchGrid | None, chunk: int,
                 table: FrameTable):
        self.frames, self.template, self.dtype, self.grid, self.chunk, self.table = (
            frames, template, dtype, grid, chunk, table)
        self.spectrum = template_spectrum(template)
        self.sum_before = np.zeros(frames.shape, np.float64)
        self.sum_after = np.zeros(frames.shape, np.float64)
        self.good = 0
        self.counted = 0  # frames whose shifts and sums are in: chunks are counted in order, once
        self.held_start = -1
        # one chunk's registration-channel frames and its corrected planes, reused by every chunk
        self.raw = np.empty((min(chunk, frames.count), *frames.shape), np.float32)
        self.held = np.empty((min(chunk, frames.count), _channels(frames), *frames.shape), dtype)

    def plane(self, index: int) -> np.ndarray:
        """Plane ``index`` of the corrected recording (frame ``index // channels``, channel ``index % channels``),
        a copy: the chunk's buffer is overwritten by the next chunk."""
        frame, channel = divmod(index, _channels(self.frames))
        start = frame - frame % self.chunk
        if start != self.held_start:
            self._correct_chunk(start)
        return self.held[frame - start, channel].copy()

    def means(self) -> tuple[np.ndarray, np.ndarray]:
        """The registration channel's mean before and after correction, over the frames that were corrected."""
        if self.counted != self.frames.count:
            raise RuntimeError(f"internal error: {self.counted} of {self.frames.count} frames were corrected")
        good = max(self.good, 1)
        return (self.sum_before / good).astype(np.float32), (self.sum_after / good).astype(np.float32)

    def _correct_chunk(self, start: int) -> None:
        frames, channels = self.frames, _channels(self.frames)
        stop = min(start + self.chunk, frames.count)
        self.held_start = -1  # the buffer is being overwritten
        chunk_frames = _read_frames(frames, start, stop, self.raw)
        shifts = frame_shifts(chunk_frames, start, self.spectrum, self.template, self.grid)
        counting = start == self.counted
        for row, (frame, shift) in enumerate(zip(chunk_frames, shifts, strict=True)):
            for channel in range(channels):
                plane = frame if channel == frames.channel else frames.frame(shift.frame, channel)
                self.held[row, channel] = _to_dtype(apply_frame_shift(plane, shift, self.grid), self.dtype)
            if counting and shift.status == "ok":
                # the QC's mean is of the frames as written (rounded and clipped to an integer type)
                self.sum_before += frame
                self.sum_after += self.held[row, frames.channel]
                self.good += 1
        if counting:
            self.table.extend(shifts)
            self.counted = stop
        self.held_start = start


def _frame_correlations(frames: Frames, corrected_path: Path, mean_before: np.ndarray, mean_after: np.ndarray,
                        chunk: int, table: FrameTable) -> None:
    """Each frame's correlation with the raw mean and, corrected, with the corrected mean (CaImAn's), into
    ``table``: the corrected frames read back from the file just written (its level-0 pages, frame-major)."""
    channels = _channels(frames)
    corrected = np.empty((min(chunk, frames.count), *frames.shape), np.float32)
    with tifffile.TiffFile(corrected_path) as written:
        written.pages.cache = False  # offsets only: a page's header kept per frame would grow with length
        for start, chunk_frames in _chunks(frames, chunk):
            stop = start + len(chunk_frames)
            table.correlation_before[start:stop] = correlations_with(mean_before, chunk_frames)
            for row, frame in enumerate(range(start, stop)):
                corrected[row] = written.pages[frame * channels + frames.channel].asarray()
            table.correlation_after[start:stop] = correlations_with(mean_after, corrected[:stop - start])


def _qc_numbers(mean_before: np.ndarray, mean_after: np.ndarray, table: FrameTable) -> dict[str, float]:
    """Summary QC: mean correlation with the mean and crispness of the mean, before and after."""
    def mean(values: np.ndarray) -> float:
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    return {"mean_correlation_before": mean(table.correlation_before),
            "mean_correlation_after": mean(table.correlation_after),
            "crispness_before": crispness(mean_before), "crispness_after": crispness(mean_after)}


def _write_recording(frames: Frames, corrected: CorrectedPlanes, dtype: np.dtype, path: Path, name: str,
                     tile_size: int, compression: str, pyramid: bool) -> Path:
    """The corrected OME-TIFF, each plane corrected when the writer reaches it."""
    import pyvips

    from slimreg.io.write import OmeMetadata, PlaneSequence, write_planes

    height, width = frames.shape
    meta = OmeMetadata(width=width, height=height, dtype=str(dtype), channel_names=frames.channel_names,
                       pixel_size_um=frames.pixel_size_um, size_t=frames.count, name=name)

    def plane_at(index: int) -> Callable[[], pyvips.Image]:
        def build() -> pyvips.Image:
            return pyvips.Image.new_from_array(corrected.plane(index))
        return build

    # made when the writer reaches each plane: no per-plane object is kept (docs/motion.md, "Length")
    return write_planes(PlaneSequence(frames.count * _channels(frames), plane_at), path, meta, tile_size=tile_size,
                        compression=compression, pyramid=pyramid)


def _write_json(path: Path, result: MotionResult, grid: PatchGrid | None, *, first_frame: int = 0) -> None:
    """The summary: settings, flagged frames, QC, the largest shift and the patch grid; the frames themselves are
    in the CSV (one row each), so this file and the report that reads it stay small however long the recording."""
    payload = {"mode": result.mode, "dtype": result.dtype, "frames": result.frames, "first_frame": first_frame,
               "blank_frames": result.blank_frames, "nan_frames": result.nan_frames,
               "qc": {k: _finite(v) for k, v in result.qc.items()},
               "largest_shift_px": round(result.shifts.largest_shift(), 4),
               "per_frame": Path(result.outputs["shifts_csv"]).name,
               "outputs": {k: Path(v).name for k, v in result.outputs.items()}}
    if grid is not None:
        payload["patch_grid"] = {"size": grid.size, "starts_y": grid.starts_y, "starts_x": grid.starts_x,
                                 "order": "row-major: patch k is row k // len(starts_x), column k % len(starts_x)"}
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1, allow_nan=False))


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


def plot_shifts(table: FrameTable, path: Path, width: int = 800, height: int = 300) -> None:
    """dy (blue) and dx (red) over frames, drawn with OpenCV; blank/NaN frames marked grey. A long recording is
    drawn as each pixel column's lowest and highest shift (the frames that column covers), so drawing it holds a
    few arrays of the plot's width, not of the recording's length."""
    image = np.full((height, width, 3), 255, np.uint8)
    margin = 30
    count = len(table)
    span = width - 2 * margin
    if count > span:  # several frames per pixel column: each column's envelope
        firsts = np.linspace(0, count, span + 1).astype(np.int64)[:-1]
        xs = np.arange(span) + margin
        series = [(np.minimum.reduceat(values[:count], firsts), np.maximum.reduceat(values[:count], firsts))
                  for values in (table.dy, table.dx)]
    else:
        xs = margin + np.rint(np.arange(count) / max(count - 1, 1) * span).astype(np.int64)
        series = [(table.dy[:count], table.dy[:count]), (table.dx[:count], table.dx[:count])]
    limit = max(max((float(np.abs(v).max()) for pair in series for v in pair if len(v)), default=0.0), 0.5)

    def rows(v: np.ndarray) -> np.ndarray:
        return np.rint(height / 2 - v / limit * (height / 2 - margin)).astype(np.int32)

    cv2.line(image, (margin, height // 2), (width - margin, height // 2), (200, 200, 200), 1)
    flagged = np.flatnonzero(table.status[:count] != 0)
    for x in np.unique(margin + np.rint(flagged / max(count - 1, 1) * span).astype(np.int64)):
        cv2.line(image, (int(x), margin), (int(x), height - margin), (160, 160, 160), 1)
    for (low, high), colour in zip(series, ((200, 0, 0), (0, 0, 200)), strict=True):
        # down each column from its highest to its lowest shift, then on to the next column
        pts = np.stack([np.repeat(xs, 2), np.column_stack([rows(high), rows(low)]).ravel()], axis=1)
        cv2.polylines(image, [pts.astype(np.int32).reshape(-1, 1, 2)], False, colour, 1, cv2.LINE_AA)
    cv2.putText(image, f"shift px (+/-{limit:.2f}): dy blue, dx red; grey = blank/NaN frames", (margin, 20),
                cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    with atomic_output(path) as tmp:
        _, encoded = cv2.imencode(".png", image)
        tmp.write_bytes(encoded.tobytes())


__all__ = ["MotionOutputs", "MotionResult", "PageFrames", "StackFrames", "chunk_frames_for", "correct_motion",
           "correct_recording", "read_template", "session_template", "write_template"]

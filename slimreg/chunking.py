"""Multi-frame stacks: split into pieces, project sessions, merge pieces, always one frame at a time.

Following CaliAli's low-memory strategy (CaliAli's documentation, "Low-Memory Processing Strategy"): a recording too
big for one task is split into ``<stem>_b1.ome.tif``, ``_b2``, ... that stay tied to their session; a session is
registered once, through a projection of all its frames, and that one transform is applied to every piece.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from slimreg.errors import InputError, ParameterError
from slimreg.io.probe import ImageInfo, probe
from slimreg.io.read import TiffImage
from slimreg.io.vips import from_numpy
from slimreg.io.write import OmeMetadata, write_planes
from slimreg.options import WORK_TILE_SIZE

if TYPE_CHECKING:
    import pyvips

GB = 1024**3


@dataclass(frozen=True)
class Piece:
    """Frames ``[start, stop)`` of a stack, written as one sub-file."""

    source: str
    index: int  # 1-based, as in _b1
    start: int
    stop: int
    path: str


def frames_per_piece(info: ImageInfo, max_frames: int | None, max_chunk_gb: float | None) -> int | None:
    """How many frames each piece may hold, or None when the stack needs no split."""
    if max_frames is not None and max_frames < 1:
        raise ParameterError(f"--max-frames must be at least 1, got {max_frames}.")
    if max_chunk_gb is not None and max_chunk_gb <= 0:
        raise ParameterError(f"--max-chunk-gb must be positive, got {max_chunk_gb}.")
    limits = []
    if max_frames is not None:
        limits.append(max_frames)
    if max_chunk_gb is not None:
        per_frame = max(1, info.frame_bytes)
        if per_frame > max_chunk_gb * GB:
            raise ParameterError(f"one frame of {info.path} holds {per_frame / GB:.2f} GB, more than --max-chunk-gb "
                                 f"{max_chunk_gb}.", fix="raise --max-chunk-gb above the size of one frame.")
        limits.append(int(max_chunk_gb * GB // per_frame))
    if not limits or info.frames <= min(limits):
        return None
    frames = min(limits)
    if info.size_z > 1 and info.size_t > 1:
        frames = max(info.size_z, frames - frames % info.size_z)  # keep whole Z stacks together
    return frames


def plan_pieces(info: ImageInfo, per_piece: int, outdir: Path, stem: str) -> list[Piece]:
    count = math.ceil(info.frames / per_piece)
    return [Piece(info.path, i + 1, i * per_piece, min(info.frames, (i + 1) * per_piece),
                  str(outdir / f"{stem}_b{i + 1}.ome.tif")) for i in range(count)]


def _stack_meta(info: ImageInfo, frames: int, width: int | None = None, height: int | None = None,
                names: tuple[str, ...] | None = None, pixel_size: tuple[float, float] | None = None,
                dtype: str | None = None) -> OmeMetadata:
    size_z = info.size_z if info.size_z > 1 and frames % info.size_z == 0 else 1
    return OmeMetadata(width or info.width, height or info.height, dtype or info.dtype, names or info.channel_names,
                       pixel_size if pixel_size is not None else info.pixel_size_um, size_z=size_z,
                       size_t=frames // size_z, is_rgb=info.is_rgb and names is None)


def _frame_planes(image: TiffImage, frame: int) -> list[Callable[[], pyvips.Image]]:
    """Recipes for one frame's planes: the writer opens the page afresh for each block it renders."""
    channels: list[int | None] = [None] if image.info.is_rgb else list(range(image.info.channels))
    return [functools.partial(image.plane, 0, channel, frame) for channel in channels]


def split_stack(path: str | Path, pieces: list[Piece], tile_size: int = WORK_TILE_SIZE,
                compression: str = "deflate") -> list[Path]:
    """Write each piece by streaming its frames from the source, block by block."""
    written = []
    with TiffImage(path, access="random") as image:
        for piece in pieces:
            planes = [p for frame in range(piece.start, piece.stop) for p in _frame_planes(image, frame)]
            meta = _stack_meta(image.info, piece.stop - piece.start)
            written.append(write_planes(planes, piece.path, meta, tile_size=tile_size, compression=compression))
    return written


def check_session_shapes(infos: list[ImageInfo], same_type: bool = True) -> None:
    """All pieces of one session must share frame size, channels and (``same_type``) pixel type. The pieces a
    session's projection and merge read may differ in type: a recording corrected as float32 (--motion-dtype) beside
    a still of the samplesheet's own type."""
    def frame_kind(info: ImageInfo) -> tuple:
        return (info.width, info.height, info.channels, info.is_rgb, *((info.dtype,) if same_type else ()))

    first = infos[0]
    for info in infos[1:]:
        if frame_kind(info) != frame_kind(first):
            raise InputError(f"has frames of {info.width}x{info.height}x{info.channels} {info.dtype}, but "
                             f"{first.path} in the same session has {first.width}x{first.height}x{first.channels} "
                             f"{first.dtype}.", info.path, "give pieces of one session the same frame shape, or "
                             "put them in different sessions.")


def projection_factor(info: ImageInfo, max_dim: int) -> int:
    """Integer block factor so that the projection's long side is at most ``max_dim``."""
    return max(1, math.ceil(max(info.width, info.height) / max_dim))


def project_session(paths: list[str | Path], out_path: str | Path, channel: int, factor: int,
                    tile_size: int = WORK_TILE_SIZE) -> Path:
    """Mean and max over every frame of every piece, of one channel, block-averaged by ``factor``.

    Streams frame by frame: memory is two float32 accumulators at the projection's size.
    """
    infos = [probe(p) for p in paths]
    check_session_shapes(infos, same_type=False)  # every frame is read as float64
    first = infos[0]
    height, width = first.height // factor, first.width // factor
    total = np.zeros((height, width), np.float64)
    peak = np.full((height, width), -np.inf, np.float64)
    count = 0
    for info in infos:
        with TiffImage(info, access="random") as image:
            for frame in range(info.frames):
                plane = image.plane(0, None if first.is_rgb else channel, frame)
                if first.is_rgb:
                    plane = plane.colourspace("b-w")[0] if plane.bands >= 3 else plane
                if factor > 1:
                    plane = plane.crop(0, 0, width * factor, height * factor).shrink(factor, factor)
                array = plane.numpy().astype(np.float64)
                total += array
                np.maximum(peak, array, out=peak)
                count += 1
    mean = (total / max(1, count)).astype(np.float32)
    planes = [from_numpy(mean), from_numpy(peak.astype(np.float32))]
    pixel = tuple(s * factor for s in first.pixel_size_um) if first.pixel_size_um else None
    name = first.channel_names[channel] if not first.is_rgb else "grey"
    meta = OmeMetadata(width, height, "float32", (f"{name} mean", f"{name} max"), pixel)
    return write_planes(planes, out_path, meta, tile_size=tile_size)


def merge_pieces(paths: list[str | Path], out_path: str | Path, tile_size: int = WORK_TILE_SIZE,
                 compression: str = "deflate") -> Path:
    """Concatenate registered pieces of one session into one stack, frame by frame, in the type that holds every
    piece's values (``stack_dtype``)."""
    with contextlib.ExitStack() as opened:
        images = [opened.enter_context(TiffImage(p, access="random")) for p in paths]
        check_session_shapes([im.info for im in images], same_type=False)
        planes = [p for image in images for frame in range(image.info.frames) for p in _frame_planes(image, frame)]
        frames = sum(image.info.frames for image in images)
        meta = _stack_meta(images[0].info, frames, dtype=stack_dtype([im.info for im in images]))
        return write_planes(planes, out_path, meta, tile_size=tile_size, compression=compression)


def stack_dtype(infos: list[ImageInfo]) -> str:
    """The type a merged stack of these pieces is written in: one that holds every piece's values (a uint16 still
    beside a recording corrected as float32: float32)."""
    return np.result_type(*(np.dtype(info.dtype) for info in infos)).name

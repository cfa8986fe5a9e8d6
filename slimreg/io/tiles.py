"""Render a lazy plane into compressed pyramid tiles with memory set by the tile size, not the image size.

libvips' pyramidal ``tiffsave`` keeps, for every pyramid level, a strip of tile rows across the full image
width: measured peaks grew from 141 MB to 385 MB as an RGB output grew from 5000 to 30000 px a side, and a
100k px slide would need gigabytes. Here the plane is walked as a quadtree in Z order:

* a leaf is a square block of level-0 pixels (a few tiles a side) rendered from the lazy pipeline with one
  ``crop(...).numpy()``; its level-0 tiles are emitted and it is halved in place into the tiles of the levels
  above it that it covers;
* an inner node halves each child's tile into one quadrant of its own tile as the child finishes.

At any moment the walk holds one rendered block, one tile per quadtree depth and the tiles waiting for the
encoder threads. Tiles arrive in Z order, not in the row-major order a TIFF directory lists them in, so the
compressed bytes go to a scratch file with their offsets recorded per level and are read back, in order, when
the final file is assembled (see ``slimreg.io.write``).
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import pyvips
from tifffile import TIFF

from slimreg.io.vips import VIPS_TO_NUMPY

# TIFF compression tags: ADOBE_DEFLATE (8) is what libvips and libtiff write for "deflate"
COMPRESSION_TAGS = {"none": 1, "lzw": 5, "jpeg": 7, "deflate": 8}
RENDER_BLOCK_PIXELS = 1024
JPEG_SUBSAMPLING = (2, 2)
# libdeflate's fastest level: 1.7-2.4x faster than its default 6 on RGB section tiles, for files 3-8 % larger (and
# no larger on noisy 16-bit fluorescence); deflating is most of the warp's CPU (docs/benchmarks.md, "Deflate level")
DEFLATE_LEVEL = 1


@dataclass(frozen=True)
class TileCodec:
    """How one tile's pixels become the bytes a TIFF reader expects (same codecs tifffile would use)."""

    compression: str
    predictor: bool
    quality: int = 90
    deflate_level: int = DEFLATE_LEVEL

    @property
    def tag(self) -> int:
        return COMPRESSION_TAGS[self.compression]

    def encode(self, tile: np.ndarray) -> bytes:
        """Compress one full-size tile, shaped (rows, columns, samples); views of a block are welcome.

        The contiguous copy (where one is needed) is made here, on the encoding thread, so queued tiles stay
        views of their rendered block instead of copies.
        """
        tile = np.ascontiguousarray(tile)
        if self.compression == "none":
            return tile.tobytes()
        if self.compression == "jpeg":
            return TIFF.COMPRESSORS[7](tile, level=self.quality, colorspace="RGB", outcolorspace="YCBCR",
                                       subsampling=JPEG_SUBSAMPLING)
        data = TIFF.PREDICTORS[2](tile, axis=-2) if self.predictor else tile
        if self.compression == "deflate":
            return TIFF.COMPRESSORS[self.tag](data, level=self.deflate_level)
        return TIFF.COMPRESSORS[self.tag](data)


OVERVIEW_PX = 256  # a pyramid ends at a level this small, whatever the tile: a viewer's overview of the whole image


def level_tile_sizes(shapes: list[tuple[int, int]], tile: int) -> list[int]:
    """The tile size each level is written with: ``tile``, except that a level smaller than one tile gets the
    smallest power of two (at least 16) that holds it. libvips refuses to read a level whose tile is larger than
    twice its long side rounded up to 256 px ("tiff2vips: tile size out of range"; pyvips 8.18, and VALIS reads
    through it), so a 1164 px image's 291 px level written in 1024 px tiles could not be opened."""
    return [tile if max(height, width) >= tile else min(tile, max(16, 1 << (max(height, width) - 1).bit_length()))
            for height, width in shapes]


def pyramid_shapes(height: int, width: int, tile: int, pyramid: bool = True) -> list[tuple[int, int]]:
    """(height, width) of each level: halved (rounded down, at least 1 px) until one tile holds it and it is an
    overview (OVERVIEW_PX): so a 1024 px image written in 1024 px tiles has a pyramid too, as viewers expect."""
    shapes = [(height, width)]
    while pyramid and max(shapes[-1]) > min(tile, OVERVIEW_PX):
        level_height, level_width = shapes[-1]
        shapes.append((max(1, level_height // 2), max(1, level_width // 2)))
    return shapes


class TileEncoder(Protocol):
    """Turns one full-size tile (rows, columns, samples) into what a TileSink stores (TileCodec: TIFF bytes)."""

    def encode(self, tile: np.ndarray) -> Any: ...


class TileSink(Protocol):
    """Where encoded tiles go, in any order (TileStore: a scratch file for the TIFF writer; the OME-Zarr writer:
    chunk files)."""

    def put(self, level: int, row: int, column: int, data: Any) -> None: ...


class TileStore:
    """Compressed tiles appended to a scratch file in any order; read back level by level in TIFF order."""

    def __init__(self, handle: BinaryIO, shapes: list[tuple[int, int]], tile: int):
        self.handle = handle
        self.tile_sizes = level_tile_sizes(shapes, tile)  # each level's tiles, as rendered and as written
        grids = [(-(-h // tile), -(-w // tile)) for h, w in shapes]
        self.offsets = [np.full(grid, -1, np.int64) for grid in grids]
        self.counts = [np.zeros(grid, np.int64) for grid in grids]
        self.handle.seek(0)
        self.handle.truncate()
        self._end = 0

    def put(self, level: int, row: int, column: int, data: bytes) -> None:
        self.handle.seek(self._end)
        self.handle.write(data)
        self.offsets[level][row, column] = self._end
        self.counts[level][row, column] = len(data)
        self._end += len(data)

    def missing(self) -> list[tuple[int, int, int]]:
        """(level, row, column) of every tile never stored: empty when a plane was rendered completely."""
        return [(level, int(r), int(c)) for level, offsets in enumerate(self.offsets)
                for r, c in zip(*np.nonzero(offsets < 0), strict=True)]

    def level_tiles(self, level: int) -> Iterator[bytes]:
        """The level's compressed tiles in row-major order, as a TIFF tile directory lists them."""
        self.handle.flush()
        for offset, count in zip(self.offsets[level].ravel(), self.counts[level].ravel(), strict=True):
            self.handle.seek(int(offset))
            yield self.handle.read(int(count))


def _halve(array: np.ndarray, out_rows: int, out_columns: int) -> np.ndarray:
    """2 x 2 box mean (integers rounded half up, as libvips' pyramid does) down to the given extent.

    An axis one pixel long stays one pixel long (the level above a 1 px line is that line). Every pyramid tile
    above level 0 passes through here. Summing a reshaped view with numpy took 29 of the 85 s a 20000 px RGB
    registration took; adding the four strided views is 4-6x faster, and OpenCV's area resize 40x faster again, with
    the same integers for 8- and 16-bit four-pixel means (docs/benchmarks.md, "Pyramid levels"). OpenCV is used
    only where the process has already loaded it (a register task, which warps): importing it would add about
    17 MB to tasks that only write, which their estimates do not hold.
    """
    def pairs(n_out: int, n_in: int) -> int:
        return 1 if (n_out == 1 and n_in == 1) else 2

    if out_rows == 0 or out_columns == 0:
        return np.zeros((out_rows, out_columns, array.shape[2]), array.dtype)
    row_step, column_step = pairs(out_rows, array.shape[0]), pairs(out_columns, array.shape[1])
    part = array[: out_rows * row_step, : out_columns * column_step]
    opencv = sys.modules.get("cv2")
    # OpenCV's exact integer path takes 8- and 16-bit unsigned images of 1-4 samples; two-pixel means (a 1 px axis)
    # it rounds half to even
    if (opencv is not None and row_step == column_step == 2 and array.dtype in (np.uint8, np.uint16)
            and array.shape[2] <= 4):
        return opencv.resize(part, (out_columns, out_rows), interpolation=opencv.INTER_AREA).reshape(
            out_rows, out_columns, array.shape[2])
    # the narrowest accumulator that cannot overflow: four 16-bit values fit in 32 bits
    wide = np.float64 if array.dtype.kind == "f" else (np.int32 if array.dtype.itemsize <= 2 else np.int64)
    summed = np.zeros((out_rows, out_columns, array.shape[2]), wide)
    for row in range(row_step):
        for column in range(column_step):
            summed += part[row::row_step, column::column_step]
    count = row_step * column_step
    if array.dtype.kind == "f":
        return (summed / count).astype(array.dtype)
    summed += count // 2
    summed //= count
    return summed.astype(array.dtype)


class PyramidRenderer:
    """Walks one plane's quadtree, rendering leaves ahead on a thread and encoding tiles on a pool."""

    def __init__(self, plane: Callable[[], pyvips.Image], shapes: list[tuple[int, int]], tile: int,
                 codec: TileEncoder, store: TileSink, *, block: int = RENDER_BLOCK_PIXELS, workers: int | None = None,
                 level_tiles: list[int] | None = None):
        """``level_tiles``: the size each level's tiles are padded to (``level_tile_sizes``; ``tile`` throughout
        without it); a smaller one only for a level that one tile holds, so the quadtree walk is the same."""
        self.plane = plane
        self.level_tiles = level_tiles or [tile] * len(shapes)
        probe_image = plane()
        self.samples = probe_image.bands
        self.dtype = np.dtype(VIPS_TO_NUMPY[probe_image.format])
        self.shapes = shapes
        self.tile = tile
        self.codec = codec
        self.store = store
        height, width = shapes[0]
        # quadtree depth: level-0 tiles must be covered even where flooring dropped the last pixels above
        self.depth = len(shapes) - 1
        while tile << self.depth < max(height, width):
            self.depth += 1
        self.leaf_depth = 0
        while tile << (self.leaf_depth + 1) <= block and self.leaf_depth < self.depth:
            self.leaf_depth += 1
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._pending: deque[tuple[int, int, int, Future[Any]]] = deque()
        # a whole block's tiles may queue (they are views of it) plus a few more to keep the encoders busy
        self._max_pending = 2 * self.workers + (1 << (2 * self.leaf_depth))

    # -- geometry --------------------------------------------------------------------------------------
    def _extent(self, level: int, start: int, axis: int, tiles: int = 1) -> int:
        """Pixels of ``level`` from ``start`` over ``tiles`` tiles, clipped to the level's size."""
        return max(0, min(start + tiles * self.tile, self.shapes[level][axis]) - start)

    def _nodes(self, depth: int, row: int, column: int) -> Iterator[tuple[int, int, int]]:
        """Children of a node that hold level-0 pixels, in Z order."""
        height, width = self.shapes[0]
        span = self.tile << (depth - 1)
        for child_row in (2 * row, 2 * row + 1):
            for child_column in (2 * column, 2 * column + 1):
                if child_row * span < height and child_column * span < width:
                    yield depth - 1, child_row, child_column

    def _leaves(self, depth: int, row: int, column: int) -> Iterator[tuple[int, int, int]]:
        if depth <= self.leaf_depth:
            yield depth, row, column
            return
        for child in self._nodes(depth, row, column):
            yield from self._leaves(*child)

    # -- work ------------------------------------------------------------------------------------------
    def _emit(self, pool: ThreadPoolExecutor, level: int, row: int, column: int, data: np.ndarray) -> None:
        """Queue one tile (padded to full size) for encoding; store finished tiles in submission order."""
        if level >= len(self.shapes) or data.shape[0] == 0 or data.shape[1] == 0:
            return
        size = self.level_tiles[level]
        if data.shape[:2] != (size, size):
            padded = np.zeros((size, size, self.samples), data.dtype)
            padded[: data.shape[0], : data.shape[1]] = data
            data = padded
        self._pending.append((level, row, column, pool.submit(self.codec.encode, data)))
        self._drain(self._max_pending)

    def _drain(self, keep: int) -> None:
        while len(self._pending) > keep:
            level, row, column, future = self._pending.popleft()
            self.store.put(level, row, column, future.result())

    def _render(self, depth: int, row: int, column: int) -> np.ndarray:
        height, width = self.shapes[0]
        span = self.tile << depth
        top, left = row * span, column * span
        columns, rows = min(span, width - left), min(span, height - top)
        # a plane that renders its own blocks (a warp, slimreg.warp.WarpedPlane) may, else its pipeline is cropped
        render_block = getattr(self.plane, "render_block", None)
        block = None if render_block is None else render_block(left, top, columns, rows)
        if block is not None:
            return block
        # reshape: pyvips drops axes of length 1 (a 1 x 1 one-band crop comes back 0-d)
        return self.plane().crop(left, top, columns, rows).numpy().reshape(rows, columns, self.samples)

    def _leaf(self, pool: ThreadPoolExecutor, depth: int, row: int, column: int, block: np.ndarray
              ) -> np.ndarray | None:
        """Emit the tiles of every level a rendered block covers; return its tile at level ``depth``."""
        level_data = block
        for level in range(depth + 1):
            if level >= len(self.shapes):
                return None
            tiles_across = 1 << (depth - level)
            first_row, first_column = row * tiles_across, column * tiles_across
            if level:
                level_data = _halve(level_data, self._extent(level, first_row * self.tile, 0, tiles_across),
                                    self._extent(level, first_column * self.tile, 1, tiles_across))
            for r in range(tiles_across):
                for c in range(tiles_across):
                    part = level_data[r * self.tile:(r + 1) * self.tile, c * self.tile:(c + 1) * self.tile]
                    self._emit(pool, level, first_row + r, first_column + c, part)
        return level_data

    def _node(self, pool: ThreadPoolExecutor, blocks: queue.Queue, depth: int, row: int, column: int
              ) -> np.ndarray | None:
        if depth <= self.leaf_depth:
            block = blocks.get()
            if isinstance(block, BaseException):
                raise block
            return self._leaf(pool, depth, row, column, block)
        has_level = depth < len(self.shapes)
        rows = self._extent(depth, row * self.tile, 0) if has_level else 0
        columns = self._extent(depth, column * self.tile, 1) if has_level else 0
        own = np.zeros((rows, columns, self.samples), self.dtype) if has_level else None
        for child in self._nodes(depth, row, column):
            child_data = self._node(pool, blocks, *child)
            if own is None or child_data is None or child_data.size == 0 or own.size == 0:
                continue
            quadrant_row = (child[1] - 2 * row) * (self.tile // 2)
            quadrant_column = (child[2] - 2 * column) * (self.tile // 2)
            out_rows = max(0, min(self.tile // 2, rows - quadrant_row))
            out_columns = max(0, min(self.tile // 2, columns - quadrant_column))
            if out_rows and out_columns:
                own[quadrant_row:quadrant_row + out_rows, quadrant_column:quadrant_column + out_columns] = \
                    _halve(child_data, out_rows, out_columns)
        if own is not None:
            self._emit(pool, depth, row, column, own)
        return own

    def run(self) -> None:
        """Render, halve and encode the whole plane into ``store``."""
        blocks: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()

        def render_ahead() -> None:
            try:
                for leaf in self._leaves(self.depth, 0, 0):
                    block = self._render(*leaf)
                    while not stop.is_set():
                        try:
                            blocks.put(block, timeout=0.2)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as error:  # handed to the walking thread, which raises it
                blocks.put(error)

        renderer = threading.Thread(target=render_ahead, name="slimreg-render", daemon=True)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="slimreg-encode") as pool:
            renderer.start()
            try:
                self._node(pool, blocks, self.depth, 0, 0)
                self._drain(0)
            finally:
                stop.set()
                while renderer.is_alive():
                    with contextlib.suppress(queue.Empty):
                        blocks.get(timeout=0.1)
                renderer.join()
                self._pending.clear()
                release = getattr(self.plane, "release", None)  # what the plane keeps to render its blocks
                if release is not None:
                    release()


def render_plane_tiles(plane: Callable[[], pyvips.Image], shapes: list[tuple[int, int]], tile: int, codec: TileCodec,
                       scratch: BinaryIO) -> TileStore:
    """Render the plane ``plane()`` builds (called once per block, unless the plane renders its own blocks) into a
    TileStore over ``scratch``, each level in its ``level_tile_sizes`` tiles.

    Raises if any tile of any level went missing (a walk that does not cover the grid is a bug, not data).
    """
    store = TileStore(scratch, shapes, tile)
    PyramidRenderer(plane, shapes, tile, codec, store, level_tiles=store.tile_sizes).run()
    missing = store.missing()
    if missing:
        raise RuntimeError(f"internal error: {len(missing)} pyramid tiles were not rendered, e.g. {missing[:3]}")
    return store


def scratch_path(target: Path) -> Path:
    return target.with_name(f"{target.name}.tiles")

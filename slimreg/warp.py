"""Full-resolution warping that streams: the output is rendered block by block, each from the input tiles it needs.

Where each output pixel samples the moving image (the index) is bilinear between the nodes of the transform's
displacement grid, so no full-size coordinate array ever exists in RAM. A block is rendered by OpenCV's ``remap``
from a region of the moving image assembled from its decoded tiles (``WarpedPlane.render_block``); the same
transform as one lazy libvips pipeline (``warp_plane``) serves the writer's checks, the blocks ``remap`` cannot
render, and the demo's generated images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pyvips
from threadpoolctl import threadpool_limits

from slimreg.io.read import TiffImage
from slimreg.io.retile import level0_planes, level0_tile
from slimreg.io.source_tiles import SourceTiles
from slimreg.io.vips import from_numpy
from slimreg.io.write import OmeMetadata, PlaneSequence, write_planes
from slimreg.options import WORK_TILE_SIZE
from slimreg.transform import MOVING_GLASS, Transform

# node spacing (px) of the index grid of a transform without a displacement field: any spacing is exact (bilinear
# interpolation reproduces an affine map), and a coarse one keeps the grid a few hundred nodes
AFFINE_INDEX_SPACING = 1024.0
# pixel types and interpolations OpenCV's remap renders as libvips' mapim does, but for remap placing each point to
# 1/32 px (docs/benchmarks.md, "The warp in blocks"); others take the libvips pipeline
REMAP_DTYPES = frozenset({"uint8", "uint16", "int16", "float32"})
REMAP_INTERPOLATIONS = {"bilinear": cv2.INTER_LINEAR}
# a block whose source region is more than this many times its own side (a moving image at more than twice the
# reference's resolution), beyond the few pixels of margin bilinear reads, is rendered by the libvips pipeline, which
# streams its input, rather than held whole; so is a plane whose decoded unit is more than a quarter of the cache
MAX_SOURCE_SCALE = 2
# nodes a block spans a side up to which its positions are interpolated by matrix products (``block_positions``):
# for a 1024 px block on one thread 3.9 / 8.8 / 35 ms at 12 / 48 / 130 nodes, gathering 6-16 ms whatever the count
MAX_PRODUCT_NODES = 64


def pull_index(transform: Transform, width: int, height: int) -> pyvips.Image:
    """A lazy 2-band float image: for each output pixel, the moving-image position it samples.

    ``transform.pull`` is the affine of (p + D(p)), with D bilinear between the displacement's nodes and clamped
    beyond them. An affine map of a bilinear field is bilinear between the same nodes, so the index is the node
    grid of pulled positions (``index_nodes``) enlarged by one bilinear resample: one libvips operation per output
    pixel instead of seven (coordinates, the field's own resample and the affine's arithmetic). On a 23280 x 15740 px
    frame the index alone went from 5.5 to 2.1 s (docs/benchmarks.md, "The warp's index").
    """
    return index_image(*index_nodes(transform, width, height), width, height)


def index_image(nodes: np.ndarray, spacing: float, width: int, height: int) -> pyvips.Image:
    """``pull_index`` from the node grid ``index_nodes`` made (in float32, libvips' float)."""
    # padded node k lies at ((k - 0.5) * spacing - 0.5) px (``index_nodes``): libvips' affine places output pixel X at
    # input position u with X = spacing * (u + idx) + odx
    return from_numpy(nodes.astype(np.float32)).affine(
        [spacing, 0.0, 0.0, spacing], interpolate=pyvips.Interpolate.new("bilinear"), idx=-0.5, idy=-0.5, odx=-0.5,
        ody=-0.5, oarea=[0, 0, width, height], extend="copy")


def index_nodes(transform: Transform, width: int, height: int) -> tuple[np.ndarray, float]:
    """The pulled position of every displacement node (``Transform`` convention: node (i, j) at
    ((j + 0.5) * s - 0.5, (i + 0.5) * s - 0.5) px), as a float64 (rows, columns, 2) grid, and its spacing s.

    The grid is padded by one node before the first and as many after the last as a ``width`` x ``height`` frame
    needs: a padded node carries its nearest node's displacement (the field is clamped beyond its nodes) at its own
    position, so interpolating between it and its neighbour is exact there too."""
    field = transform.displacement
    if field is None:
        spacing, dx, dy = AFFINE_INDEX_SPACING, np.zeros((1, 1)), np.zeros((1, 1))
    else:
        spacing, dx, dy = float(field.spacing), field.dx.astype(np.float64), field.dy.astype(np.float64)
    rows, columns = dx.shape
    # the last padded node must lie at or beyond the frame's last pixel: node k covers up to (k + 0.5) * s - 0.5
    after_columns = max(1, math.ceil((width - 0.5) / spacing + 0.5) - columns + 1)
    after_rows = max(1, math.ceil((height - 0.5) / spacing + 0.5) - rows + 1)
    padding = ((1, after_rows), (1, after_columns))
    dx, dy = np.pad(dx, padding, mode="edge"), np.pad(dy, padding, mode="edge")
    x = (np.arange(-1, columns + after_columns) + 0.5) * spacing - 0.5
    y = (np.arange(-1, rows + after_rows) + 0.5) * spacing - 0.5
    x, y = x[None, :] + dx, y[:, None] + dy
    a = transform.affine
    return np.dstack([a[0, 0] * x + a[0, 1] * y + a[0, 2], a[1, 0] * x + a[1, 1] * y + a[1, 2]]), spacing


def warp_plane(plane: pyvips.Image, transform: Transform, width: int, height: int, *,
               interpolation: str = "bilinear", background: float | list[float] = 0,
               index: pyvips.Image | None = None) -> pyvips.Image:
    """Lazily resample ``plane`` (moving image) into the ``width`` x ``height`` reference frame.

    ``index`` (from ``pull_index``) may be passed to share one index pipeline between planes.
    """
    index = index if index is not None else pull_index(transform, width, height)
    if not isinstance(background, list):
        background = [background] * plane.bands
    warped = plane.mapim(index, interpolate=pyvips.Interpolate.new(interpolation), extend="background",
                         background=background)
    return warped.cast(plane.format) if warped.format != plane.format else warped


def _node_axis(start: int, count: int, spacing: float, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """For pixels ``start .. start + count`` along one axis of the padded node grid (``index_nodes``: node k at
    ((k - 0.5) * spacing - 0.5) px): the node below each and the bilinear weight of the node above."""
    position = (np.arange(start, start + count) + 0.5) / spacing + 0.5
    lower = np.clip(np.floor(position).astype(np.int64), 0, nodes - 2)
    return lower, (position - lower).astype(np.float32)


def _weights(lower: np.ndarray, fraction: np.ndarray, nodes: int) -> np.ndarray:
    """The (pixels, nodes) matrix of ``_node_axis``' bilinear weights."""
    weights = np.zeros((len(lower), nodes), np.float32)
    weights[np.arange(len(lower)), lower] = 1.0 - fraction
    weights[np.arange(len(lower)), lower + 1] = fraction
    return weights


def block_positions(nodes: np.ndarray, spacing: float, left: int, top: int, columns: int,
                    rows: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The moving-image position each pixel of a block samples: x and y as float32 (rows, columns) maps relative to
    the returned integer origin, a node's of the block (the float64 node grid keeps whole-slide coordinates exact; a
    block's positions lie within a few thousand px of it, which float32 holds to a thousandth of a pixel).

    Bilinear between nodes, separable: by two matrix products where the block spans a few nodes a side (a cost per
    pixel and node), by blending two gathered neighbours along each axis where it spans many (a cost per pixel): the
    valis engine's fields have a node at every pixel VALIS processed, which made the products cost seconds a block."""
    row_lower, row_fraction = _node_axis(top, rows, spacing, nodes.shape[0])
    column_lower, column_fraction = _node_axis(left, columns, spacing, nodes.shape[1])
    first_row, first_column = int(row_lower.min()), int(column_lower.min())
    grid = nodes[first_row:int(row_lower.max()) + 2, first_column:int(column_lower.max()) + 2]
    origin_x, origin_y = (math.floor(value) for value in grid[0, 0])  # any nearby integer keeps float32 exact
    local = (grid - np.array([origin_x, origin_y], np.float64)).astype(np.float32)
    row_lower, column_lower = row_lower - first_row, column_lower - first_column
    if max(local.shape[:2]) <= MAX_PRODUCT_NODES:
        row_weights, column_weights = (_weights(row_lower, row_fraction, local.shape[0]),
                                       _weights(column_lower, column_fraction, local.shape[1]))
        map_x, map_y = (row_weights @ local[..., band] @ column_weights.T for band in (0, 1))
    else:
        map_x, map_y = (_gathered_bilinear(np.ascontiguousarray(local[..., band]), row_lower, row_fraction,
                                           column_lower, column_fraction) for band in (0, 1))
    return map_x, map_y, origin_x, origin_y


def _gathered_bilinear(grid: np.ndarray, row_lower: np.ndarray, row_fraction: np.ndarray, column_lower: np.ndarray,
                       column_fraction: np.ndarray) -> np.ndarray:
    """One band of ``grid`` interpolated along its rows, then its columns, each a blend of two gathered nodes."""
    along = grid[row_lower] * (1.0 - row_fraction)[:, None]
    along += grid[row_lower + 1] * row_fraction[:, None]
    result = along[:, column_lower] * (1.0 - column_fraction)
    result += along[:, column_lower + 1] * column_fraction
    return result


class WarpedPlane:
    """One moving plane pulled into the reference frame: called, the lazy libvips pipeline (``warp_plane``); asked
    for a block, the block itself, rendered by OpenCV's ``remap`` from the moving image's decoded tiles.

    The block path does what the pipeline does (the same bilinear index, the same background) at about half its
    CPU: libvips computed the index per output pixel and decoded each input tile once for every block that touched
    it (docs/benchmarks.md, "The warp in blocks")."""

    def __init__(self, read: Callable[[], pyvips.Image], moving: TiffImage, transform: Transform,
                 nodes: tuple[np.ndarray, float], width: int, height: int, *, interpolation: str,
                 background: float | list[float], index: pyvips.Image):
        info = moving.info
        self.read, self.transform, self.width, self.height = read, transform, width, height
        self.interpolation, self.background, self.index = interpolation, background, index
        self.nodes, self.spacing = nodes
        self.bands = 3 if info.is_rgb else 1
        self.source = SourceTiles(read, info.width, info.height, level0_tile(info), self.bands, np.dtype(info.dtype))
        self.remaps = (info.dtype in REMAP_DTYPES and interpolation in REMAP_INTERPOLATIONS
                       and 4 * self.source.unit_bytes <= self.source.budget)

    def __call__(self) -> pyvips.Image:
        return warp_plane(self.read(), self.transform, self.width, self.height, interpolation=self.interpolation,
                          background=self.background, index=self.index)

    def render_block(self, left: int, top: int, columns: int, rows: int) -> np.ndarray | None:
        """Output pixels [top:top + rows, left:left + columns] as (rows, columns, bands), or None where the block
        is the libvips pipeline's to render (a pixel type or interpolation remap lacks, a source region or tile
        too large)."""
        if not self.remaps:
            return None
        map_x, map_y, origin_x, origin_y = block_positions(self.nodes, self.spacing, left, top, columns, rows)
        # the region the block samples, and the one pixel beyond that bilinear interpolation reads
        x0, y0 = origin_x + math.floor(map_x.min()) - 1, origin_y + math.floor(map_y.min()) - 1
        x1, y1 = origin_x + math.ceil(map_x.max()) + 2, origin_y + math.ceil(map_y.max()) + 2
        if (x1 - x0) * (y1 - y0) > (MAX_SOURCE_SCALE * rows + 4) * (MAX_SOURCE_SCALE * columns + 4):
            return None
        background = self.background if isinstance(self.background, list) else [self.background] * self.bands
        left_in, top_in = max(0, x0), max(0, y0)
        right_in, bottom_in = min(self.source.width, x1), min(self.source.height, y1)
        if right_in <= left_in or bottom_in <= top_in:  # the block maps wholly beyond the moving image
            return np.broadcast_to(np.asarray(background, self.source.dtype), (rows, columns, self.bands)).copy()
        map_x -= left_in - origin_x
        map_y -= top_in - origin_y
        region = self.source.region(left_in, top_in, right_in, bottom_in)
        warped = cv2.remap(region, map_x, map_y, REMAP_INTERPOLATIONS[self.interpolation],
                           borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(background))
        return warped.reshape(rows, columns, self.bands)

    def release(self) -> None:
        """Drop the decoded tiles once the plane is written."""
        self.source.clear()


def warp_file(moving: TiffImage, transform: Transform, out_path: str | Path, *, reference_shape: tuple[int, int],
              pixel_size_um: tuple[float, float] | None, compression: str = "deflate", tile_size: int = WORK_TILE_SIZE,
              interpolation: str = "bilinear", frames: range | None = None) -> Path:
    """Warp every channel (and frame) of ``moving`` into the reference frame and write an OME-TIFF.

    Each plane is handed to the writer as a ``WarpedPlane``, not an image: it renders each block from input tiles
    decoded one ``tiffload`` at a time (a fresh one each, because one long-lived random-access ``tiffload`` read
    through ``mapim`` grew by ~70 MB per pass over a 10000 px RGB image here, which would break the flat-memory
    promise on large slides) and kept in a cache of fixed size. The node grid is shared by every plane. A moving
    image stored in strips is read from a tiled copy of each page (``slimreg.io.retile``).
    """
    info = moving.info
    height, width = reference_shape
    frames = frames if frames is not None else range(info.frames)
    grid = index_nodes(transform, width, height)
    index = index_image(*grid, width, height)
    # white beyond an RGB section, its glass beyond a grey brightfield scan (registration measured it), 0 beyond
    # fluorescence
    white = float(np.iinfo(info.dtype).max) if np.dtype(info.dtype).kind in "ui" else 255.0
    background: float | list[float] = [white] * 3 if info.is_rgb else float(transform.metadata.get(MOVING_GLASS) or 0.0)
    if np.dtype(info.dtype).kind in "ui" and not isinstance(background, list):
        background = float(round(background))  # one value on every path: remap and libvips round differently

    channels: list[int | None] = [None] if info.is_rgb else list(range(info.channels))
    size_t = len(frames) if info.size_z == 1 else len(frames) // info.size_z
    size_z = info.size_z if info.size_z > 1 else 1
    meta = OmeMetadata(width=width, height=height, dtype=info.dtype, channel_names=info.channel_names,
                       pixel_size_um=pixel_size_um, size_z=size_z, size_t=size_t, is_rgb=info.is_rgb,
                       name=Path(out_path).name.removesuffix(".ome.tif"))
    with level0_planes(moving, Path(out_path).parent) as read:

        def recipe(channel: int | None, frame: int) -> WarpedPlane:
            return WarpedPlane(lambda: read(channel, frame), moving, transform, grid, width, height,
                               interpolation=interpolation, background=background, index=index)

        # made as the writer reaches them (channels fastest): each holds a cache while it is written
        planes = PlaneSequence(len(frames) * len(channels),
                               lambda plane: recipe(channels[plane % len(channels)], frames[plane // len(channels)]))
        # the index's products are a few nodes deep: BLAS' threads would only spin beside the tile encoders
        with threadpool_limits(limits=1, user_api="blas"):
            return write_planes(planes, out_path, meta, compression=compression, tile_size=tile_size)

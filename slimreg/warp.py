"""Full-resolution warping that streams: one lazy libvips pipeline from input tiles to output tiles.

The index image (where each output pixel samples the moving image) is computed lazily from pixel
coordinates, the affine and the upsampled displacement field, so affine and non-rigid parts cost one
interpolation and no full-size coordinate array ever exists in RAM.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyvips

from slimreg.io.read import TiffImage
from slimreg.io.retile import level0_planes
from slimreg.io.vips import from_numpy
from slimreg.io.write import OmeMetadata, write_planes
from slimreg.options import WORK_TILE_SIZE
from slimreg.transform import MOVING_GLASS, Transform

# node spacing (px) of the index grid of a transform without a displacement field: any spacing is exact (bilinear
# interpolation reproduces an affine map), and a coarse one keeps the grid a few hundred nodes
AFFINE_INDEX_SPACING = 1024.0


def pull_index(transform: Transform, width: int, height: int) -> pyvips.Image:
    """A lazy 2-band float image: for each output pixel, the moving-image position it samples.

    ``transform.pull`` is the affine of (p + D(p)), with D bilinear between the displacement's nodes and clamped
    beyond them. An affine map of a bilinear field is bilinear between the same nodes, so the index is the node
    grid of pulled positions (``index_nodes``) enlarged by one bilinear resample: one libvips operation per output
    pixel instead of seven (coordinates, the field's own resample and the affine's arithmetic). On a 23280 x 15740 px
    frame the index alone went from 5.5 to 2.1 s (docs/benchmarks.md, "The warp's index").
    """
    nodes, spacing = index_nodes(transform, width, height)
    # padded node k lies at ((k - 0.5) * spacing - 0.5) px (``index_nodes``): libvips' affine places output pixel X at
    # input position u with X = spacing * (u + idx) + odx
    return from_numpy(nodes).affine([spacing, 0.0, 0.0, spacing], interpolate=pyvips.Interpolate.new("bilinear"),
                                    idx=-0.5, idy=-0.5, odx=-0.5, ody=-0.5, oarea=[0, 0, width, height],
                                    extend="copy")


def index_nodes(transform: Transform, width: int, height: int) -> tuple[np.ndarray, float]:
    """The pulled position of every displacement node (``Transform`` convention: node (i, j) at
    ((j + 0.5) * s - 0.5, (i + 0.5) * s - 0.5) px), as a float32 (rows, columns, 2) grid, and its spacing s.

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
    return np.dstack([a[0, 0] * x + a[0, 1] * y + a[0, 2], a[1, 0] * x + a[1, 1] * y + a[1, 2]]).astype(np.float32), \
        spacing


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


def warp_file(moving: TiffImage, transform: Transform, out_path: str | Path, *, reference_shape: tuple[int, int],
              pixel_size_um: tuple[float, float] | None, compression: str = "deflate", tile_size: int = WORK_TILE_SIZE,
              interpolation: str = "bilinear", frames: range | None = None) -> Path:
    """Warp every channel (and frame) of ``moving`` into the reference frame and write an OME-TIFF.

    Each plane is handed to the writer as a recipe, not an image: the writer rebuilds the pipeline (a fresh
    ``tiffload``) for every block it renders, because one long-lived random-access ``tiffload`` read through
    ``mapim`` grew by ~70 MB per pass over a 10000 px RGB image here, which would break the flat-memory
    promise on large slides. The index pipeline holds no file and is shared. A moving image stored in strips is
    read from a tiled copy of each page (``slimreg.io.retile``).
    """
    info = moving.info
    height, width = reference_shape
    frames = frames if frames is not None else range(info.frames)
    index = pull_index(transform, width, height)
    # white beyond an RGB section, its glass beyond a grey brightfield scan (registration measured it), 0 beyond
    # fluorescence
    background: float | list[float] = [255.0] * 3 if info.is_rgb else float(transform.metadata.get(MOVING_GLASS) or 0.0)

    channels: list[int | None] = [None] if info.is_rgb else list(range(info.channels))
    size_t = len(frames) if info.size_z == 1 else len(frames) // info.size_z
    size_z = info.size_z if info.size_z > 1 else 1
    meta = OmeMetadata(width=width, height=height, dtype=info.dtype, channel_names=info.channel_names,
                       pixel_size_um=pixel_size_um, size_z=size_z, size_t=size_t, is_rgb=info.is_rgb,
                       name=Path(out_path).name.removesuffix(".ome.tif"))
    with level0_planes(moving, Path(out_path).parent) as read:

        def recipe(channel: int | None, frame: int) -> Callable[[], pyvips.Image]:
            return lambda: warp_plane(read(channel, frame), transform, width, height,
                                      interpolation=interpolation, background=background, index=index)

        planes = [recipe(channel, frame) for frame in frames for channel in channels]
        return write_planes(planes, out_path, meta, compression=compression, tile_size=tile_size)

"""Full-resolution warping that streams: one lazy libvips pipeline from input tiles to output tiles.

The index image (where each output pixel samples the moving image) is computed lazily from pixel
coordinates, the affine and the upsampled displacement field, so affine and non-rigid parts cost one
interpolation and no full-size coordinate array ever exists in RAM.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyvips

from slimreg.io.read import TiffImage
from slimreg.io.retile import level0_planes
from slimreg.io.vips import from_numpy
from slimreg.io.write import OmeMetadata, write_planes
from slimreg.options import WORK_TILE_SIZE
from slimreg.transform import Transform


def pull_index(transform: Transform, width: int, height: int) -> pyvips.Image:
    """A lazy 2-band float image: for each output pixel, the moving-image position it samples."""
    coords = pyvips.Image.xyz(width, height).cast("float")
    if transform.displacement is not None:
        field = transform.displacement
        stacked = np.dstack([field.dx, field.dy]).astype(np.float32)
        grid_index = (coords + 0.5) / field.spacing - 0.5
        offsets = from_numpy(stacked).mapim(grid_index, interpolate=pyvips.Interpolate.new("bilinear"),
                                            extend="copy")
        coords = coords + offsets
    a = transform.affine
    x = coords[0] * float(a[0, 0]) + coords[1] * float(a[0, 1]) + float(a[0, 2])
    y = coords[0] * float(a[1, 0]) + coords[1] * float(a[1, 1]) + float(a[1, 2])
    return x.bandjoin(y)


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
    background: float | list[float] = [255.0] * 3 if info.is_rgb else 0.0

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

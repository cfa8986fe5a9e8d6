"""One image already in the reference frame rewritten, streamed, as the images users keep are written: a tiled
OME-TIFF with a pyramid down to an overview, or an OME-Zarr, named after its file.

Used for the reference itself (so that ``registered/<sample>/`` holds the whole aligned series in one tiling,
compression and format, whatever the reference's own layout: strips, no pyramid, another compression) and, with
``--format ome-zarr``, for each OME-TIFF that REGISTER and the merges wrote. Planes are read lazily, tile by tile
(``TiffImage.plane``), so memory is that of the writer, whatever the image's size; a file stored in strips is
read from a tiled copy of each page (``slimreg.io.retile``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyvips

from slimreg.io.ngff import write_planes_zarr
from slimreg.io.read import TiffImage
from slimreg.io.retile import level0_planes
from slimreg.io.write import OmeMetadata, write_planes

SUFFIXES = (".ome.tif", ".ome.tiff", ".ome.zarr", ".tif", ".tiff", ".zarr")


def image_name(path: Path) -> str:
    """The OME Image Name of a written file: its name without the image suffix."""
    for suffix in SUFFIXES:
        if path.name.endswith(suffix):
            return path.name.removesuffix(suffix)
    return path.stem


def rewrite_image(source: str | Path, out_path: str | Path, *, image_format: str, tile_size: int,
                  compression: str) -> Path:
    """Write every channel and frame of ``source`` to ``out_path`` as ``image_format`` (ome-tiff or ome-zarr)."""
    image = TiffImage(source)
    info = image.info
    out_path = Path(out_path)

    channels: list[int | None] = [None] if info.is_rgb else list(range(info.channels))
    size_z = info.size_z if info.size_z > 1 else 1
    meta = OmeMetadata(width=info.width, height=info.height, dtype=info.dtype, channel_names=info.channel_names,
                       pixel_size_um=info.pixel_size_um, size_z=size_z, size_t=info.frames // size_z,
                       is_rgb=info.is_rgb, name=image_name(out_path))
    with level0_planes(image, out_path.parent) as read:

        def recipe(channel: int | None, frame: int) -> Callable[[], pyvips.Image]:
            return lambda: read(channel, frame)  # a fresh tiffload per block (warp_file: per tile unit)

        planes = [recipe(channel, frame) for frame in range(info.frames) for channel in channels]
        if image_format == "ome-zarr":
            return write_planes_zarr(planes, out_path, meta, compression=compression, tile_size=tile_size)
        return write_planes(planes, out_path, meta, compression=compression, tile_size=tile_size)

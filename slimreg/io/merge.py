"""Several images of one frame written as one multi-channel OME-TIFF, streamed plane by plane and tile by tile."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyvips

from slimreg.errors import InputError
from slimreg.io.read import TiffImage
from slimreg.io.retile import level0_planes
from slimreg.io.write import OmeMetadata, write_planes


def merge_channels(paths: list[Path], planes: list[tuple[int, int, str]], out_path: Path, *, tile_size: int,
                   compression: str) -> Path:
    """Write ``planes`` ([input index, channel, name], in order) of the images at ``paths`` as one OME-TIFF.

    The images must share one frame (registered onto one reference) and hold single-frame fluorescence channels;
    mixed pixel types are written in the type that holds them all (uint8 and uint16 rounds: uint16).
    """
    images = [TiffImage(path) for path in paths]
    first = images[0].info
    for image in images:
        info = image.info
        if (info.width, info.height) != (first.width, first.height):
            raise InputError(f"is {info.width} x {info.height} px, not {first.width} x {first.height} like "
                             f"{paths[0].name}: only images registered onto one reference can be merged.", info.path)
        if info.is_rgb or info.frames > 1:
            raise InputError("is a brightfield (RGB) image or a multi-frame stack: only single-frame "
                             "fluorescence rounds are merged into one multi-channel image.", info.path)
    dtype = np.result_type(*[np.dtype(image.info.dtype) for image in images]).name

    meta = OmeMetadata(first.width, first.height, dtype, tuple(name for _, _, name in planes),
                       pixel_size_um=first.pixel_size_um, name=out_path.name.removesuffix(".ome.tif"))
    with contextlib.ExitStack() as stack:
        # the reference round is the user's own file, perhaps in strips (slimreg.io.retile)
        readers = [stack.enter_context(level0_planes(image, out_path.parent)) for image in images]

        def plane(index: int, channel: int) -> Callable[[], pyvips.Image]:
            return lambda: readers[index](channel, 0)

        return write_planes([plane(index, channel) for index, channel, _ in planes], out_path, meta,
                            compression=compression, tile_size=tile_size)

"""Streamed writing of tiled, pyramidal BigTIFF OME-TIFF with memory set by the tile size.

Each plane (channel, Z or T) is rendered from its lazy libvips pipeline in square blocks, halved into its
pyramid and encoded tile by tile (``slimreg.io.tiles``); tifffile then lays the tiles out as one IFD per
plane with the reductions as SubIFDs, the layout OME-TIFF readers (Bio-Formats, QuPath, libvips) expect.
libvips' own pyramidal ``tiffsave`` was used before: its memory grew with the image width (strips of tile
rows across every level) and with the number of planes joined into one save. The file is written under a
temporary name and renamed when complete.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np
import pyvips
import tifffile

from slimreg.atomic import atomic_output
from slimreg.errors import ParameterError
from slimreg.io.tiles import (
    JPEG_SUBSAMPLING,
    TileCodec,
    TileStore,
    pyramid_shapes,
    render_plane_tiles,
    scratch_path,
)
from slimreg.io.vips import from_numpy, vips_format
from slimreg.memory import PlaneReleases
from slimreg.options import COMPRESSIONS, WORK_TILE_SIZE

OME_TYPES = {"uint8": "uint8", "int8": "int8", "uint16": "uint16", "int16": "int16", "uint32": "uint32",
             "int32": "int32", "float32": "float", "float64": "double"}


@dataclass(frozen=True)
class OmeMetadata:
    """What the OME-XML header of a written image records."""

    width: int
    height: int
    dtype: str
    channel_names: tuple[str, ...]
    pixel_size_um: tuple[float, float] | None = None
    size_z: int = 1
    size_t: int = 1
    is_rgb: bool = False
    name: str = "image"  # OME Image Name: what viewers (QuPath, napari, OMERO) list the image as

    @property
    def planes_expected(self) -> int:
        return (1 if self.is_rgb else len(self.channel_names)) * self.size_z * self.size_t

    def to_xml(self) -> str:
        """OME-XML (2016-06 schema) for planes stored in XYCZT order, one plane per IFD."""
        size_c = 3 if self.is_rgb else len(self.channel_names)
        physical = ""
        if self.pixel_size_um:
            physical = (f' PhysicalSizeX="{self.pixel_size_um[0]:.10g}" PhysicalSizeXUnit="µm"'
                        f' PhysicalSizeY="{self.pixel_size_um[1]:.10g}" PhysicalSizeYUnit="µm"')
        if self.is_rgb:
            channels = '<Channel ID="Channel:0:0" Name="RGB" SamplesPerPixel="3"/>'
        else:
            channels = "".join(
                f'<Channel ID="Channel:0:{i}" Name="{html.escape(name, quote=True)}" SamplesPerPixel="1"/>'
                for i, name in enumerate(self.channel_names))
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" Creator="slimreg">'
            f'<Image ID="Image:0" Name="{html.escape(self.name, quote=True)}"><Pixels ID="Pixels:0" '
            'DimensionOrder="XYCZT" '
            f'Type="{OME_TYPES[self.dtype]}" SizeX="{self.width}" SizeY="{self.height}" SizeC="{size_c}" '
            f'SizeZ="{self.size_z}" SizeT="{self.size_t}" Interleaved="{str(self.is_rgb).lower()}"'
            f'{physical}>{channels}<TiffData IFD="0" PlaneCount="{self.planes_expected}"/>'
            '</Pixels></Image></OME>'
        )


@functools.cache
def compression_supported(compression: str) -> bool:
    """Whether this libvips build can write TIFF with ``compression`` (pyvips-binary lacks zstd)."""
    if compression == "none":
        return True
    probe_image = pyvips.Image.black(16, 16)
    try:
        probe_image.tiffsave_buffer(compression=compression, tile=True, tile_width=16, tile_height=16)
    except pyvips.Error:
        return False
    return True


def require_writable_compression(compression: str) -> None:
    """Refuse a --compression this libvips cannot write (pyvips-binary has no zstd) when the options are read,
    before any work: otherwise it is found when the first registered image is written, minutes into a run."""
    if compression not in COMPRESSIONS:
        raise ParameterError(f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}.")
    if not compression_supported(compression):
        raise ParameterError(f"--compression {compression}: this libvips build (libvips "
                             f"{pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}) cannot write "
                             f"{compression}-compressed TIFF.", fix="use --compression deflate (the default) or lzw.")


PlaneSource = pyvips.Image | Callable[[], pyvips.Image]


def write_planes(planes: Sequence[PlaneSource], path: str | Path, meta: OmeMetadata, *,
                 compression: str = "deflate", tile_size: int = WORK_TILE_SIZE, pyramid: bool = True,
                 quality: int = 90) -> Path:
    """Write lazy planes (channels fastest, then Z, then T) as one pyramidal OME-TIFF; return ``path``.

    Each plane must be ``meta.width`` x ``meta.height`` with one band (three for RGB) of ``meta.dtype``. A plane
    may be given as a function that builds its pipeline: the writer then calls it afresh for every block it
    renders, which keeps file-reading pipelines from accumulating buffers over a large image; one that also
    renders its own blocks (``render_block``, as ``slimreg.warp.WarpedPlane`` does) is asked for them instead.
    """
    path = Path(path)
    require_writable_compression(compression)
    if compression == "jpeg" and not (meta.is_rgb and meta.dtype == "uint8"):
        raise ParameterError("jpeg compression is only for 8-bit RGB images (it is lossy).",
                             fix="use deflate or zstd for fluorescence images.")
    sources, tile_size = checked_planes(planes, meta, tile_size)
    codec = TileCodec(compression, predictor=np.dtype(meta.dtype).kind in "ui" and compression in ("deflate", "lzw"),
                      quality=quality)
    shapes = pyramid_shapes(meta.height, meta.width, tile_size, pyramid)
    resolution = (1e4 / meta.pixel_size_um[0], 1e4 / meta.pixel_size_um[1]) if meta.pixel_size_um else None
    with atomic_output(path) as tmp, open(scratch_path(tmp), "w+b") as scratch:
        try:
            plane_bytes = meta.width * meta.height * (3 if meta.is_rgb else 1) * np.dtype(meta.dtype).itemsize
            releases = PlaneReleases(plane_bytes)
            with tifffile.TiffWriter(tmp, bigtiff=True, ome=False) as writer:
                for index, source in enumerate(sources):
                    store = render_plane_tiles(source, shapes, tile_size, codec, scratch)
                    _append_pyramid(writer, store, shapes, tile_size, codec, meta,
                                    description=meta.to_xml().encode() if index == 0 else None,
                                    resolution=resolution)
                    releases.plane_written()
        finally:
            scratch_path(tmp).unlink(missing_ok=True)
    return path


class PlaneSequence(Sequence):
    """Planes made when the writer asks for them, from their index: a recording of 100 000 frames given as a list
    would hold 100 000 closures (about 300 bytes each) for the whole write."""

    def __init__(self, count: int, plane_at: Callable[[int], Callable[[], pyvips.Image]]):
        self.count, self.plane_at = count, plane_at

    def __len__(self) -> int:
        return self.count

    @overload
    def __getitem__(self, index: int) -> Callable[[], pyvips.Image]: ...

    @overload
    def __getitem__(self, index: slice) -> list[Callable[[], pyvips.Image]]: ...

    def __getitem__(self, index: int | slice) -> Callable[[], pyvips.Image] | list[Callable[[], pyvips.Image]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.count))]
        if not 0 <= index < self.count:
            raise IndexError(index)
        return self.plane_at(index)


def checked_planes(planes: Sequence[PlaneSource], meta: OmeMetadata,
                   tile_size: int) -> tuple[Sequence[Callable[[], pyvips.Image]], int]:
    """Each plane's recipe, checked against ``meta`` whenever it is built (the first plane at once, so that a
    mismatch is found before any work), and the tile size clamped to the image (readers, libvips among them, will
    not take tiles much larger than the image). A plane is not built ahead of its turn: a recording's planes are
    made as they are corrected, and the writers write under a temporary name, so a bad plane late in the sequence
    leaves nothing behind. Shared by the OME-TIFF and OME-Zarr writers."""
    if tile_size < 16 or tile_size % 16:
        raise ParameterError(f"tile size must be a positive multiple of 16, got {tile_size}.")
    if len(planes) != meta.planes_expected:
        raise ParameterError(f"{len(planes)} planes given but the metadata describes {meta.planes_expected}.")
    target_format = vips_format(meta.dtype)
    sources = PlaneSequence(len(planes), lambda index: plane_recipe(planes[index], target_format, meta, index))
    if len(sources):
        sources[0]()
    return sources, min(tile_size, max(16, -(-max(meta.width, meta.height) // 16) * 16))


def plane_recipe(plane: PlaneSource, target_format: str, meta: OmeMetadata, index: int) -> CheckedPlane:
    """The plane's pipeline builder, checked against ``meta`` and cast to the file's band format."""
    return CheckedPlane(plane, target_format, meta, index)


class CheckedPlane:
    """Called, a plane's pipeline, checked against the file's metadata and cast to its band format; asked for a
    block, the plane's own rendering of it where it has one (``slimreg.warp.WarpedPlane``) in the file's pixel type,
    else None (the renderer then crops the pipeline)."""

    def __init__(self, plane: PlaneSource, target_format: str, meta: OmeMetadata, index: int):
        self.plane, self.target_format, self.meta, self.index = plane, target_format, meta, index
        self.bands = 3 if meta.is_rgb else 1

    def __call__(self) -> pyvips.Image:
        plane, meta = self.plane, self.meta
        image = plane if isinstance(plane, pyvips.Image) else plane()
        if (image.width, image.height) != (meta.width, meta.height) or image.bands != self.bands:
            raise ParameterError(f"plane {self.index} is {image.width}x{image.height}x{image.bands}, expected "
                                 f"{meta.width}x{meta.height}x{self.bands}.")
        return image.cast(self.target_format) if image.format != self.target_format else image

    def render_block(self, left: int, top: int, columns: int, rows: int) -> np.ndarray | None:
        render = getattr(self.plane, "render_block", None)
        block = None if render is None else render(left, top, columns, rows)
        if block is None or block.dtype != np.dtype(self.meta.dtype) or block.shape != (rows, columns, self.bands):
            return None
        return block

    def release(self) -> None:
        release = getattr(self.plane, "release", None)
        if release is not None:
            release()


def _append_pyramid(writer: tifffile.TiffWriter, store: TileStore, shapes: list[tuple[int, int]], tile: int,
                    codec: TileCodec, meta: OmeMetadata, *, description: bytes | None,
                    resolution: tuple[float, float] | None) -> None:
    """Write one plane's levels (level 0, then its reductions as SubIFDs) from the tile store, in TIFF order."""
    samples = 3 if meta.is_rgb else 1
    for level, ((height, width), level_tile) in enumerate(zip(shapes, store.tile_sizes, strict=True)):
        writer.write(store.level_tiles(level), shape=(height, width, samples) if meta.is_rgb else (height, width),
                     dtype=meta.dtype, tile=(level_tile, level_tile), compression=codec.tag,
                     predictor=2 if codec.predictor else None,
                     photometric="rgb" if meta.is_rgb else "minisblack",
                     subsampling=JPEG_SUBSAMPLING if codec.compression == "jpeg" else None,
                     subifds=len(shapes) - 1 if level == 0 and len(shapes) > 1 else None,
                     subfiletype=1 if level else 0, description=description if level == 0 else None,
                     metadata=None, resolution=resolution if level == 0 else None,
                     resolutionunit="CENTIMETER" if resolution and level == 0 else None, software=False)


def write_array(array: np.ndarray, path: str | Path, *, channel_names: Sequence[str] | None = None,
                pixel_size_um: tuple[float, float] | None = None, is_rgb: bool = False, name: str = "image",
                **options) -> Path:
    """Write a small in-memory array (C x Y x X, Y x X, or Y x X x 3 for RGB): for tests and demo data."""
    array = np.asarray(array)
    if is_rgb:
        planes = [from_numpy(array)]
        names = tuple(channel_names or ("RGB",))
    else:
        stack = array[None] if array.ndim == 2 else array
        planes = [from_numpy(channel) for channel in stack]
        names = tuple(channel_names or [f"C{i}" for i in range(len(planes))])
    meta = OmeMetadata(width=array.shape[1] if (is_rgb or array.ndim == 2) else array.shape[2],
                       height=array.shape[0] if (is_rgb or array.ndim == 2) else array.shape[1],
                       dtype=array.dtype.name, channel_names=names, pixel_size_um=pixel_size_um, is_rgb=is_rgb,
                       name=name)
    return write_planes(planes, path, meta, **options)

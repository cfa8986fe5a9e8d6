"""Streamed writing of tiled, pyramidal BigTIFF OME-TIFF through libvips.

Planes are joined into one tall lazy image with ``page-height`` set, which libvips writes page by page,
tile row by tile row, building each page's pyramid as SubIFDs on the way: memory stays at a few tile rows
per level whatever the image size. The file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyvips
import tifffile

from slimreg.atomic import atomic_output
from slimreg.errors import ParameterError
from slimreg.io.vips import from_numpy, vips_format

COMPRESSIONS = ("deflate", "zstd", "lzw", "jpeg", "none")
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
            '<Image ID="Image:0" Name="image"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" '
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


def write_planes(planes: Sequence[pyvips.Image], path: str | Path, meta: OmeMetadata, *,
                 compression: str = "deflate", tile_size: int = 512, pyramid: bool = True,
                 quality: int = 90) -> Path:
    """Write lazy planes (channels fastest, then Z, then T) as one pyramidal OME-TIFF; return ``path``.

    Each plane must be ``meta.width`` x ``meta.height`` with one band (three for RGB) of ``meta.dtype``.
    """
    path = Path(path)
    if compression not in COMPRESSIONS:
        raise ParameterError(f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}.")
    if not compression_supported(compression):
        raise ParameterError(f"this libvips build cannot write {compression}-compressed TIFF.",
                             fix="use --compression deflate (the default) or lzw.")
    if compression == "jpeg" and not (meta.is_rgb and meta.dtype == "uint8"):
        raise ParameterError("jpeg compression is only for 8-bit RGB images (it is lossy).",
                             fix="use deflate or zstd for fluorescence images.")
    if tile_size < 16 or tile_size % 16:
        raise ParameterError(f"tile size must be a positive multiple of 16, got {tile_size}.")
    if len(planes) != meta.planes_expected:
        raise ParameterError(f"{len(planes)} planes given but the metadata describes {meta.planes_expected}.")
    target_format = vips_format(meta.dtype)
    bands = 3 if meta.is_rgb else 1
    prepared = []
    for plane in planes:
        if (plane.width, plane.height) != (meta.width, meta.height) or plane.bands != bands:
            raise ParameterError(f"plane is {plane.width}x{plane.height}x{plane.bands}, expected "
                                 f"{meta.width}x{meta.height}x{bands}.")
        if plane.format != target_format:
            plane = plane.cast(target_format)
        plane = plane.copy(interpretation="srgb") if meta.is_rgb else plane.copy()
        if "image-description" in plane.get_fields():
            plane.remove("image-description")  # a loaded source's OME-XML must not travel into outputs
        prepared.append(plane)
    # libvips will not read back tiles much larger than the image: clamp to the image, in multiples of 16
    tile_size = min(tile_size, max(16, -(-max(meta.width, meta.height) // 16) * 16))
    options = {"tile": True, "tile_width": tile_size, "tile_height": tile_size, "bigtiff": True,
               "pyramid": pyramid, "subifd": pyramid, "compression": compression}
    if meta.pixel_size_um:
        options.update(xres=1000.0 / meta.pixel_size_um[0], yres=1000.0 / meta.pixel_size_um[1], resunit="cm")
    if compression == "jpeg":
        options["Q"] = quality
    elif compression in ("deflate", "lzw", "zstd"):
        # horizontal differencing helps integers; libvips would also apply it to floats, which TIFF readers
        # (and tifffile, which assembles multi-plane files) reject
        options["predictor"] = "horizontal" if np.dtype(meta.dtype).kind in "ui" else "none"
    with atomic_output(path) as tmp:
        if len(prepared) == 1 or compression == "jpeg":
            joined = prepared[0] if len(prepared) == 1 else pyvips.Image.arrayjoin(prepared, across=1)
            joined = joined.copy()
            joined.set_type(pyvips.GValue.gint_type, "page-height", meta.height)
            joined.set_type(pyvips.GValue.gstr_type, "image-description", meta.to_xml())
            joined.tiffsave(str(tmp), **options)
        else:
            _write_plane_by_plane(prepared, tmp, meta, options)
    return path


def _write_plane_by_plane(planes: Sequence[pyvips.Image], target: Path, meta: OmeMetadata,
                          options: dict[str, object]) -> None:
    """One libvips pipeline per plane, its compressed tiles then copied into ``target`` without re-encoding.

    libvips keeps buffers for every plane joined into one ``tiffsave`` (measured: +21 MB per extra channel at
    4096 px width, growing with width), so a 40-channel slide would need gigabytes. Writing each plane on its
    own to a scratch pyramid and appending its tiles with tifffile keeps the cost at one plane's.
    """
    from slimreg.memory import release_memory

    resolution = None
    if meta.pixel_size_um:
        resolution = (1e4 / meta.pixel_size_um[0], 1e4 / meta.pixel_size_um[1])
    with tifffile.TiffWriter(target, bigtiff=True, ome=False) as writer:
        for index, plane in enumerate(planes):
            scratch = target.with_name(f"{target.name}.plane{index}.tif")
            try:
                plane.tiffsave(str(scratch), **options)
                release_memory()
                _append_pyramid(writer, scratch, meta.to_xml().encode() if index == 0 else None, resolution)
            finally:
                scratch.unlink(missing_ok=True)


def _append_pyramid(writer: tifffile.TiffWriter, source_path: Path, description: bytes | None,
                    resolution: tuple[float, float] | None) -> None:
    with tifffile.TiffFile(source_path) as source:
        levels = [level.keyframe for level in source.series[0].levels]
        handle = source.filehandle

        def raw_tiles(page: tifffile.TiffPage) -> Iterator[bytes]:
            for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
                handle.seek(offset)
                yield handle.read(count)

        for number, page in enumerate(levels):
            writer.write(raw_tiles(page), shape=page.shape, dtype=page.dtype,
                         tile=(page.tilelength, page.tilewidth), compression=page.compression,
                         predictor=page.predictor, photometric=page.photometric,
                         subifds=len(levels) - 1 if number == 0 and len(levels) > 1 else None,
                         subfiletype=1 if number else 0, description=description if number == 0 else None,
                         metadata=None, resolution=resolution if number == 0 else None,
                         resolutionunit="CENTIMETER" if resolution and number == 0 else None, software=False)


def write_array(array: np.ndarray, path: str | Path, *, channel_names: Sequence[str] | None = None,
                pixel_size_um: tuple[float, float] | None = None, is_rgb: bool = False, **options) -> Path:
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
                       dtype=array.dtype.name, channel_names=names, pixel_size_um=pixel_size_um, is_rgb=is_rgb)
    return write_planes(planes, path, meta, **options)

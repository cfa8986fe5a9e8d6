"""Read what an image is from its TIFF headers alone: never pixel data.

Everything downstream (pre-flight estimates, planning, reading) is driven by :class:`ImageInfo`, so probing
must be cheap on a 30000 x 25000 slide: tifffile parses the IFDs and OME-XML, and we check that the last
tile or strip of each level lies inside the file (a cheap truncation test).
"""

from __future__ import annotations

import math
import os
import shlex
import struct
import sys
import warnings
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from slimreg.errors import InputError
from slimreg.io.vips import SUPPORTED_DTYPES

# libvips 8.18 cannot decode 64-bit float TIFFs, not even its own ("tiff2vips: samples out of range")
READABLE_DTYPES = tuple(d for d in SUPPORTED_DTYPES if d != "float64")

# A generic page axis (tifffile 'I'/'Q') of at most this many pages is read as channels, else as frames.
MAX_GENERIC_PAGES_AS_CHANNELS = 8

UNIT_TO_MICROMETRE = {
    "m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0,
    "nm": 1e-3, "Å": 1e-4, "pm": 1e-6,
}


# A pixel size is the microscope's only if it is a finite number above zero and below a millimetre per pixel
# ("1 pixel per centimetre", the placeholder ImageJ and others write, reads as 10000 um/px; libvips' default
# 1 pixel per millimetre as 1000 um/px).
MAX_PIXEL_SIZE_UM = 1000.0
# Resolutions in pixels per inch up to this are a screen's or a printer's (72, 96, 150, 300 dpi: a TIFF converted
# from a JPEG carries 72 dpi, which reads as 353 um/px), never a microscope's (0.5 um/px is 50800 dpi).
MAX_SCREEN_DPI = 1200.0
_warned: set[tuple[str, str]] = set()  # (file, reason): each unusable pixel size is told once per process


@dataclass(frozen=True)
class ImageInfo:
    """What slimreg knows about an image without reading its pixels.

    Sizes are of level 0. ``channels`` counts registration-selectable channels: for RGB(A) brightfield
    it is the number of samples. ``frames`` is the product of T and Z (a multi-frame stack).
    """

    path: str
    width: int
    height: int
    channels: int
    frames: int
    size_t: int
    size_z: int
    dtype: str
    axes: str
    channel_names: tuple[str, ...]
    pixel_size_um: tuple[float, float] | None
    levels: tuple[tuple[int, int], ...]  # (height, width) per pyramid level, level 0 first
    tile: tuple[int, int] | None  # (height, width); None for stripped files
    is_rgb: bool
    is_ome: bool
    is_bigtiff: bool
    compression: str
    file_bytes: int
    page_axes: str = ""  # axes of the series that index pages (subset of "CTZ")
    channels_in_samples: bool = False  # channels interleaved in one page (RGB or multi-sample)
    subifd_pyramid: bool = False
    # IFD index of every page, per level (for a SubIFD pyramid only level 0: levels hang below it)
    level_page_index: tuple[tuple[int, ...], ...] = field(default=(), repr=False)
    # decoded bytes of the largest tile or strip of level 0: reading any pixel decodes at least this much, so it
    # is a floor on memory that no preset lowers (one strip of a 200000 px square image: 40 GB)
    segment_bytes: int = 0
    # a multi-series file whose first series (the one read) is not its largest image: which was read, and how to
    # register another (empty otherwise)
    other_series: str = ""

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def plane_bytes(self) -> int:
        """Bytes of one uncompressed level-0 plane of one channel."""
        return self.width * self.height * self.itemsize

    @property
    def bytes_level0(self) -> int:
        """Uncompressed bytes of all of level 0 (every channel and frame)."""
        return self.plane_bytes * self.channels * self.frames

    @property
    def frame_bytes(self) -> int:
        """Uncompressed bytes of one frame (all channels) at level 0."""
        return self.plane_bytes * self.channels

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly summary (what `slimreg info` prints)."""
        data = asdict(self)
        data.pop("level_page_index")
        data["bytes_level0"] = self.bytes_level0
        data["levels"] = [list(level) for level in self.levels]
        return data


def probe(path: str | Path) -> ImageInfo:
    """Describe a TIFF/BigTIFF/OME-TIFF image from its headers; raise :class:`InputError` if unusable."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found.", path, "check the path (relative paths in a samplesheet are "
                         "resolved against the samplesheet's folder).")
    if not path.is_file():
        raise InputError("is not a file.", path, "give the path of a TIFF image.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with tifffile.TiffFile(path) as tif:
                return _probe_open(path, tif)
    except InputError:
        raise
    except tifffile.TiffFileError as error:
        if _has_tiff_signature(path):  # a TIFF that cannot be read is damaged: converting it would not help
            raise InputError(f"starts like a TIFF but its headers cannot be read ({error}); the file is probably "
                             "truncated or corrupt.", path, "copy the file again from its source.") from error
        found = other_format(path)
        converted = path.with_suffix(".tif") if path.suffix.lower() != ".tif" else path.with_suffix(".converted.tif")
        if found in PYVIPS_READS:
            raise InputError(f"is a {found} file, not a TIFF: slimreg reads (OME-)TIFF only.", path,
                             f"convert it to a tiled pyramidal TIFF (pyvips is installed with slimreg): "
                             f"{pyvips_conversion(path, converted)}") from error
        if found is not None:
            raise InputError(f"is a {found} file, not a TIFF: slimreg reads (OME-)TIFF only.", path,
                             "convert it to a pyramidal OME-TIFF with Bio-Formats' bfconvert (for example "
                             f"`bfconvert -pyramid-resolutions 4 -tilex 512 -tiley 512 {path.name} "
                             f"{path.stem}.ome.tif`).") from error
        raise InputError(f"is not a readable TIFF file ({error}).", path,
                         "convert it to (OME-)TIFF, for example with Bio-Formats' bfconvert or "
                         f"{pyvips_conversion(path, converted)}") from error
    except (OSError, ValueError, IndexError, KeyError, struct.error) as error:
        raise InputError(f"TIFF headers could not be read ({type(error).__name__}: {error}); the file may "
                         "be truncated or corrupt.", path, "copy the file again from its source.") from error


def _samples_named(axes: str, shape: tuple[int, ...], keyframe: Any) -> tuple[str, bool]:
    """The series' axes with the page's samples called S, and whether the writer called them channels.

    tifffile names a series' axes after the writer's metadata: a (C, Y, X) array written as one page of C samples
    (``tifffile.imwrite(path, stack, metadata={"axes": "CYX"})``, stored as RGB by default) reads as axes "CYX" over
    one page, and was read as C pages (an IndexError past the first channel)."""
    samples = int(getattr(keyframe, "samplesperpixel", 1) or 1)
    if samples <= 1 or "S" in axes or "Y" not in axes or "X" not in axes:
        return axes, False
    # planar (separate) samples sit just before Y, interleaved (contiguous) ones just after X
    where = axes.index("Y") - 1 if keyframe.planarconfig == tifffile.PLANARCONFIG.SEPARATE else axes.index("X") + 1
    if 0 <= where < len(axes) and shape[where] == samples:
        return axes[:where] + "S" + axes[where + 1:], axes[where] == "C"
    return axes, False


def _refuse_planar_grey_samples(path: Path, keyframe: Any) -> None:
    """libvips (8.18) misreads grey pages of several samples stored plane after plane (planar configuration 2): the
    pixels come back shuffled, silently. RGB pages stored that way, and grey ones interleaved, read correctly."""
    if (int(getattr(keyframe, "samplesperpixel", 1) or 1) > 1
            and keyframe.planarconfig == tifffile.PLANARCONFIG.SEPARATE
            and keyframe.photometric not in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)):
        raise InputError(f"stores {keyframe.samplesperpixel} grey channels in one page, plane after plane, which "
                         "libvips (slimreg's reader) reads back shuffled.", path,
                         "write one page per channel, for example: python -c \"import tifffile; "
                         "tifffile.imwrite('OUT.ome.tif', tifffile.imread('IN.tif'), ome=True, "
                         "metadata={'axes': 'CYX'}, tile=(512, 512), compression='zlib')\"")


def _probe_open(path: Path, tif: tifffile.TiffFile) -> ImageInfo:
    if not tif.series:
        raise InputError("contains no readable image; the file is probably truncated or corrupt.", path,
                         "copy the file again from its source (or give a TIFF with image data).")
    series = tif.series[0]
    dtype = np.dtype(series.dtype)
    if dtype.name == "float64":
        raise InputError("has 64-bit float pixels (float64), which the libvips slimreg reads with cannot decode (it "
                         "says 'tiff2vips: samples out of range'; slimreg used to blame the file).", path,
                         "convert it to float32, which keeps every value a microscope measures, for example: python "
                         "-c \"import tifffile; tifffile.imwrite('OUT.ome.tif', tifffile.imread('IN.tif')"
                         ".astype('float32'), tile=(512, 512), compression='zlib', ome=True)\" (with OME channel "
                         "names in metadata= if the file has them).")
    if dtype.name not in READABLE_DTYPES:
        raise InputError(f"pixel type {dtype} is not supported (supported: {', '.join(READABLE_DTYPES)}).",
                         path, "convert the image to uint8, uint16 or float32.")
    other_series = _other_series(path, tif)
    keyframe = series.keyframe
    axes, samples_named_channels = _samples_named(series.axes, series.shape, keyframe)
    shape = series.shape
    sizes = dict(zip(axes, shape, strict=True))
    if "Y" not in sizes or "X" not in sizes:
        raise InputError(f"has no Y/X axes (axes {axes!r}).", path, "give a 2-D image or a stack of 2-D planes.")
    _refuse_planar_grey_samples(path, keyframe)

    # JPEG-compressed slides store colour as YCbCr (decoders hand back RGB), as most scanners' files do
    colour = (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)
    is_rgb = bool(keyframe.photometric in colour and sizes.get("S", 1) in (3, 4)) and not samples_named_channels
    page_axes = [a for a in axes if a not in "YXS"]
    generic = [a for a in page_axes if a not in "CTZ"]
    mapping: dict[str, str] = {}
    for axis in generic:
        has_channels = "C" in page_axes or "C" in mapping.values() or (sizes.get("S", 1) > 1)
        if not has_channels and sizes[axis] <= MAX_GENERIC_PAGES_AS_CHANNELS:
            mapping[axis] = "C"
        elif "T" not in page_axes and "T" not in mapping.values():
            mapping[axis] = "T"
        elif "Z" not in page_axes and "Z" not in mapping.values():
            mapping[axis] = "Z"
        else:
            raise InputError(f"has more page axes than slimreg understands (axes {axes!r}).", path,
                             "save it as OME-TIFF with explicit C/Z/T axes.")
    normalised_page_axes = "".join(mapping.get(a, a) for a in page_axes)
    norm_sizes = {mapping.get(a, a): n for a, n in sizes.items()}
    channels_in_samples = sizes.get("S", 1) > 1 and "C" not in normalised_page_axes
    channels = norm_sizes.get("S", 1) if channels_in_samples else norm_sizes.get("C", 1)
    size_t, size_z = norm_sizes.get("T", 1), norm_sizes.get("Z", 1)

    levels = []
    level_page_index = []
    subifd_pyramid = bool(tif.pages.first.subifds) and len(series.levels) > 1
    for level in series.levels:
        level_sizes = dict(zip(level.axes, level.shape, strict=True))
        levels.append((int(level_sizes["Y"]), int(level_sizes["X"])))
    for level in series.levels if not subifd_pyramid else series.levels[:1]:
        indices = []
        for page in level.pages:
            if page is None:
                raise InputError("has missing pages; the file is truncated or corrupt.", path,
                                 "copy the file again from its source.")
            indices.append(int(page.index))
        level_page_index.append(tuple(indices))
    _check_not_truncated(path, series)

    ome_channels, ome_pixel_size = _ome_metadata(tif)
    names = ome_channels if len(ome_channels) == channels else None
    if names is None and tif.is_imagej and tif.imagej_metadata:
        labels = tif.imagej_metadata.get("Labels")
        if isinstance(labels, list) and len(labels) == channels:
            names = labels
    if names is None:
        names = ["R", "G", "B", "A"][:channels] if is_rgb else [f"C{i}" for i in range(channels)]
    # libvips writes a 1 px/mm resolution tag by default, so in OME files only the OME-XML is trusted
    if tif.is_ome:
        pixel_size = usable_pixel_size(ome_pixel_size, path, "its OME PhysicalSizeX/Y")
    else:
        found, origin, dpi = _tiff_pixel_size(tif, keyframe)
        pixel_size = usable_pixel_size(found, path, origin, dpi)

    tile = (int(keyframe.tilelength), int(keyframe.tilewidth)) if keyframe.is_tiled else None
    return ImageInfo(
        segment_bytes=_segment_bytes(keyframe),
        path=str(path),
        width=int(sizes["X"]),
        height=int(sizes["Y"]),
        channels=int(channels),
        frames=int(size_t * size_z),
        size_t=int(size_t),
        size_z=int(size_z),
        dtype=dtype.name,
        axes="".join(mapping.get(a, a) for a in axes),
        channel_names=tuple(str(n) for n in names),
        pixel_size_um=pixel_size,
        levels=tuple(levels),
        tile=tile,
        is_rgb=is_rgb,
        is_ome=bool(tif.is_ome),
        is_bigtiff=bool(tif.is_bigtiff),
        compression=compression_name(keyframe.compression),
        file_bytes=os.path.getsize(path),
        page_axes=normalised_page_axes,
        channels_in_samples=channels_in_samples,
        subifd_pyramid=subifd_pyramid,
        level_page_index=tuple(level_page_index),
        other_series=other_series,
    )


def _level0_size(series: Any) -> tuple[int, int]:
    sizes = dict(zip(series.axes, series.shape, strict=True))
    return int(sizes.get("X", 0)), int(sizes.get("Y", 0))


def _other_series(path: Path, tif: tifffile.TiffFile) -> str:
    """Words for a file whose first series, the one slimreg reads, is not its largest image ("" otherwise).

    A multi-series TIFF (several OME Images, a small overview or blank before the scan) used to be read at its first
    series without a word, and its failure then blamed the channel ("no tissue, choose another --channel"). Slides
    whose first series is the full-resolution scan, followed by a thumbnail, label or macro image (SVS, NDPI), say
    nothing. Told once per file on stderr, and added to the image's failure by slimreg.register.batch."""
    if len(tif.series) < 2:
        return ""
    width, height = _level0_size(tif.series[0])
    larger = [(number, *_level0_size(other)) for number, other in enumerate(tif.series) if number
              and _level0_size(other)[0] * _level0_size(other)[1] > width * height]
    if not larger:
        return ""
    number, other_width, other_height = max(larger, key=lambda item: item[1] * item[2])
    words = (f"slimreg read series 0 of this file's {len(tif.series)} ({width} x {height} px), the only one it reads; "
             f"series {number} is larger ({other_width} x {other_height} px). To register series {number}, extract it "
             f"into a file of its own, for example: bfconvert -series {number} IN OUT.ome.tif, or python -c \"import "
             f"tifffile; tifffile.imwrite('OUT.ome.tif', tifffile.imread('IN', series={number}), ome=True)\"")
    if (str(path), "series") not in _warned:
        _warned.add((str(path), "series"))
        print(f"slimreg: warning: {path}: {words}.", file=sys.stderr)
    return words


def _segment_bytes(page: Any) -> int:
    """Decoded size of one tile (or strip) of ``page``: what a reader must hold to return any of its pixels."""
    samples = int(page.samplesperpixel) if int(page.planarconfig) == 1 else 1  # 1: contiguous (interleaved)
    itemsize = int(page.bitspersample + 7) // 8
    if page.is_tiled:
        return int(page.tilewidth) * int(page.tilelength) * samples * itemsize
    rows = min(int(page.rowsperstrip or page.imagelength), int(page.imagelength))
    return int(page.imagewidth) * rows * samples * itemsize


def _check_not_truncated(path: Path, series: Any) -> None:
    """Raise if the last tile/strip of the first or last page of any level ends past the end of file."""
    size = os.path.getsize(path)
    for level in series.levels:
        pages = level.pages
        for page in {id(p): p for p in (pages[0], pages[-1])}.values():
            if page is None:
                raise InputError("has missing pages; the file is truncated or corrupt.", path,
                                 "copy the file again from its source.")
            offsets, counts = page.dataoffsets, page.databytecounts
            if not len(offsets):
                continue
            end = max(int(o) + int(c) for o, c in zip(offsets, counts, strict=True))
            if end > size:
                raise InputError(f"is truncated: image data ends at byte {end} but the file has {size} bytes.",
                                 path, "copy the file again from its source.")


def _ome_metadata(tif: tifffile.TiffFile) -> tuple[list[str], tuple[float, float] | None]:
    if not tif.is_ome or not tif.ome_metadata:
        return [], None
    try:
        root = ET.fromstring(tif.ome_metadata)
    except ET.ParseError:
        return [], None
    pixels = next((el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None)
    if pixels is None:
        return [], None
    names = []
    for channel in pixels:
        if channel.tag.endswith("Channel"):
            names.append(channel.get("Name") or channel.get("ID") or f"C{len(names)}")
    pixel_size = None
    if pixels.get("PhysicalSizeX"):
        unit_x = pixels.get("PhysicalSizeXUnit", "µm")
        unit_y = pixels.get("PhysicalSizeYUnit", unit_x)
        sx = _number(pixels.get("PhysicalSizeX")) * UNIT_TO_MICROMETRE.get(unit_x, 1.0)
        sy = _number(pixels.get("PhysicalSizeY", pixels.get("PhysicalSizeX"))) * UNIT_TO_MICROMETRE.get(unit_y, 1.0)
        pixel_size = (sx, sy)
    return names, pixel_size


def _number(text: str | None) -> float:
    """A header's number; text that is not one reads as NaN, which usable_pixel_size then sets aside."""
    try:
        return float(text or "nan")
    except ValueError:
        return math.nan


def _tiff_pixel_size(tif: tifffile.TiffFile, page: Any) -> tuple[tuple[float, float] | None, str, float | None]:
    """Pixel size from ImageJ metadata or TIFF resolution tags, in micrometres, as found (checked by the
    caller); with where it was found and, for a resolution in pixels per inch, that resolution."""
    if tif.is_imagej and tif.imagej_metadata:
        unit = tif.imagej_metadata.get("unit", "")
        factor = UNIT_TO_MICROMETRE.get(str(unit).replace("\\u00B5", "µ"))
        if factor is not None:
            try:
                x_res, y_res = page.tags["XResolution"].value, page.tags["YResolution"].value
                return (factor * _ratio(x_res), factor * _ratio(y_res)), f"its ImageJ resolution (unit {unit})", None
            except (KeyError, TypeError):
                pass
    try:
        x_res, y_res = page.tags["XResolution"].value, page.tags["YResolution"].value
        unit = page.tags["ResolutionUnit"].value
    except KeyError:
        return None, "", None
    per_unit = {tifffile.RESUNIT.CENTIMETER: 1e4, tifffile.RESUNIT.INCH: 25400.0}.get(unit)
    if per_unit is None:
        return None, "", None
    size = (per_unit * _ratio(x_res), per_unit * _ratio(y_res))
    if unit == tifffile.RESUNIT.INCH:
        dpi = max(_inverse_ratio(x_res), _inverse_ratio(y_res))
        return size, f"its TIFF resolution ({dpi:g} pixels per inch)", dpi
    return size, "its TIFF resolution (pixels per centimetre)", None


def _ratio(resolution: tuple[int, int]) -> float:
    """Units per pixel from a TIFF rational (pixels per unit); 0 pixels per unit reads as infinity."""
    pixels, per = float(resolution[0]), float(resolution[1])
    return per / pixels if pixels else math.inf


def _inverse_ratio(resolution: tuple[int, int]) -> float:
    return float(resolution[0]) / float(resolution[1]) if resolution[1] else math.inf


def usable_pixel_size(size: tuple[float, float] | None, path: Path, origin: str,
                      dpi: float | None = None) -> tuple[float, float] | None:
    """``size`` if it can be a microscope's pixel size, else None (unknown) after one warning per file.

    Every reader of pixel sizes (validation, the plan's scale checks, projections, the registered image's OME
    metadata) takes them from here: 0, negative, NaN or infinite sizes used to crash projections and print NaN in
    `slimreg info`; screen resolutions (72 dpi: 353 um/px) and placeholders (1 pixel per cm) were written into
    registered images as if measured.
    """
    if size is None:
        return None
    shown = " x ".join(f"{value:.4g}" for value in size)
    if not all(math.isfinite(value) and value > 0 for value in size):
        reason = f"{origin} gives {shown} um per pixel, which is not a pixel size"
    elif dpi is not None and dpi <= MAX_SCREEN_DPI:
        reason = (f"{origin} is a screen or print resolution ({shown} um per pixel), not a microscope's pixel size "
                  "(a TIFF converted from a JPEG or a screenshot carries 72 or 96)")
    elif max(size) >= MAX_PIXEL_SIZE_UM:
        reason = (f"{origin} gives {shown} um per pixel, a placeholder (a millimetre or more per pixel), not a "
                  "measurement")
    else:
        return size
    if (str(path), reason) not in _warned:
        _warned.add((str(path), reason))
        print(f"slimreg: warning: {path}: {reason}; its pixel size is treated as unknown (registration works in "
              "pixels; outputs carry no pixel size). Write the real one into the file's OME metadata if it is "
              "known.", file=sys.stderr)
    return None


# Formats people give by mistake, by their first bytes: named in the error so that the fix is obvious (tifffile's
# own message quotes the raw bytes, b'\\xff\\xd8\\xff\\xe0', which tell a user nothing).
OTHER_FORMATS: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"BM", "BMP"),
    (b"\x89HDF\r\n\x1a\n", "HDF5"),
    (b"ZISRAWFILE", "Zeiss CZI"),
    (b"%PDF", "PDF"),
)
PYVIPS_READS = frozenset({"JPEG", "PNG", "GIF", "WebP"})  # loaders in the libvips that pyvips-binary ships


def other_format(path: Path) -> str | None:
    """The name of the non-TIFF image format ``path`` starts like (its magic bytes), or None if not recognised."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in OTHER_FORMATS if head.startswith(magic)), None)


def pyvips_conversion(source: str | Path, target: str | Path, *, bigtiff: bool = False) -> str:
    """One shell line that rewrites ``source`` as a tiled, pyramidal, deflate-compressed TIFF with pyvips.

    pyvips comes with slimreg (the libvips command-line tool ``vips`` usually does not), so this line runs wherever
    slimreg does. The paths are Python string literals inside one argument the shell passes on unchanged."""
    options = "tile=True, pyramid=True, compression='deflate'" + (", bigtiff=True" if bigtiff else "")
    code = (f"import pyvips; pyvips.Image.new_from_file({str(source)!r})"
            f".tiffsave({str(target)!r}, {options})")
    if not any(c in code for c in '"$`\\!'):
        return f'python -c "{code}"'  # the usual case: nothing the shell would change inside double quotes
    return f"python -c {shlex.quote(code)}"


def _has_tiff_signature(path: Path) -> bool:
    """Whether the file begins with a classic or BigTIFF byte-order mark and magic number."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return False
    return head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def compression_name(compression: object) -> str:
    """Lower-case codec name; tifffile reports a bare int when the Compression tag is missing or unknown.

    A TIFF without the tag is uncompressed by the specification (ImageJ writes such files).
    """
    name = getattr(compression, "name", None)
    if name is not None:
        return str(name).lower()
    try:
        return tifffile.COMPRESSION(int(compression)).name.lower()  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return "none" if compression in (None, 1) else f"unknown-{compression}"


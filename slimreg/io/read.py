"""Lazy reading through pyvips: a plane, a region or a downsampled view, never a whole level 0.

Coordinates everywhere in slimreg are level-0 pixels with pixel centres at integer positions
(x right, y down). A downsampled image made by averaging blocks of ``scale`` level-0 pixels maps its
pixel ``i`` to level-0 ``(i + 0.5) * scale - 0.5``; :class:`Downsampled` carries that scale so callers
never guess it. Integer block factors are used on purpose: they make that mapping exact, which matters
because every sub-pixel error at the working resolution is multiplied by ``scale`` at level 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyvips
import tifffile

from slimreg.errors import InputError
from slimreg.io.integrity import verify_jpeg_page
from slimreg.io.probe import ImageInfo, probe
from slimreg.io.vips import from_numpy, to_numpy

# libvips' tiffload walks every IFD of a file to count its pages, each time a page is opened: 0.67 s a frame of a
# 20 000-frame stack of 64 px frames here (docs/motion.md, "Reading long stacks"). Whole level-0 planes of a file
# with more pages than this are read through one tifffile handle instead, which keeps each page's offset once seen
MANY_PAGES = 64
# ... when a plane is this small: it is then decoded whole (a writer calls a plane's recipe once per block)
WHOLE_PLANE_BYTES = 16 * 1024**2
# photometric interpretations whose samples libvips hands out as stored; others (min-is-white, palette, CMYK, Lab)
# it translates, so their pages stay with libvips
AS_STORED = (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)


def _as_tiffload_would(image: pyvips.Image) -> pyvips.Image:
    """An in-memory plane labelled as tiffload labels it: 16-bit grey and RGB are grey16 / rgb16 (from_numpy says
    b-w / srgb, and a colourspace conversion would then clip them to 8 bits)."""
    sixteen = image.format in ("ushort", "short")
    if image.bands >= 3:
        return image.copy(interpretation="rgb16" if sixteen else "srgb")
    return image.copy(interpretation="grey16" if sixteen else "b-w")


@dataclass(frozen=True)
class Downsampled:
    """A small copy of one channel (or RGB) and the level-0 pixels each of its pixels averages."""

    array: np.ndarray
    scale: float  # level-0 pixels per downsampled pixel, the same along x and y
    origin: tuple[float, float] = (0.0, 0.0)  # level-0 (x, y) of the copy's top-left corner (a cropped copy)

    def to_level0(self, xy: np.ndarray) -> np.ndarray:
        """Map downsampled pixel coordinates (N x 2, x then y) to level-0 coordinates."""
        return (np.asarray(xy, dtype=np.float64) + 0.5) * self.scale - 0.5 + np.asarray(self.origin)

    def from_level0(self, xy: np.ndarray) -> np.ndarray:
        """Map level-0 coordinates (N x 2) to downsampled pixel coordinates."""
        return (np.asarray(xy, dtype=np.float64) - np.asarray(self.origin) + 0.5) / self.scale - 0.5

    def level0_matrix(self) -> np.ndarray:
        """The 3x3 matrix of :meth:`to_level0` (downsampled px -> level-0 px)."""
        offset = (self.scale - 1.0) / 2.0
        return np.array([[self.scale, 0, offset + self.origin[0]], [0, self.scale, offset + self.origin[1]],
                         [0, 0, 1.0]])


class TiffImage:
    """A probed TIFF whose planes are handed out as lazy pyvips images.

    Holding no pixels itself, it is cheap to keep open; each pyvips image reads tiles on demand.
    """

    def __init__(self, source: str | Path | ImageInfo, access: str = "random"):
        self.info = source if isinstance(source, ImageInfo) else probe(source)
        self.path = Path(self.info.path)
        self.access = access
        self._pages: tifffile.TiffFile | None = None  # opened on the first plane read through tifffile
        # the last plane decoded whole, by (page, channel): a writer calls a plane's recipe once per block
        self._last_plane: tuple[tuple[int, int | None], np.ndarray] | None = None

    def close(self) -> None:
        """Close the tifffile handle of a many-page file, if one was opened (pyvips images hold their own)."""
        self._last_plane = None
        if self._pages is not None:
            self._pages.close()
            self._pages = None

    def __enter__(self) -> TiffImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _page_sizes(self) -> list[tuple[str, int]]:
        sizes = {"C": 1 if self.info.channels_in_samples else self.info.channels,
                 "T": self.info.size_t, "Z": self.info.size_z}
        return [(axis, sizes[axis]) for axis in self.info.page_axes]

    def page_number(self, channel: int, frame: int) -> int:
        """Index of the page holding (channel, frame) within a level's pages."""
        t, z = divmod(frame, self.info.size_z)
        coords = {"C": 0 if self.info.channels_in_samples else channel, "T": t, "Z": z}
        axes = self._page_sizes()
        if not axes:
            return 0
        return int(np.ravel_multi_index([coords[a] for a, _ in axes], [n for _, n in axes]))

    def level_scale(self, level: int) -> float:
        """Level-0 pixels per pixel of ``level``; the nearest integer when rounding of sizes explains the gap."""
        height0, width0 = self.info.levels[0]
        height, width = self.info.levels[level]
        ratio = width0 / width
        nearest = round(ratio)
        if nearest >= 1 and abs(width0 - nearest * width) < nearest and abs(height0 - nearest * height) < nearest:
            return float(nearest)
        return ratio

    @property
    def stored_in_strips(self) -> bool:
        """Level 0 is stored in strips (no tiles): a reader that jumps around in it decodes whole image rows."""
        return self.info.tile is None

    def plane(self, level: int = 0, channel: int | None = 0, frame: int = 0, *,
              access: str | None = None) -> pyvips.Image:
        """A pyvips image of one channel (``channel=None``: all samples, for RGB) of one frame: lazy, or for a small
        plane of a many-page file (a recording's frame) decoded whole. ``access`` overrides the image's own mode
        for one plane that is read once from top to bottom."""
        self._check_plane(level, channel, frame)
        if self._reads_whole_pages(level):
            array = self._page_array(channel, frame)
            if array is not None:
                return _as_tiffload_would(from_numpy(array))
        info = self.info
        page, subifd = self._page(level, channel, frame)
        if info.compression == "jpeg":  # libvips reads a damaged JPEG tile as grey, silently (slimreg.io.integrity)
            verify_jpeg_page(self.path, page, subifd)
        try:
            # fail_on="warning": libvips reads an undecodable tile as zeros and only warns (slimreg.io.integrity)
            image = pyvips.Image.tiffload(str(self.path), page=page, n=1, subifd=subifd,
                                          access=access or self.access, fail_on="warning")
        except pyvips.Error as error:
            raise InputError(f"could not be opened by libvips: {str(error).strip()}", info.path,
                             "check that the file is a complete TIFF.") from error
        return self.channel_of(image, channel)

    def channel_of(self, page: pyvips.Image, channel: int | None) -> pyvips.Image:
        """The band of one of this file's pages that holds ``channel`` (``None``: the three colour bands, for RGB;
        a fourth sample, alpha or unspecified, is dropped, as viewers do: a scan is opaque, and the registered copy
        is RGB, as its OME metadata says)."""
        if self.info.channels_in_samples and channel is not None:
            return page[channel]
        if page.bands > 1 and channel is not None:
            return page[0]
        if self.info.is_rgb and page.bands > 3:
            return page.extract_band(0, n=3)
        return page

    def plane_array(self, channel: int | None = 0, frame: int = 0) -> np.ndarray:
        """One channel (``None``: all samples, for RGB) of one frame of level 0, decoded, as ``plane`` gives it."""
        self._check_plane(0, channel, frame)
        array = self._page_array(channel, frame) if self._reads_whole_pages(0) else None
        return array if array is not None else to_numpy(self.plane(0, channel, frame))

    def _check_plane(self, level: int, channel: int | None, frame: int) -> None:
        info = self.info
        if not 0 <= level < len(info.levels):
            raise InputError(f"has no pyramid level {level} (it has {len(info.levels)}).", info.path)
        if channel is not None and not 0 <= channel < info.channels:
            raise InputError(f"has no channel {channel} (it has {info.channels}: "
                             f"{', '.join(info.channel_names)}).", info.path, "pick an existing channel.")
        if not 0 <= frame < info.frames:
            raise InputError(f"has no frame {frame} (it has {info.frames}).", info.path)

    def _page(self, level: int, channel: int | None, frame: int) -> tuple[int, int]:
        """(IFD index in the main chain, SubIFD index or -1) of a plane."""
        index = self.page_number(channel or 0, frame)
        if self.info.subifd_pyramid:
            return self.info.level_page_index[0][index], level - 1
        return self.info.level_page_index[level][index], -1

    def _reads_whole_pages(self, level: int) -> bool:
        info = self.info
        samples = info.channels if info.channels_in_samples else 1
        return (level == 0 and len(info.level_page_index) > 0 and len(info.level_page_index[0]) > MANY_PAGES
                and info.plane_bytes * samples <= WHOLE_PLANE_BYTES)

    def _page_array(self, channel: int | None, frame: int) -> np.ndarray | None:
        """A level-0 plane decoded by tifffile (imagecodecs), as the pyvips path would give it: one channel, or
        every sample interleaved (H x W x S) for ``channel=None``. None for a page whose colours libvips would
        translate (min-is-white, palette, CMYK, ...): that page is read by libvips."""
        page_index, _ = self._page(0, channel, frame)
        if self._last_plane is not None and self._last_plane[0] == (page_index, channel):
            return self._last_plane[1]
        try:
            if self._pages is None:
                self._pages = tifffile.TiffFile(self.path)
                self._pages.pages.cache = False  # keep offsets only: a page's header per frame would grow with length
            page = self._pages.pages[page_index]
            if page.photometric not in AS_STORED:
                return None
            array = page.asarray()
            axes = page.axes
        except (ValueError, RuntimeError, OSError, KeyError, IndexError, EOFError) as error:
            # tifffile and imagecodecs raise these for a damaged page (imagecodecs' errors are RuntimeErrors)
            where = f"page {page_index} (frame {frame}{'' if channel is None else f', channel {channel}'})"
            raise InputError(f"{where} could not be decoded: {error}", self.info.path,
                             "check that the file is a complete TIFF.") from error
        if array.ndim == 3 and "S" in axes:
            array = np.moveaxis(array, axes.index("S"), -1)
            if channel is not None:
                array = array[..., channel if self.info.channels_in_samples else 0]
            elif self.info.is_rgb:
                array = array[..., :3]  # as channel_of: the colour bands of an RGB page
        array = np.ascontiguousarray(array)
        array.flags.writeable = False  # shared by the cache and the pyvips images made from it
        self._last_plane = ((page_index, channel), array)
        return array

    def region(self, x: int, y: int, width: int, height: int, *, level: int = 0, channel: int | None = 0,
               frame: int = 0) -> np.ndarray:
        """Pixels of a rectangle (clipped to the image) as numpy."""
        image = self.plane(level, channel, frame)
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(image.width, x + width), min(image.height, y + height)
        if x1 <= x0 or y1 <= y0:
            raise InputError(f"region {x},{y} {width}x{height} lies outside the image.", self.info.path)
        return to_numpy(image.crop(x0, y0, x1 - x0, y1 - y0))

    def downsampled(self, max_dim: int, channel: int | None = 0, frame: int = 0,
                    region: tuple[int, int, int, int] | None = None, level_share: float = 1.0) -> Downsampled:
        """A copy whose long side is at most ``max_dim``, built from the best pyramid level by block averaging.

        ``region`` (level-0 x, y, width, height) reads only that rectangle, so working pixels can be spent on
        tissue rather than on the glass around it; the copy's ``origin`` says where it starts. ``level_share`` < 1
        takes the coarsest level whose copy keeps at least that share of the largest copy's long side: a whole
        factor that fits may divide no level but the first (1024 px from a 23280 px scan is a factor of 23, read by
        decoding the whole scan), where a coarser level gives nearly as large a copy (970 px from the 2910 px level)
        at a fraction of the decoding."""
        if max_dim < 1:
            raise InputError(f"max_dim must be at least 1, got {max_dim}.", self.info.path)
        x, y, width, height = region or (0, 0, self.info.width, self.info.height)
        # Among exact (integer-scale) levels and integer block factors, keep the largest result that fits:
        # the smallest level that fits could lose up to half the requested resolution (1250 -> 625 px).
        fits: list[tuple[int, float, int, tuple[int, int, int, int]]] = []
        for level in range(len(self.info.levels)):
            scale = self.level_scale(level)
            if scale != int(scale):
                continue  # an inexact level would blur the coordinate mapping; skip it
            level_height, level_width = self.info.levels[level]
            x0, y0 = max(0, int(x // scale)), max(0, int(y // scale))
            x1 = min(level_width, math.ceil((x + width) / scale))
            y1 = min(level_height, math.ceil((y + height) / scale))
            long_level = max(x1 - x0, y1 - y0)
            fits.append((long_level // max(1, math.ceil(long_level / max_dim)), scale, level,
                         (x0, y0, x1 - x0, y1 - y0)))
        largest = max(size for size, *_ in fits)
        # the coarsest level whose copy keeps ``level_share`` of the largest (by default: of equal largest copies)
        _, best_scale, best_level, best_box = max((fit for fit in fits if fit[0] >= level_share * largest),
                                                  key=lambda fit: fit[1])
        # from strips, libvips' random access to a shrunk plane held the whole decoded level (866 MB for a
        # 20000 x 13522 RGB file, 133 MB read top to bottom); the copy is read top to bottom once either way (a
        # region low in the image costs the time of decoding the strips above it, not their memory)
        image = self.plane(best_level, channel, frame, access="sequential" if self.stored_in_strips else None)
        x0, y0, box_width, box_height = best_box
        factor = max(1, math.ceil(max(box_width, box_height) / max_dim))
        if factor > 1 or best_box != (0, 0, image.width, image.height):
            image = image.crop(x0, y0, (box_width // factor) * factor, (box_height // factor) * factor)
            if factor > 1:
                image = image.shrink(factor, factor)
        array = to_numpy(image)
        dtype = np.dtype(self.info.dtype)
        if array.dtype != dtype and factor > 1 and np.issubdtype(dtype, np.integer):
            array = np.clip(np.rint(array), np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)
        return Downsampled(array=array, scale=best_scale * factor, origin=(x0 * best_scale, y0 * best_scale))


def open_image(path: str | Path, access: str = "random") -> TiffImage:
    """Probe ``path`` and return a :class:`TiffImage` for lazy reading."""
    return TiffImage(path, access=access)


def read_region(path: str | Path, x: int, y: int, width: int, height: int, *, level: int = 0,
                channel: int | None = 0, frame: int = 0) -> np.ndarray:
    """Read one rectangle of one channel and frame."""
    return open_image(path).region(x, y, width, height, level=level, channel=channel, frame=frame)


def read_downsampled(path: str | Path, max_dim: int, channel: int | None = 0, frame: int = 0) -> Downsampled:
    """Read a channel no larger than ``max_dim`` on its long side without holding level 0 in memory."""
    return open_image(path).downsampled(max_dim, channel=channel, frame=frame)

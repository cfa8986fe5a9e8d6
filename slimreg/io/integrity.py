"""Damaged compressed tiles: found and named, never read as black pixels.

libvips reads a tile that fails to decompress as zeros and only warns; slimreg opens every TIFF with
``fail_on="warning"`` so the read fails instead (slimreg.io.read), and when a task fails that way this module finds
which file and which tile are damaged, so the message can name them. The scan decodes tile after tile with
tifffile and runs only after such a failure, so an intact file costs nothing.

JPEG is the exception: libjpeg reports damaged entropy-coded data (random bytes in the middle of a tile) as a
warning that libvips' TIFF reader drops even with ``fail_on="warning"``, and the tile comes back as a flat grey
block; the task finished and QC said pass. So every JPEG-compressed page is decoded once with tifffile (whose codec
refuses such data) before libvips first reads it (``verify_jpeg_page``, called by slimreg.io.read): 0.09 s per
16 megapixels (a 4096 px RGB image), against about 0.16 s for libvips to decode the same page once.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pyvips
import tifffile

from slimreg.errors import InputError

DECODE_WORDS = ("decoding error", "decompress", "corrupt", "invalid block", "read error", "premature end",
                "unexpected end", "bad huffman", "not a jpeg", "lzwdecode", "zipdecode", "error reading")


def is_decode_error(error: pyvips.Error) -> bool:
    """Whether libvips failed because compressed data could not be decoded (not, say, a full disk)."""
    text = str(error).lower()
    return any(word in text for word in DECODE_WORDS)


def damaged_segment(path: str | Path) -> str | None:
    """Where the first undecodable tile (or strip) of ``path`` is, in words, or None if every one decodes."""
    with tifffile.TiffFile(path) as tiff:
        pages = list(tiff.pages)
        for page in pages:
            for subifd in getattr(page, "pages", None) or []:
                pages.append(subifd)
        for number, page in enumerate(pages):
            if not isinstance(page, tifffile.TiffPage):
                continue
            where = _first_undecodable(tiff, page)
            if where:
                return f"page {number}, {where}"
    return None


def _first_undecodable(tiff: tifffile.TiffFile, page: tifffile.TiffPage) -> str | None:
    """The first tile (or strip) of ``page`` that its codec refuses, in words, or None; one segment in memory."""
    handle = tiff.filehandle
    for index, (offset, count) in enumerate(zip(page.dataoffsets, page.databytecounts, strict=True)):
        handle.seek(offset)
        data = handle.read(count)
        try:
            segment, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as error:  # codecs raise many kinds; any of them means "damaged"
            return f"{_segment_words(page, index)} ({type(error).__name__}: {error})"
        if segment is None and count:
            return f"{_segment_words(page, index)} (no data could be decoded)"
    return None


JPEG = 7  # TIFF Compression tag value of (new-style) JPEG
_verified: set[tuple[str, int, int, int, int]] = set()  # (path, size, mtime, page, subifd) decoded whole, intact
_verifying = threading.Lock()


def verify_jpeg_page(path: str | Path, page: int, subifd: int = -1) -> None:
    """Decode every tile of one JPEG-compressed page once per process (see the module docstring); raise an
    InputError naming the file, page and tile if one cannot be decoded. Pages with other compressions, and pages
    already verified (unchanged since), cost one ``stat``."""
    info = os.stat(path)
    key = (str(path), info.st_size, info.st_mtime_ns, page, subifd)
    if key in _verified:
        return
    with _verifying:  # the render-ahead thread and the walking thread may ask at once: decode once
        if key in _verified:
            return
        with tifffile.TiffFile(path) as tiff:
            found = tiff.pages[page]
            if subifd >= 0:
                found = found.pages[subifd]
            where = _first_undecodable(tiff, found) if int(found.compression) == JPEG else None
        if where:
            level = f", pyramid level {subifd + 1}" if subifd >= 0 else ""
            raise InputError(f"is damaged: page {page}{level}, {where} cannot be decoded. libvips reads such a JPEG "
                             "tile as a flat grey block without an error; slimreg does not use it.", path,
                             "copy the file again from its source, or re-export it from the scanner software.")
        _verified.add(key)


def _segment_words(page: tifffile.TiffPage, index: int) -> str:
    if page.is_tiled:
        across = -(-page.imagewidth // page.tilewidth)
        row, column = divmod(index % (across * -(-page.imagelength // page.tilelength)), across)
        return (f"tile {index} (x {column * page.tilewidth}, y {row * page.tilelength}, "
                f"{page.tilewidth} x {page.tilelength} px)")
    rows = page.rowsperstrip or page.imagelength
    return f"strip {index} (rows {index * rows}-{min(page.imagelength, (index + 1) * rows) - 1})"


def damaged_input_error(error: pyvips.Error, paths: list[Path]) -> InputError | None:
    """The clear error for a decode failure in one of ``paths``, or None if none of them is damaged."""
    detail = str(error).strip().splitlines()
    libvips_says = next((line.strip() for line in detail if line.strip() and "unable to" not in line), "")
    for path in paths:
        if not path.is_file() or path.suffix.lower() not in (".tif", ".tiff", ".btf", ".svs", ".qptiff"):
            continue
        try:
            where = damaged_segment(path)
        except (OSError, ValueError, tifffile.TiffFileError):
            continue
        if where:
            return InputError(f"is damaged: {where} cannot be decoded (libvips: {libvips_says}). slimreg does not "
                              "read a damaged tile as black pixels.", path,
                              "copy the file again from its source, or re-export it from the scanner software.")
    return None

"""Level-0 pages of a stripped image copied into tiles, one page at a time, for readers that jump around in them.

The pyramid writer renders a plane block by block in Z order, each block from a fresh ``tiffload``. From a file
stored in strips, every block decodes each strip it touches across the image's whole width, so the same strips are
decoded again for every block column: warping a 20000 x 13522 RGB strip TIFF took 402 s and 1.2 GB, the same
pixels in tiles 15 s (docs/benchmarks.md, "Inputs stored in strips"). One pass from top to bottom into tiles costs
4 s there and holds a few rows of tiles. Only the page being written is copied, so the scratch disk is one page.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pyvips

from slimreg.atomic import temporary_sibling
from slimreg.io.probe import ImageInfo
from slimreg.io.read import WHOLE_PLANE_BYTES, TiffImage

COPY_TILE = 256  # the copy's tile side: a pass from top to bottom holds a few rows of these tiles across the width
COPY_THREADS = 2  # libvips threads during a copy: each holds rows of tiles across the width
# rows of tiles (across the width) held at two threads: 28.7 / 64.2 / 71.8 MB above baseline measured for RGB pages
# 8000 / 20000 / 23280 px wide, that is 4.3-4.9 rows (docs/benchmarks.md, "Inputs stored in strips")
COPY_ROWS_HELD = 5
COPY_DEFLATE_LEVEL = 1  # a scratch copy read once: fast deflate (4.0 s, 269 MB) over none (2.0 s, 785 MB) at 20000 px


def needs_tiled_copy(info: ImageInfo) -> bool:
    """Whether writing this image's planes block by block would decode its strips many times over (headers only).

    Small planes (at most ``WHOLE_PLANE_BYTES``) are cheap to decode whole, and many-page recordings are read
    frame by frame through tifffile; neither gains from a copy."""
    return info.tile is None and page_bytes(info) > WHOLE_PLANE_BYTES


def page_bytes(info: ImageInfo) -> int:
    """Decoded bytes of one level-0 page: one plane, or every channel where they are samples of one page."""
    return info.plane_bytes * (info.channels if info.channels_in_samples else 1)


def copy_buffer_bytes(info: ImageInfo) -> int:
    """Memory the copy holds while it runs on its two threads: rows of tiles being read and written (the strip a read
    decodes is counted for every task with this input, in ``plan``)."""
    return COPY_ROWS_HELD * COPY_TILE * page_bytes(info) // info.height


class TiledPages:
    """Planes of ``image`` read from a tiled copy of their page, made when a page is first asked for.

    The previous page's copy is deleted when another page is asked for, and the last one by ``close``; copies are
    hidden files in ``folder`` (the output's folder, which already holds the writer's scratch)."""

    def __init__(self, image: TiffImage, folder: Path):
        self.image, self.folder = image, Path(folder)
        self._page: int | None = None
        self._copy: Path | None = None
        self._lock = threading.Lock()  # writers call recipes from a render thread: one copy per page, whoever asks

    def plane(self, channel: int | None, frame: int) -> pyvips.Image:
        page = self.image.page_number(channel or 0, frame)
        with self._lock:
            if page != self._page:
                self._replace(page, channel, frame)
            copy = self._copy
        assert copy is not None
        return self.image.channel_of(pyvips.Image.tiffload(str(copy), access="random"), channel)

    def _replace(self, page: int, channel: int | None, frame: int) -> None:
        self.close()
        # every band of the page: the copy serves all channels stored in its samples
        whole_page = self.image.plane(0, None if self.image.info.channels_in_samples else channel, frame,
                                      access="sequential")
        self.folder.mkdir(parents=True, exist_ok=True)  # the writer builds the first plane before making it
        # a partial name: a task killed mid-write leaves a file that the next run's clean-up removes (slimreg.atomic)
        self._copy, self._page = temporary_sibling(self.folder / f"{self.image.path.stem}.page{page}.tif"), page
        threads = pyvips.concurrency_get()
        pyvips.concurrency_set(min(threads, COPY_THREADS))  # no other pipeline runs while a page is copied
        try:
            # libvips' errors pass as they are: a damaged strip is then named by the task's handler
            # (slimreg.io.integrity), and a full disk is not blamed on the input
            whole_page.tiffsave(str(self._copy), tile=True, tile_width=COPY_TILE, tile_height=COPY_TILE,
                                bigtiff=True, compression="deflate", level=COPY_DEFLATE_LEVEL)
        except BaseException:
            self.close()
            raise
        finally:
            pyvips.concurrency_set(threads)

    def close(self) -> None:
        if self._copy is not None:
            with contextlib.suppress(FileNotFoundError):
                self._copy.unlink()
        self._copy, self._page = None, None

    def __enter__(self) -> TiledPages:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def level0_planes(image: TiffImage, folder: Path) -> Iterator[Callable[[int | None, int], pyvips.Image]]:
    """A function giving a fresh lazy level-0 plane (channel, frame) of ``image`` for each block a writer renders:
    from the file itself, or, for a file stored in strips, from a tiled copy of its page in ``folder``."""
    if not needs_tiled_copy(image.info):
        yield lambda channel, frame: image.plane(0, channel, frame)
        return
    with TiledPages(image, folder) as tiled:
        yield tiled.plane


def level0_tile(info: ImageInfo) -> tuple[int, int]:
    """(height, width) of the unit ``level0_planes``' planes are best decoded in: the file's own tiles, the copy's
    for a file copied into tiles, and the whole plane for a small one stored in strips (decoded whole anyway)."""
    if needs_tiled_copy(info):
        return COPY_TILE, COPY_TILE
    return info.tile if info.tile is not None else (info.height, info.width)

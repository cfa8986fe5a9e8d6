"""Regions of one lazy plane, assembled from the file's own tiles, each decoded once while a bounded cache holds it.

A warp renders its output block by block in Z order, and each block samples a region of the moving image a little
larger than itself (turned, shifted, bent). Read with one ``crop`` per block, every block decodes each input tile
its region touches: with 1024 px JPEG tiles a region of 1080 px touches four, so the whole image was decoded about
four times over. Here the plane is decoded in units of whole tiles about ``SOURCE_UNIT_PIXELS`` a side (one
``crop`` each: a libvips call per 256 px tile cost more than the tile's decoding) and kept in a
least-recently-used cache of ``SOURCE_CACHE_BYTES``, which neighbouring blocks in Z order share
(docs/benchmarks.md, "The warp in blocks").
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import pyvips

MB = 1024**2
# decoded input tiles kept while a plane is warped: 21 RGB tiles of 1024 px or 85 of 512 px, enough for the blocks
# that follow one another in Z order to share most of theirs (a 23280 px frame of 1024 px JPEG tiles decoded 435
# tiles for its 330, against 621 with a third of this); a fixed amount, whatever the image's size
SOURCE_CACHE_BYTES = 64 * MB
# the side of a decoded unit, in whole tiles of the file: the writer's render block, so that a block's region spans
# about four units
SOURCE_UNIT_PIXELS = 1024


class SourceTiles:
    """Regions of the plane ``plane()`` builds (called afresh for each unit it decodes, as the writer did for each
    block, so that no long-lived ``tiffload`` accumulates buffers), read through a cache of decoded units. For one
    thread (the writer's render thread)."""

    def __init__(self, plane: Callable[[], pyvips.Image], width: int, height: int, tile: tuple[int, int],
                 bands: int, dtype: np.dtype, budget: int | None = None):
        """``tile``: (height, width) of the file's level-0 tiles; units of whole tiles are decoded and cached."""
        self.plane, self.width, self.height = plane, width, height
        self.unit_height, self.unit_width = (side * max(1, SOURCE_UNIT_PIXELS // side) for side in
                                             (max(1, tile[0]), max(1, tile[1])))
        self.bands, self.dtype = bands, np.dtype(dtype)
        self.budget = SOURCE_CACHE_BYTES if budget is None else budget
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._held = 0
        self.decoded = 0  # units decoded so far (a unit evicted and needed again counts twice)

    @property
    def unit_bytes(self) -> int:
        """Decoded bytes of the largest unit."""
        return (min(self.unit_height, self.height) * min(self.unit_width, self.width) * self.bands
                * self.dtype.itemsize)

    def region(self, left: int, top: int, right: int, bottom: int) -> np.ndarray:
        """Pixels [top:bottom, left:right] as a (rows, columns, bands) array; the bounds must lie in the plane."""
        if not (0 <= left < right <= self.width and 0 <= top < bottom <= self.height):
            raise ValueError(f"region ({left}, {top}, {right}, {bottom}) outside the {self.width} x {self.height} "
                             f"plane")
        out = np.empty((bottom - top, right - left, self.bands), self.dtype)
        for row in range(top // self.unit_height, (bottom - 1) // self.unit_height + 1):
            for column in range(left // self.unit_width, (right - 1) // self.unit_width + 1):
                unit = self._unit(row, column)
                unit_top, unit_left = row * self.unit_height, column * self.unit_width
                y0, y1 = max(top, unit_top), min(bottom, unit_top + unit.shape[0])
                x0, x1 = max(left, unit_left), min(right, unit_left + unit.shape[1])
                out[y0 - top:y1 - top, x0 - left:x1 - left] = unit[y0 - unit_top:y1 - unit_top,
                                                                   x0 - unit_left:x1 - unit_left]
        return out

    def _unit(self, row: int, column: int) -> np.ndarray:
        key = (row, column)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        top, left = row * self.unit_height, column * self.unit_width
        rows, columns = min(self.unit_height, self.height - top), min(self.unit_width, self.width - left)
        # reshape: pyvips drops axes of length 1
        unit = self.plane().crop(left, top, columns, rows).numpy().reshape(rows, columns, self.bands)
        self.decoded += 1
        self._cache[key] = unit
        self._held += unit.nbytes
        while self._held > self.budget and len(self._cache) > 1:
            _, evicted = self._cache.popitem(last=False)
            self._held -= evicted.nbytes
        return unit

    def clear(self) -> None:
        self._cache.clear()
        self._held = 0

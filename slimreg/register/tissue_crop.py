"""Working images of the tissue, not of the slide: a whole-slide scan is mostly glass.

A section that fills a tenth of its slide, read whole at the working size, gets a tenth of the working pixels,
and its partner, scanned with less glass around it, is seen at another resolution: detectors, the rotation
search and the edge score then compare structures of different sizes. So the tissue's bounding box is found
on a thumbnail (the same tissue mask registration uses), widened by a margin, and only that box is read at the
working size. The box is used only where it buys resolution (a smaller block factor than the whole image);
a section that fills its image is read whole, as before.
"""

from __future__ import annotations

import math

import numpy as np

from slimreg.io.read import Downsampled, TiffImage
from slimreg.register.channel import registration_image
from slimreg.register.preprocess import tissue_mask

MARGIN_FRACTION = 0.05  # of the box's own size, on each side: registration needs the tissue's outline


def tissue_box(whole: Downsampled, mask: np.ndarray, width: int, height: int,
               max_dim: int) -> tuple[int, int, int, int] | None:
    """Level-0 (x, y, width, height) around ``mask``, the tissue of ``whole`` (the image of ``width`` x ``height``
    level-0 px read whole at ``max_dim``), or None when reading the whole image loses nothing."""
    if not mask.any():
        return None
    rows, cols = _extent(mask)
    corners = whole.to_level0(np.array([[cols[0] - 0.5, rows[0] - 0.5], [cols[-1] + 0.5, rows[-1] + 0.5]]))
    margin = MARGIN_FRACTION * (corners[1] - corners[0])
    (x0, y0), (x1, y1) = np.floor(corners[0] - margin), np.ceil(corners[1] + margin)
    x0, y0 = max(0, int(x0)), max(0, int(y0))
    x1, y1 = min(width, int(x1)), min(height, int(y1))
    if math.ceil(max(x1 - x0, y1 - y0) / max_dim) >= math.ceil(max(width, height) / max_dim):
        return None
    return x0, y0, x1 - x0, y1 - y0


def tissue_share(image: TiffImage, channel: int | str, max_dim: int) -> float:
    """The long side of the tissue's bounding box over the image's long side, seen at ``max_dim`` px (1.0 where no
    tissue is found: then the whole image is what registration sees)."""
    mask = tissue_mask(registration_image(image, channel, max_dim).array)
    if not mask.any():
        return 1.0
    rows, cols = _extent(mask)
    return max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) / max(mask.shape)


def _extent(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows and the columns that hold tissue (``mask`` must hold some)."""
    return np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))


def tissue_image(image: TiffImage, channel: int | str, max_dim: int) -> tuple[Downsampled, np.ndarray]:
    """The registration image of the tissue's box (see :func:`tissue_box`) at most ``max_dim`` px a side, and its
    tissue mask (the whole image's, already at hand, when there is no box to cut)."""
    whole = registration_image(image, channel, max_dim)
    mask = tissue_mask(whole.array)
    box = tissue_box(whole, mask, image.info.width, image.info.height, max_dim)
    if box is None:
        return whole, mask
    cropped = registration_image(image, channel, max_dim, region=box)
    return cropped, tissue_mask(cropped.array)

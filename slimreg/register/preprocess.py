"""Stain-agnostic working images: a tissue mask and an edge map per image.

Differently stained serial sections share where tissue is and where its structures begin and end, not
how bright they are: H&E and an IHC stain put opposite contrast on the same gland. So the registration
measures compare *edge strength* (smoothed gradient magnitude, blind to edge polarity) inside the tissue,
and the tissue itself comes from the grey image's own histogram (Otsu), not from a tuned threshold.
Every length here follows from the working image's size, so the same rule holds at 5 % scale and at
full resolution read downsampled.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import ndimage
from skimage import filters

EDGE_SIGMA_FRACTION = 1 / 250  # edge smoothing, as a fraction of the working image's long side
MIN_TISSUE_FRACTION = 0.002  # components smaller than this share of the image are dust, not tissue
# ``wide_blur`` blurs at a k-fold reduced size once the sigma left there is at least this many px: sampled that
# finely, a Gaussian's approximation stays within 0.01 px of the exact one on a field of a few px (docs/accuracy.md,
# "Thirteenth attempt")
MIN_REDUCED_SIGMA = 6.0


def edge_sigma(shape: tuple[int, ...]) -> float:
    """Gaussian sigma (working px) for edge maps: structures of about 1 % of the image drive alignment."""
    return max(1.0, max(shape[:2]) * EDGE_SIGMA_FRACTION)


def edge_map(grey: np.ndarray, sigma: float) -> np.ndarray:
    """Smoothed gradient magnitude: where structures begin and end, whatever the stain's contrast.

    ``scipy.ndimage.gaussian_gradient_magnitude(grey, sigma)``, its kernels (to four sigma) and mirrored border, in
    OpenCV's float32 separable filter: within a few parts in ten million of its values (tests/test_preprocess.py) and
    two to three times faster; every score and every refinement level reads edge maps. The magnitude is NumPy's:
    on several threads ``cv2.magnitude`` gave values that differed in the last bit from one call to the next (its
    vector and scalar code round differently, and how the image is split between threads decides which pixel gets
    which), and the poses refined on them differed from one run to the next (docs/accuracy.md, "Thirty-second
    attempt")."""
    smooth, derivative = _gaussian_kernels(sigma)
    image = np.ascontiguousarray(grey, dtype=np.float32)
    along_x = cv2.sepFilter2D(image, cv2.CV_32F, derivative, smooth, borderType=cv2.BORDER_REFLECT)
    along_y = cv2.sepFilter2D(image, cv2.CV_32F, smooth, derivative, borderType=cv2.BORDER_REFLECT)
    along_x *= along_x
    along_y *= along_y
    along_x += along_y
    return np.sqrt(along_x, out=along_x)


def _gaussian_kernels(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """A sampled Gaussian (sum 1) and its derivative to four sigma, as scipy.ndimage builds them, laid out for
    correlation (OpenCV's filters correlate; scipy's Gaussian filters convolve)."""
    radius = int(4.0 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    smooth = np.exp(-0.5 * offsets * offsets / (sigma * sigma))
    smooth /= smooth.sum()
    # the derivative -x / sigma^2 * g(x), reversed: g is even, so reversing flips the sign of x
    return smooth.astype(np.float32), (offsets / (sigma * sigma) * smooth).astype(np.float32)


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(image, sigma)`` of a 2-D float32 image (mirrored border, kernel to four
    sigma), in OpenCV's float32 separable filter: the fields are smoothed over 2-8 % of the image (kernels of 160-660
    taps at 1024 px), where it is two to three times faster and differs by under 1e-6 of the values."""
    radius = int(4.0 * sigma + 0.5)
    return cv2.GaussianBlur(np.ascontiguousarray(image, dtype=np.float32), (2 * radius + 1, 2 * radius + 1), sigma,
                            sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def wide_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """``blur`` for the fields' wide smoothing (2-8 % of the image, sigma 20-80 px at 1024 px), at a fraction of its
    cost: the image mirrored beyond its border as ``blur`` mirrors it, block-averaged by k, blurred there, and read
    back bilinearly, the Gaussian's width less what the block and the bilinear read add. The exact filter's cost
    grows with sigma (its kernel has 8 sigma taps): 85 and 330 ms against 16 and 27 ms at 20 and 82 px on a
    1024 x 768 field. ``blur`` itself below a reduction of two."""
    factor = int(sigma // MIN_REDUCED_SIGMA)
    if factor < 2:
        return blur(image, sigma)
    height, width = image.shape
    margin = factor * math.ceil(4.0 * sigma / factor)  # the exact kernel's reach, in whole blocks
    bottom, right = margin + (-height % factor), margin + (-width % factor)
    padded = cv2.copyMakeBorder(np.ascontiguousarray(image, dtype=np.float32), margin, bottom, margin, right,
                                cv2.BORDER_REFLECT)
    rows, columns = padded.shape
    reduced = cv2.resize(padded, (columns // factor, rows // factor), interpolation=cv2.INTER_AREA)
    # variances add: a block of k px holds (k^2 - 1) / 12, a bilinear read between samples k px apart k^2 / 6
    left = math.sqrt(max(sigma**2 - (factor**2 - 1) / 12 - factor**2 / 6, 0.25)) / factor
    smooth = cv2.resize(blur(reduced, left), (columns, rows), interpolation=cv2.INTER_LINEAR)
    return smooth[margin:margin + height, margin:margin + width]


def pull_onto(image: np.ndarray, mask: np.ndarray, pull: np.ndarray, shape: tuple[int, ...]
              ) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (bilinear) and its ``mask`` (nearest) on a grid of ``shape`` through a 3x3 pull matrix (grid px
    -> image px), zero outside the image: how every measure here places one working image on another's grid."""
    height, width = shape[:2]
    matrix = pull[:2].astype(np.float64)
    placed = cv2.warpAffine(image.astype(np.float32), matrix, (width, height),
                            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=0)
    placed_mask = cv2.warpAffine(mask.astype(np.uint8), matrix, (width, height),
                                 flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0) > 0
    return placed, placed_mask


def tissue_mask(grey: np.ndarray) -> np.ndarray:
    """Foreground (tissue, cells) above the background's threshold on a smoothed copy; dust removed, holes filled.

    ``grey`` is a working image where tissue is bright (optical density or fluorescence, 0..1). An image
    with no contrast (blank, saturated) has no tissue and gets an empty mask.
    """
    sigma = max(1.0, max(grey.shape) / 400)
    smooth = ndimage.gaussian_filter(grey.astype(np.float32), sigma)
    if float(smooth.max() - smooth.min()) < 1e-3:
        return np.zeros(grey.shape, dtype=bool)
    mask = smooth > _background_threshold(smooth)
    mask = _dilated(_eroded(mask, 2), 2)  # an opening: specks and threads go
    labels, count = ndimage.label(mask)
    if count:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, count + 1))
        keep = np.flatnonzero(sizes >= MIN_TISSUE_FRACTION * mask.size) + 1
        mask = np.isin(labels, keep)
    return _dilated(_holes_filled(mask), max(1, round(sigma * 2)))


# scipy.ndimage's default structuring element in 2-D: the pixel and its four neighbours
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def _eroded(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``scipy.ndimage.binary_erosion(mask, iterations=n)``: the cross n times, beyond the image counted as
    background; the same pixels (tests/test_preprocess.py), in OpenCV, many times faster."""
    return cv2.erode(mask.astype(np.uint8), _CROSS, iterations=iterations, borderType=cv2.BORDER_CONSTANT,
                     borderValue=0) > 0


def _dilated(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``scipy.ndimage.binary_dilation(mask, iterations=n)``, likewise."""
    return cv2.dilate(mask.astype(np.uint8), _CROSS, iterations=iterations, borderType=cv2.BORDER_CONSTANT,
                      borderValue=0) > 0


def _holes_filled(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes(mask)``: background not joined to the image's border through its four
    neighbours becomes foreground. One labelling of the background, where scipy dilates from the border until
    nothing changes."""
    labels, _ = ndimage.label(~mask)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return ~np.isin(labels, border[border > 0])


def _background_threshold(smooth: np.ndarray) -> float:
    """Where background ends: half of Otsu's threshold, unless ink has taken Otsu's split over.

    Two classes split off whatever is darkest. On a slide with a pen line or a label that is the ink, and most
    of the tissue falls below the threshold (measured: a pen line and a label beside a shared section left 4-6 %
    of the image as tissue, where the lowest boundary of three Otsu classes, background / tissue / ink, finds
    19-25 %). So when half of Otsu's threshold keeps less than half of what the three-class boundary keeps, the
    three-class boundary is used; on slides without ink the two agree closely and Otsu's split stands."""
    half_otsu = float(filters.threshold_otsu(smooth)) * 0.5
    try:
        lowest = float(filters.threshold_multiotsu(smooth, classes=3)[0])
    except ValueError:  # too few distinct values for three classes
        return half_otsu
    return lowest if (smooth > half_otsu).sum() < 0.5 * (smooth > lowest).sum() else half_otsu


LOCAL_CONTRAST_SIGMAS = 8.0  # local mean and spread over this many edge sigmas: structures stay, shading goes


def local_contrast(grey: np.ndarray, sigma: float) -> np.ndarray:
    """``grey`` less its local mean, over its local spread (both over ``LOCAL_CONTRAST_SIGMAS`` edge sigmas), with
    +-3 spreads mapped to 0..1.

    Optical flow assumes a structure keeps its brightness as it moves. Across stains and scanners it does not:
    uneven light and a stain's strength shift brightness over areas much larger than the structures, and flow
    reads such a shift as motion (measured on the shared pairs under an illumination ramp, median motion over
    tissue: DeepFlow on the plain grey 0.27-1.40 edge sigmas, and its fields made three of four pairs worse; on
    this image 0.27-0.99, and its fields made two of four better)."""
    scale = LOCAL_CONTRAST_SIGMAS * sigma
    detail = grey.astype(np.float32) - ndimage.gaussian_filter(grey.astype(np.float32), scale)
    spread = np.sqrt(ndimage.gaussian_filter(detail * detail, scale)) + 1e-3
    return np.clip((detail / spread + 3.0) / 6.0, 0.0, 1.0).astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A 0..1 float image as 8-bit (what OpenCV's detectors and flow expect)."""
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)


"""The working images' edge maps and tissue masks (slimreg.register.preprocess) are computed in OpenCV, faster; these
check that they are scipy.ndimage's, which the measurements in docs/ were made with."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage

from slimreg.register import preprocess


def _tissue_like(seed: int, shape: tuple[int, int] = (300, 420)) -> np.ndarray:
    """Smooth blobs with fine texture and holes, touching the border: grey 0..1, tissue bright."""
    rng = np.random.default_rng(seed)
    blobs = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), 18)
    texture = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 1.5)
    grey = np.clip((blobs > 0.01) * (0.5 + 0.5 * texture) + 0.05 * rng.random(shape), 0, 1)
    return grey.astype(np.float32)


@pytest.mark.parametrize("sigma", [1.0, 1.7, 4.656, 9.3])
def test_the_edge_map_is_scipys_gaussian_gradient_magnitude(sigma: float) -> None:
    grey = _tissue_like(2)
    expected = ndimage.gaussian_gradient_magnitude(grey, sigma)
    found = preprocess.edge_map(grey, sigma)
    assert found.dtype == np.float32 and found.shape == grey.shape
    # float32 sums in another order: a few parts in ten million of the largest edge, border rows included
    assert float(np.abs(found - expected).max()) < 1e-6 * float(expected.max())
    assert float(expected.max()) > 0.01


def test_the_morphology_is_scipys_pixel_for_pixel() -> None:
    """Erosion (beyond the image is background), dilation and hole filling by the cross, as scipy.ndimage does them,
    on random masks of every density and shape, holes against the border included."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        mask = rng.random((int(rng.integers(3, 70)), int(rng.integers(3, 70)))) < rng.random()
        iterations = int(rng.integers(1, 5))
        np.testing.assert_array_equal(preprocess._eroded(mask, iterations),
                                      ndimage.binary_erosion(mask, iterations=iterations))
        np.testing.assert_array_equal(preprocess._dilated(mask, iterations),
                                      ndimage.binary_dilation(mask, iterations=iterations))
        np.testing.assert_array_equal(preprocess._holes_filled(mask), ndimage.binary_fill_holes(mask))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_tissue_mask_is_the_one_scipys_morphology_gives(seed: int) -> None:
    grey = _tissue_like(seed)
    sigma = max(1.0, max(grey.shape) / 400)
    smooth = ndimage.gaussian_filter(grey, sigma)
    mask = ndimage.binary_opening(smooth > preprocess._background_threshold(smooth), iterations=2)
    labels, count = ndimage.label(mask)
    sizes = ndimage.sum(mask, labels, index=np.arange(1, count + 1))
    mask = np.isin(labels, np.flatnonzero(sizes >= preprocess.MIN_TISSUE_FRACTION * mask.size) + 1)
    expected = ndimage.binary_dilation(ndimage.binary_fill_holes(mask), iterations=max(1, round(sigma * 2)))
    found = preprocess.tissue_mask(grey)
    np.testing.assert_array_equal(found, expected)
    assert 0.1 < found.mean() < 0.9


def test_the_edge_map_does_not_depend_on_how_many_threads_opencv_runs() -> None:
    """On several threads, ``cv2.magnitude`` gave values that differed in the last bit from one call to the next on
    texture over a black background (and the nuclei pair's poses from one run to the next; the default install's
    OpenCV 4.14 on most runs); with NumPy's magnitude the edge map is the same, call after call, on any number of
    threads."""
    image = np.zeros((768, 1024), np.float32)
    image[100:600, 200:900] = np.random.default_rng(1).random((500, 700))
    threads = cv2.getNumThreads()
    try:
        cv2.setNumThreads(1)
        alone = preprocess.edge_map(image, 2.048)
        for count in (2, 3, 4, 8) * 10:
            cv2.setNumThreads(count)
            np.testing.assert_array_equal(preprocess.edge_map(image, 2.048), alone)
    finally:
        cv2.setNumThreads(threads)

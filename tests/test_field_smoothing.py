"""The fields' wide smoothing (slimreg.register.preprocess.wide_blur) and the search's refinements side by side
(slimreg.register.refine.side_by_side): cheaper ways to the same numbers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from slimreg.register.preprocess import blur, wide_blur
from slimreg.register.refine import side_by_side


def _smoothed_on_tissue(flow: np.ndarray, tissue: np.ndarray, sigma: float, smooth: object) -> np.ndarray:
    """Normalised convolution, as the fields are smoothed (slimreg.register.fields)."""
    return smooth(flow * tissue, sigma) / np.maximum(smooth(tissue, sigma), 1e-3)  # type: ignore[operator]


@pytest.mark.parametrize("fraction", [0.02, 0.08])
def test_a_field_smoothed_at_a_reduced_size_is_the_exactly_smoothed_field_to_a_hundredth_of_a_pixel(
        fraction: float) -> None:
    """A motion of a few px with noise, on tissue in irregular patches that reach the image's border, smoothed over
    2 % and 8 % of a 1024 x 768 image: within 0.01 px of the exact Gaussian everywhere on tissue."""
    rng = np.random.default_rng(1)
    height, width = 768, 1024
    rows, columns = np.mgrid[0:height, 0:width]
    tissue = (cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), 30) > 0)
    flow = (3 * np.sin(columns / 90) + 2 * np.cos(rows / 70) + rng.standard_normal((height, width))).astype(np.float32)
    sigma = fraction * width
    exact = _smoothed_on_tissue(flow, tissue.astype(np.float32), sigma, blur)
    reduced = _smoothed_on_tissue(flow, tissue.astype(np.float32), sigma, wide_blur)
    assert tissue[0].any() and tissue[-1].any()  # the border is part of the check
    assert float(np.abs(reduced - exact)[tissue].max()) < 0.01
    assert float(np.abs(exact[tissue]).max()) > 2  # a field that moves, not a flat one


def test_a_narrow_blur_is_not_reduced() -> None:
    """Below a reduction of two blocks the exact filter runs: nothing to gain there."""
    image = np.random.default_rng(0).random((200, 300)).astype(np.float32)
    np.testing.assert_array_equal(wide_blur(image, 8.0), blur(image, 8.0))


def test_refinements_side_by_side_run_on_one_blas_thread_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worker's BLAS stays on one thread (several per worker wait on one another: docs/accuracy.md,
    "Thirteenth attempt"), and BLAS gets its threads back afterwards."""
    from slimreg.register import refine

    monkeypatch.setattr(refine, "usable_cpus", lambda: 2)

    def blas_threads() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    with threadpool_limits(limits=2, user_api="blas"):  # as on a 2-core machine, whatever this one has
        before = blas_threads()
        seen = side_by_side([np.eye(3), np.eye(3)], lambda start: blas_threads())
        after = blas_threads()
    assert any(threads > 1 for threads in before)
    assert all(threads == [1] * len(before) for threads in seen)
    assert after == before

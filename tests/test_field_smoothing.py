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


def _flow_error(reference: np.ndarray, moving: np.ndarray, truth: np.ndarray, scale: int | None,
                monkeypatch: pytest.MonkeyPatch) -> float:
    """Median distance (px, over tissue) between the known flow and DIS's, smoothed as the finest candidate is,
    estimated down to ``scale`` (None: the scale the rule picks)."""
    from slimreg.register import fields
    from slimreg.register.preprocess import tissue_mask

    if scale is not None:
        monkeypatch.setattr(fields, "finest_flow_scale", lambda side, patch: scale)
    tissue = tissue_mask(reference)
    smooth = fields._regularise(fields._flow(reference, moving), tissue, fields.FLOW_SMOOTHING_FRACTIONS[0])
    monkeypatch.undo()
    return float(np.median(np.hypot(*(smooth - truth)[tissue].T)))


def test_dis_stops_at_the_scale_whose_patches_fit_the_smoothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real nuclear-stain image at 1024 px, bent by a known smooth flow of 2-3 px: estimated down to the scale the
    rule picks (1: patches of 16 px under the 20 px smoothing), the smoothed field is within 0.05 px of the one
    estimated at full size; one scale coarser (patches of 32 px) it is not. Below 800 px full size is kept."""
    from benchmarks.realdata import SHARED_DATA
    from slimreg.register.fields import finest_flow_scale

    grey = cv2.imread(str(SHARED_DATA / "if-rounds" / "processed_CD20_FOXP3_CD3.png"), cv2.IMREAD_GRAYSCALE)
    width = 1024
    height = round(grey.shape[0] * width / grey.shape[1])
    reference = cv2.resize(grey, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    truth = np.stack([3 * np.sin(2 * np.pi * rows / (0.6 * height)), 2 * np.cos(2 * np.pi * columns / (0.7 * width))],
                     axis=-1).astype(np.float32)
    # the moving image shows at x what the reference shows at x - flow(x)
    moving = cv2.remap(reference, columns - truth[..., 0], rows - truth[..., 1], cv2.INTER_LINEAR)
    assert finest_flow_scale(width, 8) == 1 and finest_flow_scale(799, 8) == 0
    full = _flow_error(reference, moving, truth, 0, monkeypatch)
    picked = _flow_error(reference, moving, truth, None, monkeypatch)
    coarser = _flow_error(reference, moving, truth, 2, monkeypatch)
    assert full < 0.25  # the flow is found at all
    assert picked - full < 0.05 < coarser - full

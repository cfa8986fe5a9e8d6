"""The diffeomorphic field (slimreg.register.diffeomorphic) recovers a known smooth deformation of a real image, the
same way every run, across a change of contrast, and leaves an undeformed pair where it is."""

from __future__ import annotations

import cv2
import numpy as np

from benchmarks.realdata import SHARED_DATA
from slimreg.register.diffeomorphic import greedy_flow
from slimreg.register.fields import _both_ways
from slimreg.register.preprocess import edge_sigma


def _real_grey() -> np.ndarray:
    """A real nuclear-stain image (the shared if-rounds round 1), 0..1."""
    grey = cv2.imread(str(SHARED_DATA / "if-rounds" / "processed_CD20_FOXP3_CD3.png"), cv2.IMREAD_GRAYSCALE)
    return grey.astype(np.float32) / 255


def _bent(image: np.ndarray, amplitude: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` pulled through a smooth known flow (a slow wave of ``amplitude`` px), and that flow."""
    height, width = image.shape
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    flow = np.stack([amplitude * np.sin(2 * np.pi * grid_y / height), amplitude * np.cos(2 * np.pi * grid_x / width)],
                    axis=-1).astype(np.float32)
    # the moving image shows at x what the reference shows at x - flow(x): pulling it at x + flow(x) undoes that
    moving = cv2.remap(image, grid_x - flow[..., 0], grid_y - flow[..., 1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REFLECT)
    return moving, flow


def _interior(shape: tuple[int, int], margin: int = 40) -> tuple[slice, slice]:
    return slice(margin, shape[0] - margin), slice(margin, shape[1] - margin)


def test_a_known_smooth_deformation_is_recovered_the_same_way_every_run() -> None:
    reference = _real_grey()
    moving, truth = _bent(reference, amplitude=4.0)
    sigma = edge_sigma(reference.shape)
    found = greedy_flow(reference, moving, sigma)
    inside = _interior(reference.shape)
    error = np.hypot(*(found - truth)[inside].reshape(-1, 2).T)
    before = np.hypot(*truth[inside].reshape(-1, 2).T)
    # measured: median 0.16 px left of a 2.5-4 px motion
    assert np.median(error) < 0.25 * np.median(before), (np.median(error), np.median(before))
    assert np.array_equal(found, greedy_flow(reference, moving, sigma))  # no randomness, no thread-order effects


def test_the_field_holds_across_a_change_of_contrast_and_both_ways_undo_each_other() -> None:
    """Local NCC compares each neighbourhood's pattern, not its brightness: the same deformation under an inverted,
    gamma-changed contrast (another stain's grey) is found as well."""
    reference = _real_grey()
    moving, truth = _bent(reference, amplitude=4.0)
    restained = (1 - moving) ** 2
    sigma = edge_sigma(reference.shape)
    forward = greedy_flow(reference, restained, sigma)
    averaged = _both_ways(forward, greedy_flow(restained, reference, sigma))
    inside = _interior(reference.shape)
    before = np.median(np.hypot(*truth[inside].reshape(-1, 2).T))
    for found in (forward, averaged):
        assert np.median(np.hypot(*(found - truth)[inside].reshape(-1, 2).T)) < 0.3 * before


def test_an_aligned_pair_gets_no_field() -> None:
    """A level that lowers the mean local NCC is not kept: Greedy's fixed step alone left this pair a field of up to
    2 px (up to 1.6 px with the last steps halved), undoing each step that lowered it up to 0.2 px; now none."""
    reference = _real_grey()
    found = np.hypot(*greedy_flow(reference, reference.copy(), edge_sigma(reference.shape)).reshape(-1, 2).T)
    assert found.max() == 0


def test_the_field_changes_little_when_the_images_change_little() -> None:
    """The field depends smoothly on the images: with noise of 1e-4 (a ten-thousandth of the grey range) added to
    the moving image, the field moves by under 0.01 px at 99 % of the pixels and 0.15 px at most (measured: 0.004 and
    0.06). Undoing each step that lowered the local NCC made the field a chain of yes-or-no decisions: 0.03 and
    0.28 px here, and on the shared sections an affine moved by 0.01 px moved landmark medians by up to 0.31 px
    (docs/accuracy.md, "Thirty-first attempt")."""
    reference = _real_grey()
    moving, _ = _bent(reference, amplitude=4.0)
    noisy = (moving + 1e-4 * np.random.default_rng(0).standard_normal(moving.shape)).astype(np.float32)
    sigma = edge_sigma(reference.shape)
    inside = _interior(reference.shape)
    moved = np.hypot(*(greedy_flow(reference, moving, sigma) - greedy_flow(reference, noisy, sigma))[inside]
                     .reshape(-1, 2).T)
    assert np.percentile(moved, 99) < 0.01 and moved.max() < 0.15

"""The rotation search's scales (slimreg.register.initial): the tissue areas' ratio always, and the scale the pixel
sizes imply too where the two disagree, since a mask's area depends on the resolution it was found at."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from slimreg.register.initial import SCALE_AGREEMENT, _SearchFrames, rotation_search


def _images() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A textured ellipse and the same at 2/3 of its resolution (moving working px per reference px: 0.667)."""
    rng = np.random.default_rng(3)
    texture = cv2.GaussianBlur(rng.random((300, 360)).astype(np.float32), (0, 0), 3.0)
    mask = np.zeros((300, 360), np.uint8)
    cv2.ellipse(mask, (170, 150), (120, 80), 20, 0, 360, 1, -1)
    reference = texture * mask
    moving = cv2.resize(reference, (240, 200), interpolation=cv2.INTER_AREA)
    return reference, moving, mask > 0, cv2.resize(mask, (240, 200), interpolation=cv2.INTER_NEAREST) > 0


def _scales(candidates: list) -> list[float]:
    return [float(np.sqrt(abs(np.linalg.det(c.pull[:2, :2])))) for c in candidates]


def test_a_disagreeing_pixel_size_scale_is_searched_too_and_an_agreeing_one_adds_nothing() -> None:
    reference, moving, reference_mask, moving_mask = _images()
    area_only = rotation_search(reference, moving, reference_mask, moving_mask, sigma=3.0)
    assert np.allclose(_scales(area_only), 0.667, atol=0.02)  # the areas' ratio: right here
    agreeing = rotation_search(reference, moving, reference_mask, moving_mask, sigma=3.0,
                               expected_scale=0.667 * (1 + SCALE_AGREEMENT / 2))
    assert len(agreeing) == len(area_only)
    disagreeing = rotation_search(reference, moving, reference_mask, moving_mask, sigma=3.0, expected_scale=0.8)
    extra = _scales(disagreeing)[len(area_only):]
    assert len(extra) == 2 and np.allclose(extra, 0.8)  # the best of each kind at the second scale


def test_the_fft_shift_is_found_in_every_direction_on_a_grid_whose_padding_is_not_twice_its_size() -> None:
    """The search pads its FFTs to a length that factors well (97 x 113 px: 200 x 232, not 194 x 226), so shifts
    past the middle of the padded grid must be read as negative; read against twice the grid, these starts land
    6 and 14 px off."""
    rng = np.random.default_rng(5)
    reference = cv2.GaussianBlur(rng.random((97, 113)).astype(np.float32), (0, 0), 2.0)
    tissue = np.ones(reference.shape, bool)  # tissue fills the frame: centroids agree, the FFT finds the shift
    for dx, dy in ((-7, 5), (6, -4)):
        moving = np.roll(reference, (dy, dx), axis=(0, 1))
        found = rotation_search(reference, moving, tissue, tissue, sigma=1.5)
        upright = next(c for c in found if c.name == "rotation search 0 deg")
        point = np.array([50.0, 45.0, 1.0])
        assert np.allclose((upright.pull @ point)[:2], point[:2] + np.array([dx, dy]), atol=0.5)


def _shift_counts(height: int, width: int, padded: tuple[int, int]) -> np.ndarray:
    """Exact overlap of two full frames at every shift of the padded grid (negative past the middle)."""
    dy = np.arange(padded[0])
    dx = np.arange(padded[1])
    dy = np.where(dy < padded[0] // 2, dy, dy - padded[0])
    dx = np.where(dx < padded[1] // 2, dx, dx - padded[1])
    return np.clip(height - np.abs(dy), 0, None)[:, None] * np.clip(width - np.abs(dx), 0, None)[None, :]


@pytest.mark.parametrize("side", [300, 2048])
def test_the_overlap_counts_are_exact_in_single_precision_and_where_it_would_round_wrong(side: int) -> None:
    """The outline candidates are picked by intersection over union of whole-pixel counts: ties between equal
    counts must be exact. Single precision is within 0.01 of them at the search's size; at 2048 px (4 million
    tissue px) it strays by half a count, and the counts are made again in double precision."""
    tissue = np.ones((side, side), bool)
    edges = np.zeros((side, side), np.float32)
    frames = _SearchFrames.of(tissue, edges, edges, tissue)
    single = frames.correlate(frames.reference_mask_fft, tissue)
    assert single.dtype == np.float32
    expected = _shift_counts(side, side, frames.padded)
    assert np.array_equal(frames.overlap(tissue), expected)
    if side == 2048:  # the single-precision counts alone would not round to these
        assert float(np.abs(single - np.rint(single)).max()) >= 0.25

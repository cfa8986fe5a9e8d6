"""The pose search's descent (slimreg.register.regular_step) is SimpleITK's, run in NumPy: it finds a known pose,
lands where SimpleITK lands from the same start, keeps a similarity a similarity and gives up where nothing
overlaps, as SimpleITK does."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from slimreg.register.pose import corner_distance
from slimreg.register.refine import _refine_at
from slimreg.register.regular_step import NoOverlap, Pose, regular_step_descent

SHAPE = (180, 240)


def _texture(seed: int = 3) -> np.ndarray:
    """Smooth random structure, like an edge map of tissue."""
    noise = np.random.default_rng(seed).random(SHAPE).astype(np.float32)
    return cv2.GaussianBlur(noise, (0, 0), 3.0)


def _pull(degrees: float, scale: float, shift: tuple[float, float], centre: np.ndarray) -> np.ndarray:
    """Pull matrix (reference px -> moving px) turning by ``degrees`` and scaling about ``centre``, then shifting."""
    turn = np.deg2rad(degrees)
    matrix = scale * np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    pull = np.eye(3)
    pull[:2, :2] = matrix
    pull[:2, 2] = centre - matrix @ centre + np.asarray(shift)
    return pull


def _pair(pull: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A moving texture, the reference it becomes through ``pull``, and a mask of the reference's middle."""
    moving = _texture()
    reference = cv2.warpAffine(moving, pull[:2], SHAPE[::-1], flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    mask = np.zeros(SHAPE, np.uint8)
    mask[30:-30, 40:-40] = 1
    return reference, mask, moving


def _as_pull(pose: Pose) -> np.ndarray:
    out = np.eye(3)
    out[:2, :2] = pose.matrix
    out[:2, 2] = pose.translation + pose.centre - pose.matrix @ pose.centre
    return out


def _descend(reference: np.ndarray, mask: np.ndarray, moving: np.ndarray, similarity: bool = False) -> np.ndarray:
    centre = np.array([SHAPE[1] / 2, SHAPE[0] / 2])
    start = Pose(np.eye(2), np.zeros(2), centre, similarity)
    return _as_pull(regular_step_descent(reference, mask, moving, 0.0, start, (4, 2, 1), 200))


def _simpleitk(reference: np.ndarray, mask: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """The same run through SimpleITK, as slimreg's refinement runs it."""
    centre = np.array([SHAPE[1] / 2, SHAPE[0] / 2])
    return _refine_at(reference, moving, mask, np.eye(3), centre, "affine", 200, (4, 2, 1), 1.0, 0.0)


def _level_inputs(origin: float, shift: tuple[float, float], seed: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Pose]:
    """A texture, its mask, a moving image (the texture padded by ``-origin`` px, or a crop of it 32 px along), the
    pose's centre and a pose near the optimum shifted by ``shift``."""
    wide = cv2.GaussianBlur(np.random.default_rng(seed).random((SHAPE[0], SHAPE[1] + 60)).astype(np.float32), (0, 0),
                            3.0)
    fixed = np.ascontiguousarray(wide[:, :SHAPE[1]])
    moving = np.pad(fixed, 20) if origin else np.ascontiguousarray(wide[:, 32:SHAPE[1] + 32])
    mask = np.zeros(SHAPE, np.uint8)
    mask[20:160, 30:230] = 1
    centre = np.array([120.0, 90.0])
    return fixed, mask, moving, centre, Pose(np.array([[1.01, 0.01], [-0.01, 0.99]]), np.array(shift), centre)


def test_the_descent_finds_a_known_pose_where_simpleitk_finds_it() -> None:
    truth = _pull(3.0, 1.03, (5.0, -4.0), np.array([SHAPE[1] / 2, SHAPE[0] / 2]))
    reference, mask, moving = _pair(truth)
    assert corner_distance(np.eye(3), truth, SHAPE) > 10  # the start is far from the answer
    found = _descend(reference, mask, moving)
    assert corner_distance(found, truth, SHAPE) < 0.05
    assert corner_distance(found, _simpleitk(reference, mask, moving), SHAPE) < 0.05


def test_a_similarity_stays_a_similarity() -> None:
    truth = _pull(-2.0, 0.98, (-3.0, 2.0), np.array([SHAPE[1] / 2, SHAPE[0] / 2]))
    reference, mask, moving = _pair(truth)
    found = _descend(reference, mask, moving, similarity=True)
    linear = found[:2, :2]
    assert linear[0, 0] == pytest.approx(linear[1, 1]) and linear[0, 1] == pytest.approx(-linear[1, 0])
    assert corner_distance(found, truth, SHAPE) < 0.05


def test_no_overlap_is_raised_where_every_sample_leaves_the_moving_image() -> None:
    reference, mask, moving = _pair(np.eye(3))
    far = Pose(np.eye(2), np.array([5000.0, 0.0]), np.array([SHAPE[1] / 2, SHAPE[0] / 2]))
    with pytest.raises(NoOverlap):
        regular_step_descent(reference, mask, moving, 0.0, far, (2, 1), 50)


@pytest.mark.parametrize("origin, shift, falls_off", [(-20.0, (1.5, -0.7), False), (0.0, (-31.4, -0.4), True)])
def test_the_descent_direction_is_the_metrics_downhill_slope(origin: float, shift: tuple[float, float],
                                                             falls_off: bool) -> None:
    """The direction an iteration steps along is minus the slope of the metric it reports, measured by central
    differences: both where every sample lands on the moving image (the shortcut that reuses the centred fixed
    samples) and where some fall off it and stop counting."""
    from slimreg.register.regular_step import _Level

    fixed, mask, moving, centre, pose = _level_inputs(origin, shift, seed=3)
    level = _Level(fixed, mask, moving, origin, 1, centre)
    mapped_x = level.offsets[0] * 1.01 + level.offsets[1] * 0.01 + centre[0] + shift[0] - origin
    assert bool(((mapped_x < -0.5) | (mapped_x >= moving.shape[1] - 0.5)).any()) == falls_off
    value, direction = level.value_and_gradient(pose)
    assert value < -0.5  # a pose near the optimum: the slope is the metric's, not noise's
    slope = np.empty(6)
    for index in range(6):
        step = 0.02 if index >= 4 else 0.02 / 120  # about 0.02 px at the samples' farthest offsets
        up, down = pose.parameters(), pose.parameters()
        up[index] += step
        down[index] -= step
        slope[index] = (level.value_and_gradient(pose.with_parameters(up))[0]
                        - level.value_and_gradient(pose.with_parameters(down))[0]) / (2 * step)
    assert float(-slope @ direction) / (np.linalg.norm(slope) * np.linalg.norm(direction)) > 0.999


@pytest.mark.parametrize("origin, shift", [(-20.0, (1.5, -0.7)), (0.0, (-31.4, -0.4)), (0.0, (0.3, -40.6))])
def test_the_metric_summed_a_chunk_at_a_time_is_the_metric_of_one_pass(monkeypatch: pytest.MonkeyPatch,
                                                                       origin: float,
                                                                       shift: tuple[float, float]) -> None:
    """An iteration sums its samples a chunk at a time, so that its buffers stay a few MB at a polish's millions of
    samples: every sample on the moving image, samples off it in every chunk (a shift along x), and whole chunks off
    it beside chunks that are partly or wholly on it (along y) give the value and direction of one pass."""
    from slimreg.register import regular_step

    fixed, mask, moving, centre, pose = _level_inputs(origin, shift, seed=5)
    one_pass = regular_step._Level(fixed, mask, moving, origin, 1, centre)
    assert one_pass.count == 28_000 and one_pass.count < regular_step.CHUNK
    value, direction = one_pass.value_and_gradient(pose)
    monkeypatch.setattr(regular_step, "CHUNK", regular_step.REMAP_WIDTH)  # 28 chunks, the last partly filled
    chunked = regular_step._Level(fixed, mask, moving, origin, 1, centre)
    chunked_value, chunked_direction = chunked.value_and_gradient(pose)
    assert chunked_value == pytest.approx(value, rel=1e-9)
    np.testing.assert_allclose(chunked_direction, direction, rtol=1e-9, atol=1e-12 * np.abs(direction).max())
    assert value < 0 and np.abs(direction).max() > 0


@pytest.mark.parametrize("threads", [2, 3])
def test_chunks_spread_over_threads_give_the_pose_of_one_thread(monkeypatch: pytest.MonkeyPatch,
                                                                 threads: int) -> None:
    """The polish spreads a level's chunks over the CPUs: each thread sums its own chunks in its own buffers and the
    sums are added in the chunks' order, so the pose is the one a single thread finds, to the last bit, including
    where the pose moves part of the samples off the moving image (chunks wholly and partly off it)."""
    from slimreg.register import regular_step

    monkeypatch.setattr(regular_step, "CHUNK", 4 * regular_step.REMAP_WIDTH)  # 7 chunks at the finest level
    truth = _pull(3.0, 1.03, (5.0, -4.0), np.array([SHAPE[1] / 2, SHAPE[0] / 2]))
    reference, mask, moving = _pair(truth)
    mask[:] = 1  # every pixel: the edges of the reference map off the moving image
    centre = np.array([SHAPE[1] / 2, SHAPE[0] / 2])
    start = Pose(np.eye(2), np.zeros(2), centre)
    alone = regular_step_descent(reference, mask, moving, 0.0, start, (2, 1), 200)
    spread = regular_step_descent(reference, mask, moving, 0.0, start, (2, 1), 200, threads=threads)
    np.testing.assert_array_equal(_as_pull(spread), _as_pull(alone))
    assert corner_distance(_as_pull(alone), truth, SHAPE) < 0.5

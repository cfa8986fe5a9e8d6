"""The light engine's pose search: what it spends its time on (keypoints capped per detector, the rotation search
only where no two detectors agree), checked without registering whole images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage

from slimreg.io.read import Downsampled
from slimreg.register import pose
from slimreg.register.initial import MAX_KEYPOINTS, Candidate, describe, describe_both, fit_similarity
from slimreg.register.preprocess import to_uint8
from slimreg.register.settings import RegistrationSettings
from slimreg.register.similarity import AlignmentScorer


def speckled(seed: int, shape: tuple[int, int] = (512, 512)) -> np.ndarray:
    """Dense fine texture (like a field of nuclei): far more corners than the cap."""
    noise = np.random.default_rng(seed).random(shape)
    return ndimage.gaussian_filter(noise, 1.2).astype(np.float32)


def recorded_refinements(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """The starts the pose search refines, in order; each refinement stubbed to keep its start."""
    refined: list[np.ndarray] = []

    def recording(reference: np.ndarray, moving: np.ndarray, mask: np.ndarray, pull: np.ndarray,
                  *args: object, **kwargs: object) -> list[np.ndarray]:
        refined.append(pull)
        return [pull]

    monkeypatch.setattr(pose, "refine_both_ways", recording)
    return refined


def test_each_detector_keeps_its_strongest_keypoints_and_still_finds_a_shift() -> None:
    image = speckled(1)
    mask = np.ones(image.shape, bool)
    described = describe(image, mask)
    assert all(len(found.points) <= MAX_KEYPOINTS for found in described.values())
    # the texture has more FAST corners than the cap: the ones kept are the strongest
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    image8 = clahe.apply(to_uint8(image))  # as describe prepares it
    every = cv2.FastFeatureDetector_create(threshold=10).detect(image8, mask.astype(np.uint8))
    assert len(every) > MAX_KEYPOINTS
    responses = np.sort([k.response for k in every])[::-1]
    kept = {(round(float(x), 1), round(float(y), 1)) for x, y in described["fast+teblid"].points}
    strongest = {(round(k.pt[0], 1), round(k.pt[1], 1)) for k in every if k.response > responses[MAX_KEYPOINTS]}
    assert strongest <= kept  # every corner stronger than the cap's last is described (TEBLID drops none)
    # the capped keypoints still fit a known shift (the pull from the reference to the moved copy)
    moved = describe(np.roll(image, (7, -11), axis=(0, 1)), mask)
    for name, found in described.items():
        fit = fit_similarity(found, moved[name], 2.0)
        assert fit is not None, name
        assert fit[0][:2, 2] == pytest.approx([-11.0, 7.0], abs=0.5), name


def test_brisk_describes_its_strongest_keypoints_as_describing_all_of_them_would() -> None:
    """BRISK describes only the keypoints it keeps (detecting and describing at once described all 14 000-17 000 of
    a nuclei image's): the kept points and their descriptors are those of describing every keypoint, then keeping."""
    image = speckled(2)
    mask = np.ones(image.shape, bool)
    image8 = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(to_uint8(image))  # as describe prepares it
    every, descriptors = cv2.BRISK_create(thresh=10).detectAndCompute(image8, mask.astype(np.uint8))
    assert len(every) > MAX_KEYPOINTS
    strongest = np.sort(np.argsort(-np.array([k.response for k in every]), kind="stable")[:MAX_KEYPOINTS])
    described = describe(image, mask)["brisk"]
    np.testing.assert_array_equal(described.points, np.float32([every[i].pt for i in strongest]))
    np.testing.assert_array_equal(described.descriptors, descriptors[strongest])


@pytest.mark.parametrize("threads", [2, 4])
def test_both_images_described_side_by_side_as_one_after_the_other(threads: int) -> None:
    """The two images' descriptions run side by side, OpenCV's threads split between them: every detector's points
    and descriptors are those of describing one image after the other, and the process's thread count is back."""
    reference = speckled(3, (192, 240))
    moving = np.roll(reference, (5, -9), axis=(0, 1))
    mask = np.ones(reference.shape, bool)
    mask[:40] = False
    before = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        side_by_side = describe_both(reference, mask, moving, mask)
        assert cv2.getNumThreads() == threads
        cv2.setNumThreads(1)
        one_after_the_other = describe(reference, mask), describe(moving, mask)
    finally:
        cv2.setNumThreads(before)
    for found, expected in zip(side_by_side, one_after_the_other, strict=True):
        assert found.keys() == expected.keys()
        for name in found:
            np.testing.assert_array_equal(found[name].points, expected[name].points, err_msg=name)
            np.testing.assert_array_equal(found[name].descriptors, expected[name].descriptors, err_msg=name)


@pytest.mark.parametrize("agree", [True, False])
def test_the_rotation_search_runs_only_where_no_two_detectors_agree(monkeypatch: pytest.MonkeyPatch,
                                                                     agree: bool) -> None:
    """Two detectors' fits within one edge sigma confirm the pose; fits that scatter leave the search to find it."""
    texture = speckled(3, (160, 200))
    mask = np.ones(texture.shape, bool)
    scorer = AlignmentScorer(texture, mask)

    def shifted(dx: float) -> np.ndarray:
        return np.array([[1.0, 0.0, dx], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])

    second = 4.3 if agree else 8.0  # edge sigmas: the first fit lies at 4
    fits = [Candidate("a", shifted(4 * scorer.sigma)), Candidate("b", shifted(second * scorer.sigma))]
    searched: list[bool] = []
    monkeypatch.setattr(pose, "feature_candidates", lambda *args, **kwargs: list(fits))
    monkeypatch.setattr(pose, "rotation_search", lambda *args, **kwargs: searched.append(True) or [])
    refined = recorded_refinements(monkeypatch)
    image = Downsampled(texture, 1.0)
    pose.best_pose(scorer, image, image, mask, RegistrationSettings(), 1.0)
    assert searched == ([] if agree else [True])
    # the fits are refined either way (the two that agree lie in one basin: refined once)
    assert len(refined) == (2 if agree else 3)


def test_starts_within_one_edge_sigma_of_a_refined_one_are_refined_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Detectors that find the same pose (four of them, on a nuclei image) give starts that end in one basin of the
    edge correlation: only the best-scoring of those is refined; a start further than one sigma away still is."""
    texture = speckled(3, (160, 200))
    mask = np.ones(texture.shape, bool)
    scorer = AlignmentScorer(texture, mask)
    base = 4 * scorer.sigma  # the fits' pose: four sigma from the unregistered placement

    def shifted(dx: float) -> np.ndarray:
        return np.array([[1.0, 0.0, dx], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])

    fits = [Candidate("a", shifted(base)), Candidate("b", shifted(base + 0.3 * scorer.sigma)),
            Candidate("c", shifted(base - 0.3 * scorer.sigma)), Candidate("far", shifted(base + 3 * scorer.sigma))]
    monkeypatch.setattr(pose, "feature_candidates", lambda *args, **kwargs: list(fits))
    monkeypatch.setattr(pose, "rotation_search", lambda *args, **kwargs: [])
    refined = recorded_refinements(monkeypatch)
    image = Downsampled(texture, 1.0)
    pose.best_pose(scorer, image, image, mask, RegistrationSettings(), 1.0)
    # the unregistered placement and one of the three close fits, and the far one
    assert len(refined) == 3
    assert sum(abs(pull[0, 2] - base) < scorer.sigma for pull in refined) == 1
    assert any(pull[0, 2] == pytest.approx(base + 3 * scorer.sigma) for pull in refined)

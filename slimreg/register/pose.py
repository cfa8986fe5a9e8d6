"""The light engine's pose search: every candidate pose (unregistered, one per feature detector, the rotation
search where no two detectors agree) scored, the plausible ones refined both ways, the best edge correlation kept;
and the conversions between level-0 and working-frame matrices the engine's steps share (slimreg.register.feature,
module docstring, step 2)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from slimreg.io.read import Downsampled
from slimreg.register.initial import Candidate, Described, feature_candidates, rotation_search
from slimreg.register.plausibility import plausibility_problem
from slimreg.register.refine import edge_maps, refine_both_ways, side_by_side
from slimreg.register.settings import RegistrationSettings
from slimreg.register.similarity import (
    AlignmentScorer,
    finite_or_worst,
)
from slimreg.transform import Transform


def to_working(level0: np.ndarray, reference: Downsampled, moving: Downsampled) -> np.ndarray:
    """A level-0 pull matrix in working frames."""
    return np.linalg.inv(moving.level0_matrix()) @ level0 @ reference.level0_matrix()

def to_level0(pull: np.ndarray, reference: Downsampled, moving: Downsampled) -> np.ndarray:
    """A working-frame pull matrix at level 0."""
    return moving.level0_matrix() @ pull @ np.linalg.inv(reference.level0_matrix())

def corner_distance(pull: np.ndarray, other: np.ndarray, shape: tuple[int, int]) -> float:
    """Largest distance (working px) between where two pulls send the reference frame's corners."""
    height, width = shape
    corners = np.array([[0, 0, 1], [width - 1, 0, 1], [0, height - 1, 1], [width - 1, height - 1, 1]], float)
    return float(np.abs((corners @ pull.T - corners @ other.T)[:, :2]).max())

class FoundPose(NamedTuple):
    """What the pose search found: the winning working pull matrix, the name of the candidate it came from, its edge
    correlation (-inf where no pose shares tissue), and the detectors whose own fits place the reference frame
    within one edge sigma of it (``corroborating``)."""

    pull: np.ndarray
    winner: str
    value: float
    corroborated_by: tuple[str, ...]


def best_pose(scorer: AlignmentScorer, ref: Downsampled, mov: Downsampled, mov_mask: np.ndarray,
              settings: RegistrationSettings, expected: float,
              unregistered_value: float | None = None,
              reference_described: dict[str, Described] | None = None,
              moving_described: dict[str, Described] | None = None) -> FoundPose:
    """The best-scoring pose among the unregistered placement, every candidate and every candidate refined both ways
    (module docstring, step 2). ``unregistered_value``: the unregistered placement's edge correlation where the
    caller has scored it already; ``reference_described``, ``moving_described``: the images' keypoints
    (slimreg.register.initial.describe) where the caller has them already."""
    ref_mask = scorer.mask
    unregistered = to_working(np.eye(3), ref, mov)

    def plausible(candidate: Candidate) -> bool:
        return plausibility_problem(to_level0(candidate.pull, ref, mov), expected, settings.allow_mirror) is None

    features = [candidate for mirror in ((False, True) if settings.allow_mirror else (False,))
                for candidate in feature_candidates(ref.array, mov.array, ref_mask, mov_mask, mirror=mirror,
                                                    reference_described=reference_described,
                                                    moving_described=moving_described)]
    candidates = [Candidate("unregistered", unregistered), *features]
    if not detectors_agree([c for c in features if plausible(c)], scorer.sigma, ref.array.shape):
        # tissue masks found at different working resolutions differ in area by more than the tissue does (porous
        # tissue fills in at the coarser one): there the scale the pixel sizes imply is searched too
        resolutions_differ = not np.isclose(ref.scale, mov.scale, rtol=0.01)
        candidates.extend(rotation_search(
            ref.array, mov.array, ref_mask, mov_mask, scorer.sigma, mirror=settings.allow_mirror,
            expected_scale=expected * ref.scale / mov.scale if resolutions_differ else None))
    plausible_candidates = [c for c in candidates if plausible(c)]
    # every plausible candidate is refined: a start's score does not predict where refinement takes it
    # (shared kidney pair: BRISK starts at 0.048 and refines to 0.306, AKAZE starts at 0.114 and stops at
    # 0.152; refining only the best three starts lost the true pose once the image was enlarged 20x)
    starts = [(scorer.score(mov.array, c.pull, mov_mask, ring=False).value, c) for c in plausible_candidates]
    ranked = [(value, c) for value, c in sorted(starts, key=lambda item: -item[0]) if np.isfinite(value)]
    # no tissue in common where the image lies (a section far off on its slide) scores nan: anything beats it
    best, winner = unregistered, "unregistered"
    if unregistered_value is None:
        unregistered_value = scorer.score(mov.array, unregistered, mov_mask, ring=False).value
    best_value = finite_or_worst(unregistered_value)
    # a start within one edge sigma of a better-scoring one that is refined lies in the same basin of the edge
    # correlation (refinement begins with edges blurred at twice that sigma) and would end where it did
    refined: list[np.ndarray] = []
    is_refined: list[bool] = []
    for _, candidate in ranked:
        is_refined.append(all(corner_distance(candidate.pull, other, ref.array.shape) >= scorer.sigma
                              for other in refined))
        if is_refined[-1]:
            refined.append(candidate.pull)
    edges = edge_maps(ref.array, mov.array, scorer.sigma) if refined else None
    outcomes = iter(side_by_side(refined, lambda start: refine_both_ways(
        ref.array, mov.array, ref_mask, start, scorer.sigma, settings.transform_model, mov_mask, edges)))
    for (start_value, candidate), refine in zip(ranked, is_refined, strict=True):
        # the start stays in the running: refinement maximises its own metric at its own resolutions, and
        # where the images also move locally it can end lower than it began (shared calcium frames: a start
        # at 0.442 refined to 0.371)
        if start_value > best_value:
            best, best_value, winner = candidate.pull, start_value, candidate.name
        for pull in next(outcomes) if refine else []:
            if plausibility_problem(to_level0(pull, ref, mov), expected, settings.allow_mirror) is not None:
                continue
            value = scorer.score(mov.array, pull, mov_mask, ring=False).value
            if value > best_value:
                best, best_value, winner = pull, value, candidate.name
    fits = [candidate for candidate in features if plausible(candidate)]
    return FoundPose(best, winner, best_value, corroborating(best, fits, scorer.sigma, ref.array.shape))

def detectors_agree(fits: list[Candidate], sigma: float, shape: tuple[int, int]) -> bool:
    """Whether two detectors' fits place the reference frame's corners within one edge sigma of each other.

    The rotation search is the fallback for pairs that no detector finds. Detectors find and describe different
    structures and RANSAC keeps only what their own matches agree on, so two of them landing within the edges' own
    blur of each other is not chance: the pose is found, and every fit is still refined (a 1024 px nuclei pair: all
    four within 0.04 sigma; the shared section pairs across stains: the closest two 3.7-12.8 sigma apart, so the
    search runs there as before; docs/accuracy.md, "Eighth attempt")."""
    return any(corner_distance(first.pull, second.pull, shape) < sigma
               for index, first in enumerate(fits) for second in fits[index + 1:])


def corroborating(pull: np.ndarray, fits: list[Candidate], sigma: float, shape: tuple[int, int]) -> tuple[str, ...]:
    """The detectors whose fits place the reference frame's corners within one edge sigma of ``pull``.

    Two of them make the pose corroborated: each detector finds and describes its own structures and RANSAC keeps
    only what its own matches agree on, so two that land within the edges' own blur of the result have measured it
    twice, independently of the score that picked it. On unrelated images no two detectors produced plausible fits
    at all (72 pairings of the shared images, kidney, lung, IF rounds, calcium frames and nuclei, as they are and
    varied); on the same tissue the fits that agree rest on tens to thousands of inliers each (docs/accuracy.md,
    "Seventeenth attempt")."""
    return tuple(candidate.name.split(" (")[0] for candidate in fits
                 if corner_distance(candidate.pull, pull, shape) < sigma)


def affine_through(transform: Transform, ref: Downsampled, mov: Downsampled, ref_mask: np.ndarray) -> np.ndarray:
    """The working-frame pull matrix that best follows a whole transform, field included, over the reference tissue
    (least squares). VALIS' affine is its rigid step alone, 10 px off its result on the shared kidney pair
    (``check_against_mirror``); the reflection a self-symmetry check derived from it would be off as far."""
    ys, xs = np.nonzero(ref_mask)
    step = max(1, xs.size // 4000)  # a few thousand tissue points fix six parameters
    points = np.stack([xs[::step], ys[::step]], axis=1).astype(np.float64)
    if len(points) < 3:
        return to_working(transform.affine, ref, mov)
    source = mov.from_level0(transform.pull(ref.to_level0(points)))
    solution, *_ = np.linalg.lstsq(np.hstack([points, np.ones((len(points), 1))]), source, rcond=None)
    return np.vstack([solution.T, [0.0, 0.0, 1.0]])

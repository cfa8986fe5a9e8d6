"""The light engine (no torch): robust initial alignment, edge-based refinement, guarded non-rigid step.

Steps, every one scored with the same stain-robust measure (slimreg.register.similarity) before it is kept:

1. Working images at half ``processing_dim``: a stain-agnostic grey (optical density for brightfield, the
   nuclear channel for fluorescence) and a tissue mask each (slimreg.register.preprocess), of the tissue's box
   where the slide around it is mostly glass (slimreg.register.tissue_crop).
2. Candidates: leaving the image as it is, one similarity fit per feature detector (AKAZE, SIFT, BRISK,
   FAST + BoostDesc), and a detector-free rotation search (any angle, any offset; mirrored too with
   ``allow_mirror``) that proposes the best edge correlations and the best overlaps of the tissue outlines.
   Every plausible candidate is refined (affine or similarity, SimpleITK, edge maps coarse to fine),
   counting the reference tissue carried off the moving image at every level, and also at the finest only where
   the moving tissue reaches its image's border (slimreg.register.refine); the best-scoring pose, refined either
   way or as it started, wins.
3. The winner is polished at ``micro_dim`` (``processing_dim`` without micro) and kept only if it scores higher.
4. Non-rigid: dense optical flow between the affinely placed pair at ``non_rigid_dim``, smoothed on tissue (over
   2 % and 8 % of the image). Candidates: DIS flow estimated on intensities and on edge maps (each both ways and
   averaged, so that maps estimated in opposite directions undo each other), tried only where the two agree (the
   shared motion is at least twice their disagreement); and DeepFlow on local contrast, tried only where the motion
   it finds is resolvable (its median over tissue is at least one edge-smoothing sigma: a bent section stained
   differently); and, where the moving tissue lies in separate pieces, one correction per piece
   (slimreg.register.pieces: a torn section, lobes, fragments that moved apart). A candidate is kept only if it
   raises both the edge score and the mutual information; the highest edge score wins, except that the same
   DeepFlow smoothed only at one edge sigma must beat every smoother field clearly (by two noise sd): it has the
   more freedom to fit noise.
5. The result must be significant (it stands out from unrelated placements), keep most of the smaller tissue on
   the other's, beat the best pose the same search finds for the moving image's mirror image (without
   ``allow_mirror``; unless the image is its own mirror image, slimreg.register.symmetry), and beat the
   unregistered placement (slimreg.register.similarity); otherwise the image fails with a message, and nothing
   is written for it. The affine is judged before the polish.

Every array is at a working size set by the preset, so memory does not depend on the image's size.
Matrices: ``pull`` maps reference working px -> moving working px; level 0 by ``Downsampled.level0_matrix``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from slimreg.errors import RegistrationError
from slimreg.io.read import Downsampled, TiffImage
from slimreg.metrics import mutual_information
from slimreg.register.channel import registration_image
from slimreg.register.initial import Candidate, Described, describe, feature_candidates, relocated, rotation_search
from slimreg.register.pieces import piece_field
from slimreg.register.plausibility import check_plausible, expected_scale, plausibility_problem
from slimreg.register.preprocess import blur, edge_map, local_contrast, tissue_mask, to_uint8
from slimreg.register.refine import refine_affine, refine_both_ways
from slimreg.register.settings import RegistrationSettings
from slimreg.register.similarity import (
    MIN_SIGNIFICANCE,
    AlignmentScorer,
    Score,
    check_result,
    clearly_higher,
    finite_or_worst,
    mirror_problem,
    place_through,
    refuse,
)
from slimreg.register.symmetry import self_symmetry
from slimreg.register.tissue_crop import tissue_image
from slimreg.transform import Displacement, Transform

FLOW_GRID_FACTOR = 4
# How far flow is smoothed, as a share of the image; each is a candidate (the edge score picks).
FLOW_SMOOTHING_FRACTIONS = (0.02, 0.08)
# A field is kept only where two flows estimated independently, one on intensities and one on edge maps,
# agree. Each is the true motion t plus its own noise n: they differ by about sqrt(2) n and each is about
# sqrt(t^2 + n^2) long, so a disagreement below sqrt(2/5) of their length means the shared motion is at least
# twice the noise. Measured: the calcium frames (real motion) 0.30-0.54; every shared section pair across stains
# 1.07-1.77, where every field made the landmarks worse (benchmarks/flow_agreement.py, docs/accuracy.md).
FLOW_AGREEMENT = float(np.sqrt(2 / 5))
# Differently stained sections give no second estimate to agree with (DIS on edges fits other structure than DIS
# on intensities), yet sections do bend. DeepFlow (VALIS' flow) on local contrast, smoothed on tissue, is tried
# when the motion it finds is resolvable: its median over tissue is at least one edge-smoothing sigma, the blur of
# the structures every measure here compares; finer motion cannot be told from noise by them. Measured
# (docs/accuracy.md, "Deformed sections"): on the shared pairs as they are, and under uneven light, the median
# motion is 0.20-0.99 sigma; on the bent variant it is 0.90-3.89 sigma, and the three fields above one sigma take
# those directions from 15.7 / 9.5 / 9.0 px to 5.4 / 5.1 / 7.1 px.
RESOLVABLE_MOTION_SIGMAS = 1.0


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


def best_pose(scorer: AlignmentScorer, ref: Downsampled, mov: Downsampled, mov_mask: np.ndarray,
              settings: RegistrationSettings, expected: float,
              unregistered_value: float | None = None,
              reference_described: dict[str, Described] | None = None,
              moving_described: dict[str, Described] | None = None) -> tuple[np.ndarray, str, float]:
    """The best-scoring pose (working pull matrix) among the unregistered placement, every candidate and every
    candidate refined both ways, the name of the candidate it came from (module docstring, step 2) and its edge
    correlation (-inf where no pose shares tissue). ``unregistered_value``: the unregistered placement's edge
    correlation where the caller has scored it already; ``reference_described``, ``moving_described``: the images'
    keypoints (slimreg.register.initial.describe) where the caller has them already."""
    ref_mask = scorer.mask
    unregistered = to_working(np.eye(3), ref, mov)

    def plausible(candidate: Candidate) -> bool:
        return plausibility_problem(to_level0(candidate.pull, ref, mov), expected, settings.allow_mirror) is None

    features = [candidate for mirror in ((False, True) if settings.allow_mirror else (False,))
                for candidate in feature_candidates(ref.array, mov.array, ref_mask, mov_mask, mirror=mirror,
                                                    reference_described=reference_described,
                                                    moving_described=moving_described)]
    candidates = [Candidate("unregistered", unregistered), *features]
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
    refined: list[np.ndarray] = []
    for start_value, candidate in ranked:
        # the start stays in the running: refinement maximises its own metric at its own resolutions, and
        # where the images also move locally it can end lower than it began (shared calcium frames: a start
        # at 0.442 refined to 0.371)
        if start_value > best_value:
            best, best_value, winner = candidate.pull, start_value, candidate.name
        # a start within one edge sigma of a better-scoring one that was refined lies in the same basin of the
        # edge correlation (refinement begins with edges blurred at twice that sigma) and would end where it did
        if any(corner_distance(candidate.pull, other, ref.array.shape) < scorer.sigma for other in refined):
            continue
        refined.append(candidate.pull)
        for pull in refine_both_ways(ref.array, mov.array, ref_mask, candidate.pull, scorer.sigma,
                                     settings.transform_model, mov_mask):
            if plausibility_problem(to_level0(pull, ref, mov), expected, settings.allow_mirror) is not None:
                continue
            value = scorer.score(mov.array, pull, mov_mask, ring=False).value
            if value > best_value:
                best, best_value, winner = pull, value, candidate.name
    return best, winner, best_value


def mirror_decoy(scorer: AlignmentScorer, ref: Downsampled, mov: Downsampled, mov_mask: np.ndarray,
                 settings: RegistrationSettings, expected: float,
                 reference_described: dict[str, Described] | None = None) -> tuple[float, np.ndarray]:
    """The edge correlation of the best pose the same search finds for the moving image's mirror image: what an
    image of the same kind that does not belong there reaches with the same effort (slimreg.register.similarity,
    "The mirror decoy"), and that pose (reference working px -> the flipped image's). Only without
    ``allow_mirror``, where no mirrored pose can be the answer."""
    flipped = Downsampled(np.ascontiguousarray(mov.array[:, ::-1]), mov.scale, mov.origin)
    flipped_mask = np.ascontiguousarray(mov_mask[:, ::-1])
    pull, _, value = best_pose(scorer, ref, flipped, flipped_mask, settings, expected,
                               reference_described=reference_described)
    return value, pull


def mirror_null(result: Score, mirror: float, decoy_pull: np.ndarray, result_pull: np.ndarray,
                mov: Downsampled, mov_mask: np.ndarray, stats: dict[str, float | str]) -> float | None:
    """The mirror image's best edge correlation as the null the result must beat, or None where the decoy is this
    same tissue: the result fits no better than the decoy and the moving image matches itself inside its tissue
    through the reflection the two poses imply (bilaterally symmetric tissue; slimreg.register.symmetry)."""
    stats["mirror_edge_correlation"] = mirror
    if mirror_problem(result, mirror) is not None:
        symmetry = self_symmetry(mov.array, mov_mask, result_pull, decoy_pull)
        stats["mirror_self_symmetry_significance"] = symmetry.significance
        if symmetry.significance >= MIN_SIGNIFICANCE:
            return None
    stats["mirror_null"] = mirror  # slimreg.register.judgement reuses it rather than search again
    return mirror


def check_against_mirror(reference: TiffImage, moving: TiffImage, reference_channel: int | str,
                         moving_channel: int | str, settings: RegistrationSettings, transform: Transform
                         ) -> dict[str, float | str]:
    """The mirror-decoy rule for a result found elsewhere (VALIS'), in the light engine's search frames, where the
    decoy is searched; raises the clear failure, or returns what was measured (the mirror image's best edge
    correlation and, where the decoy fitted as well, the moving image's self-symmetry).

    The whole transform is placed, field included: VALIS' affine is its rigid step alone, which on the shared kidney
    pair is 10.3 px off and scored 0.058 there, against 0.096 for the mirror image, refusing a 3.76 px result."""
    search_dim = settings.search_dim
    ref, ref_mask = tissue_image(reference, reference_channel, search_dim)
    mov, mov_mask = tissue_image(moving, moving_channel, search_dim)
    scorer = AlignmentScorer(ref.array, ref_mask)
    mirror, decoy_pull = mirror_decoy(scorer, ref, mov, mov_mask, settings, expected_scale(reference, moving))
    placed = place_through(ref, mov, transform)
    placed_mask = place_through(ref, Downsampled(mov_mask.astype(np.float32), mov.scale, mov.origin), transform) > 0.5
    stats: dict[str, float | str] = {}
    result = scorer.score_placed(placed, placed_mask)
    null = mirror_null(result, mirror, decoy_pull, affine_through(transform, ref, mov, ref_mask), mov, mov_mask,
                       stats)
    problem = mirror_problem(result, null)
    if problem is not None:
        refuse(problem, moving.info.path)
    return stats


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


class FeatureEngine:
    """Candidates -> scored -> refined -> judged; see the module docstring."""

    name = "feature"

    def register_pair(self, reference: TiffImage, moving: TiffImage, reference_channel: int | str,
                      moving_channel: int | str, settings: RegistrationSettings) -> Transform:
        path = moving.info.path
        search_dim = settings.search_dim
        ref, ref_mask = tissue_image(reference, reference_channel, search_dim)
        mov, mov_mask = tissue_image(moving, moving_channel, search_dim)
        if not ref_mask.any():
            raise RegistrationError("the reference shows no tissue in its registration channel (blank or "
                                    "saturated), so nothing can be registered onto it.", reference.info.path,
                                    "check the reference image, or choose another --channel.")
        if not mov_mask.any():
            raise RegistrationError("shows no tissue in its registration channel (blank or saturated).", path,
                                    "check the image, or choose another --channel.")
        scorer = AlignmentScorer(ref.array, ref_mask)
        unregistered = to_working(np.eye(3), ref, mov)
        expected = expected_scale(reference, moving)
        identity_score = scorer.score(mov.array, unregistered, mov_mask)
        # the reference's keypoints serve the search and its mirror decoy alike, and both images' the per-piece fits
        described, mov_described = describe(ref.array, ref_mask), describe(mov.array, mov_mask)
        best, winner, _ = best_pose(scorer, ref, mov, mov_mask, settings, expected, identity_score.value, described,
                                    mov_described)
        # the ring of shifted copies (significance) is needed for the winner only
        unmoved = np.array_equal(best, unregistered)
        best_score = identity_score if unmoved else scorer.score(mov.array, best, mov_mask)
        affine = to_level0(best, ref, mov)
        stats: dict[str, float | str] = {"initial": winner, **identity_score.to_json("unregistered_"),
                                         **best_score.to_json("affine_")}
        moved = corner_distance(best, unregistered, ref.array.shape)
        check_result(best_score, identity_score, moved, path)
        if not settings.allow_mirror:  # the search again, for the mirror image: only for a result worth keeping
            mirror, decoy_pull = mirror_decoy(scorer, ref, mov, mov_mask, settings, expected, described)
            check_result(best_score, identity_score, moved, path,
                         mirror_null(best_score, mirror, decoy_pull, best, mov, mov_mask, stats))
        if settings.micro and max(reference.info.width, reference.info.height) > search_dim:
            affine = self._polish(reference, moving, reference_channel, moving_channel, affine, settings, expected)
        check_plausible(affine, path, expected, settings.allow_mirror)
        displacement = None
        if settings.non_rigid:
            displacement, flow_stats = self._non_rigid(reference, moving, reference_channel, moving_channel, affine,
                                                       settings, SearchKeypoints(ref, described, mov, mov_described))
            stats.update(flow_stats)
        return Transform(affine, displacement, (reference.info.height, reference.info.width),
                         (moving.info.height, moving.info.width), metadata={"engine": self.name, "quality": stats})

    @staticmethod
    def _polish(reference: TiffImage, moving: TiffImage, reference_channel: int | str, moving_channel: int | str,
                affine: np.ndarray, settings: RegistrationSettings, expected: float) -> np.ndarray:
        """Refine the affine at the finest working size; keep it only if the score there improves."""
        ref, ref_mask = tissue_image(reference, reference_channel, settings.micro_dim)
        mov, mov_mask = tissue_image(moving, moving_channel, settings.micro_dim)
        scorer = AlignmentScorer(ref.array, ref_mask)
        start = to_working(affine, ref, mov)
        pull = refine_affine(ref.array, mov.array, ref_mask, start, scorer.sigma, settings.transform_model,
                             iterations=100, shrink_factors=(2, 1), sampling=0.25, edge_scales=(1.0,))
        polished = to_level0(pull, ref, mov)
        if plausibility_problem(polished, expected, settings.allow_mirror) is not None:
            return affine
        before = scorer.score(mov.array, start, mov_mask, ring=False).value
        after = scorer.score(mov.array, pull, mov_mask, ring=False).value
        return polished if after > before else affine

    def _non_rigid(self, reference: TiffImage, moving: TiffImage, reference_channel: int | str,
                   moving_channel: int | str, affine: np.ndarray,
                   settings: RegistrationSettings, keypoints: SearchKeypoints | None = None
                   ) -> tuple[Displacement | None, dict[str, float | str]]:
        """Smooth displacement (reference frame) from optical flow on the affinely placed pair, if it helps.
        ``keypoints``: the search's, which the per-piece fits reuse (found anew without them)."""
        ref, scorer, placed, placed_mask = placed_for_flow(reference, moving, reference_channel, moving_channel,
                                                           affine, settings.non_rigid_dim)
        ref_mask = scorer.mask
        region = ref_mask | placed_mask  # tissue of either image: where the fields are estimated and judged
        # with its ring: a finer field must beat the smoother ones by more than that noise
        placed_score = scorer.score_placed(placed, placed_mask)
        before = placed_score.value
        information_before = mutual_information(ref.array, placed, region)
        height, width = ref.array.shape
        grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
        deformation, finer = deformation_candidates(scorer, placed, region)
        # the finer field last, so that it is weighed against every smoother one
        candidates = [*field_candidates(scorer, placed, region), deformation,
                      *piece_candidates(scorer, placed, placed_mask, settings.transform_model,
                                        None if keypoints is None else keypoints.on(ref, affine)), finer]
        best: FieldCandidate | None = None
        best_value = before
        for candidate in candidates:
            if not candidate.admissible:
                continue
            flow = candidate.flow
            unwarped = cv2.remap(placed, grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_LINEAR)
            unwarped_mask = cv2.remap(placed_mask.astype(np.uint8), grid_x + flow[..., 0], grid_y + flow[..., 1],
                                      cv2.INTER_NEAREST) > 0
            value = scorer.score_placed(unwarped, unwarped_mask, ring=False).value
            # an admissible field must still raise both the edge score and, as an independent witness, mutual
            # information
            information = mutual_information(ref.array, unwarped, ref_mask | unwarped_mask)
            gain = (clearly_higher(value, best_value, placed_score.ring_std) if candidate is finer
                    else value > best_value)
            if gain and information > information_before:
                best, best_value = candidate, value
        stats: dict[str, float | str] = {
            "non_rigid_edge_correlation_before": before, "non_rigid_edge_correlation_after": best_value,
            **{f"non_rigid_flow_disagreement_{c.smoothing}": c.disagreement
               for c in candidates if np.isfinite(c.disagreement)},
            "non_rigid_deepflow_motion_sigmas": deformation.motion,
            **{f"non_rigid_{c.source}_motion_sigmas": c.motion for c in candidates if c.source == PIECES}}
        if best is None:
            return None, {**stats, "non_rigid_used": 0.0}
        stats["non_rigid_field"] = best.source
        stats["non_rigid_field_smoothing"] = best.smoothing
        factor = FLOW_GRID_FACTOR if min(height, width) >= 16 * FLOW_GRID_FACTOR else 1
        gh, gw = height // factor, width // factor
        blocks = best.flow[: gh * factor, : gw * factor].reshape(gh, factor, gw, factor, 2).mean(axis=(1, 3))
        displacement = Displacement(blocks[..., 0] * ref.scale, blocks[..., 1] * ref.scale, spacing=ref.scale * factor)
        return displacement, {**stats, "non_rigid_used": 1.0,
                              "max_displacement_px": float(np.hypot(displacement.dx, displacement.dy).max())}


@dataclass(frozen=True)
class SearchKeypoints:
    """Both images' keypoints as the search found them (slimreg.register.initial.describe), in its working frames."""

    reference: Downsampled
    reference_described: dict[str, Described]
    moving: Downsampled
    moving_described: dict[str, Described]

    def on(self, grid: Downsampled, affine: np.ndarray) -> tuple[dict[str, Described], dict[str, Described]]:
        """The reference's keypoints on ``grid`` (a working frame of the reference), and the moving image's where
        ``affine`` (level-0 pull) places them on it: the per-piece fits match these instead of detecting anew
        (detection at the non-rigid size took 16 s of the 17 s the pieces of a 1024 px nuclei pair cost)."""
        to_grid = np.linalg.inv(grid.level0_matrix())
        return (relocated(self.reference_described, to_grid @ self.reference.level0_matrix()),
                relocated(self.moving_described, to_grid @ np.linalg.inv(affine) @ self.moving.level0_matrix()))


AGREEING = "agreeing flows"
DEEPFLOW = "deepflow"
PIECES = "pieces"


@dataclass(frozen=True)
class FieldCandidate:
    """A smoothed field (working px, reference grid) and the evidence that it is motion, not noise: how far its
    two estimates disagreed (``AGREEING``), or, for a single estimate (``DEEPFLOW``), its median motion over
    tissue in edge-smoothing sigmas."""

    smoothing: float
    disagreement: float
    flow: np.ndarray
    motion: float = float("nan")
    source: str = AGREEING

    @property
    def admissible(self) -> bool:
        """Whether the field may be tried at all (it must then still raise the edge score and mutual information)."""
        if self.source in (DEEPFLOW, PIECES):
            return self.motion >= RESOLVABLE_MOTION_SIGMAS
        return self.disagreement < FLOW_AGREEMENT


def placed_for_flow(reference: TiffImage, moving: TiffImage, reference_channel: int | str,
                    moving_channel: int | str, affine: np.ndarray,
                    dim: int) -> tuple[Downsampled, AlignmentScorer, np.ndarray, np.ndarray]:
    """The reference at ``dim``, its scorer, and the moving image and its mask placed on it by ``affine``."""
    ref = registration_image(reference, reference_channel, dim)
    mov = registration_image(moving, moving_channel, dim)
    scorer = AlignmentScorer(ref.array, tissue_mask(ref.array))
    placed, placed_mask = scorer.place(mov.array, to_working(affine, ref, mov))
    return ref, scorer, placed, placed_mask


def field_candidates(scorer: AlignmentScorer, placed: np.ndarray, region: np.ndarray) -> list[FieldCandidate]:
    """Flow estimated on intensities and on edge maps, smoothed at each fraction; each candidate is their mean.

    Whether the two agree is judged on the flows from the reference to the placed image, the estimates
    ``FLOW_AGREEMENT`` was measured on. Where they agree, the field averages each with the flow estimated the other
    way (``_both_ways``); a candidate that may not be tried keeps the one-way mean, for reports only, and costs no
    flows the other way. Judged on the averaged flows instead, the bent lung proSPC <- H&E pair, whose one-way flows
    agree just inside the limit (0.630, 0.622), fell outside it (0.732, 0.673) and lost its field (5.94 -> 7.05 px)."""
    # the scorer holds the reference's edges
    pairs = ((scorer.reference, placed), (_unit(scorer.edges), _unit(edge_map(placed, scorer.sigma))))
    forward = [_flow(reference, moved) for reference, moved in pairs]
    candidates = []
    for smoothing in FLOW_SMOOTHING_FRACTIONS:
        first, second = (_regularise(flow, region, smoothing) for flow in forward)
        # two witnesses of one motion: their mean carries the motion with sqrt(2) less noise than either
        candidates.append(FieldCandidate(smoothing, _disagreement(first, second, region), (first + second) / 2))
    if not any(candidate.admissible for candidate in candidates):
        return candidates
    # one flow at a time: the step's peak memory stays near that of one-way flows
    averaged = [_both_ways(forward.pop(0), _flow(moved, reference)) for reference, moved in pairs]
    both_ways = []
    for candidate in candidates:
        if candidate.admissible:
            first, second = (_regularise(flow, region, candidate.smoothing) for flow in averaged)
            candidate = replace(candidate, flow=(first + second) / 2)
        both_ways.append(candidate)
    return both_ways


def deformation_candidates(scorer: AlignmentScorer, placed: np.ndarray, region: np.ndarray
                           ) -> tuple[FieldCandidate, FieldCandidate]:
    """DeepFlow on local contrast (slimreg.register.preprocess.local_contrast), smoothed on tissue at the finer
    fraction, and the same flow smoothed at one edge sigma; both admissible where the motion of the first is
    resolvable (``RESOLVABLE_MOTION_SIGMAS``). The caller keeps the second only where it scores clearly higher
    than every smoother field (``slimreg.register.similarity.clearly_higher``): it has the more freedom to fit
    noise.

    Pieces of a section can move apart by more than a field smoothed over 2 % of the image follows. On VALIS'
    example IHC series the smoother fields take slide 5 onto slide 1 from 0.22 to at most 0.37 edge correlation,
    DeepFlow smoothed at one edge sigma to 0.44 (4.5 noise sd more), and DeepFlow as VALIS uses it, unsmoothed, to
    0.48. One edge sigma is the finest scale the measures compare, so no field is left finer than what can judge it
    (docs/accuracy.md, "Deformed sections")."""
    deep = cv2.optflow.createOptFlow_DeepFlow()
    reference, moved = (to_uint8(local_contrast(image, scorer.sigma)) for image in (scorer.reference, placed))
    raw = deep.calc(reference, moved, None)
    smoothing = FLOW_SMOOTHING_FRACTIONS[0]
    flow = _regularise(raw, region, smoothing)
    motion = float(np.median(np.hypot(*flow[region].T)) / scorer.sigma) if region.any() else 0.0
    finest = scorer.sigma / max(placed.shape[:2])
    return (FieldCandidate(smoothing, float("nan"), flow, motion, DEEPFLOW),
            FieldCandidate(finest, float("nan"), _regularise(raw, region, finest), motion, DEEPFLOW))


def piece_candidates(scorer: AlignmentScorer, placed: np.ndarray, placed_mask: np.ndarray, model: str,
                     keypoints: tuple[dict[str, Described], dict[str, Described]] | None = None
                     ) -> list[FieldCandidate]:
    """One correction per piece of the moving tissue (slimreg.register.pieces), where there are pieces."""
    found = piece_field(scorer, placed, placed_mask, RESOLVABLE_MOTION_SIGMAS, model, keypoints)
    if found is None:
        return []
    flow, motion = found
    return [FieldCandidate(float("nan"), float("nan"), flow, motion, PIECES)]


def _unit(image: np.ndarray) -> np.ndarray:
    high = float(np.percentile(image, 99.5))
    return np.clip(image / high, 0, 1).astype(np.float32) if high > 0 else image


def _flow(reference: np.ndarray, placed: np.ndarray) -> np.ndarray:
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setFinestScale(0)
    dis.setVariationalRefinementIterations(10)
    return dis.calc(to_uint8(reference), to_uint8(placed), None)


def _both_ways(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """A flow from the reference to the placed image averaged with the reverse of ``backward``, the flow estimated
    the other way, read where ``forward`` points (for a pull ``u``, the reverse is ``-u`` there).

    A flow estimator treats its two images differently, so one direction's error is not the other's reversed, and
    maps estimated one way do not compose: registered both ways, the calcium frames' light maps came back 1.02 px
    from where they started (VALIS' 0.47), and on VALIS' example IHC slides 1-4 a->b->c missed a->c by 1.17 px where
    the affines alone missed by 0.53. Measured with the affines held fixed (docs/accuracy.md, "Flows estimated both
    ways"): calcium 1.02 -> 0.48 px, IHC slides 1-4 1.17 -> 0.99 px, edge scores within 0.014 of before."""
    height, width = forward.shape[:2]
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    reverse = [cv2.remap(backward[..., band], grid_x + forward[..., 0], grid_y + forward[..., 1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE) for band in range(2)]
    return (forward - np.stack(reverse, axis=-1)) / 2


def _disagreement(first: np.ndarray, second: np.ndarray, region: np.ndarray) -> float:
    """Median distance between two flows over ``region``, as a share of their median length (NaN if no motion)."""
    difference = np.median(np.hypot(*(first - second)[region].T)) if region.any() else float("nan")
    length = np.median((np.hypot(*first[region].T) + np.hypot(*second[region].T)) / 2) if region.any() else 0.0
    return float(difference / length) if length > 0 else float("nan")


def _regularise(flow: np.ndarray, tissue: np.ndarray, smoothing: float) -> np.ndarray:
    """Normalised convolution: smooth over tissue, fill background from nearby tissue, keep it invertible."""
    sigma = max(2.0, smoothing * max(flow.shape[:2]))
    weight = blur(tissue.astype(np.float32), sigma)
    smooth = np.empty_like(flow)
    for band in range(2):
        smooth[..., band] = blur(flow[..., band] * tissue, sigma) / np.maximum(weight, 1e-3)
    smooth[weight < 1e-3] = 0.0
    for _ in range(5):
        gradient = max(np.abs(np.gradient(smooth[..., b])).max() for b in range(2))
        if gradient < 0.5:
            break
        smooth = np.stack([blur(smooth[..., band], sigma) for band in range(2)], axis=-1)
    return smooth

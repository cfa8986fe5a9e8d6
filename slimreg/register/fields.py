"""The light engine's non-rigid candidates (slimreg.register.feature, module docstring, step 4): smoothed dense
flows on the affinely placed pair, each with the evidence that it is motion and not noise, and the per-piece
correction. Which one is kept is the engine's choice; these only propose."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import cv2
import numpy as np

from slimreg.io.read import Downsampled, TiffImage
from slimreg.register.channel import DARKNESS, OPTICAL_DENSITY, registration_image
from slimreg.register.diffeomorphic import greedy_flow
from slimreg.register.initial import Described
from slimreg.register.pieces import piece_field
from slimreg.register.pose import to_working
from slimreg.register.preprocess import (
    EDGE_SIGMA_FRACTION,
    edge_map,
    local_contrast,
    pull_onto,
    tissue_mask,
    to_uint8,
    wide_blur,
)
from slimreg.register.similarity import (
    AlignmentScorer,
    clearly_higher,
)

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
# DeepFlow is first estimated at half size (``deepflow_screen``), and at full size only where the motion found there
# is at least this share of the resolvable motion. Over the 43 shared and robustness results whose half size is
# smaller, the half-size motion was 0.68-1.38 of the full-size one (docs/accuracy.md, "Twenty-first attempt"), so
# below half a sigma at half size none of them reached the one sigma at which DeepFlow's field is tried.
DEEPFLOW_SCREEN_SHARE = 0.5
# px: the half-size images' long side must be at least this, where the edge sigma is still a fixed share of the side
# (below it ``edge_sigma`` holds at 1 px), so that motion in sigmas means the same at both sizes
MIN_SCREEN_SIDE = math.ceil(1 / EDGE_SIGMA_FRACTION)


AGREEING = "agreeing flows"
DEEPFLOW = "deepflow"
PIECES = "pieces"
DIFFEOMORPHIC = "diffeomorphic"


@dataclass(frozen=True)
class FieldCandidate:
    """A smoothed field (working px, reference grid) and the evidence that it is motion, not noise: how far its
    two estimates disagreed (``AGREEING``), or, for a single estimate (``DEEPFLOW``), its median motion over
    tissue in edge-smoothing sigmas (``motion``; for ``AGREEING``, that of the one-way mean the agreement was judged
    on)."""

    smoothing: float
    disagreement: float
    flow: np.ndarray
    motion: float = float("nan")
    source: str = AGREEING

    @property
    def admissible(self) -> bool:
        """Whether the field may be tried at all (it must then still raise the edge score and mutual information)."""
        if self.source == DIFFEOMORPHIC:
            return True
        if self.source in (DEEPFLOW, PIECES):
            return self.motion >= RESOLVABLE_MOTION_SIGMAS
        return self.disagreement < FLOW_AGREEMENT


def takes_the_lead(candidate: FieldCandidate, value: float, leader: FieldCandidate | None, leading_value: float,
                   noise: float, finer: FieldCandidate | None) -> bool:
    """Whether ``candidate``, scoring ``value``, displaces the field that leads so far (``leader``, None: the affine
    alone, scoring ``leading_value``). ``noise``: the ring's standard deviation of the score; ``finer``: the finest
    field tried, which has the most freedom to fit noise.

    Higher is enough, except where the gap is a draw between fields of unequal evidence: the finer field must beat
    the smoother ones clearly (``clearly_higher``), and so must any field that would displace one two flows agree on,
    which measured the motion twice where DeepFlow's field or the pieces' is one estimate. On the shared calcium
    frames the pieces' field scored 0.4775 against the agreeing flows' 0.4741 (0.1 ring sd) with OpenCV 4.14, and
    0.4761 against 0.4891 with 4.9; taken on that gap, then refined, it left the two directions' maps 2.94 px from
    undoing each other instead of 0.51 (docs/accuracy.md, "Twenty-eighth attempt")."""
    must_be_clear = candidate is finer or (leader is not None and leader.source == AGREEING
                                           and candidate.source != AGREEING)
    return clearly_higher(value, leading_value, noise) if must_be_clear else value > leading_value


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
        mean = (first + second) / 2
        candidates.append(FieldCandidate(smoothing, _disagreement(first, second, region), mean,
                                         median_motion(mean, region, scorer.sigma)))
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
    resolvable (``RESOLVABLE_MOTION_SIGMAS``; the engine does not estimate them where the flows of
    ``field_candidates`` agree on motion below it). The caller keeps the second only where it scores clearly higher
    than every smoother field (``slimreg.register.similarity.clearly_higher``): it has the more freedom to fit
    noise.

    Pieces of a section can move apart by more than a field smoothed over 2 % of the image follows. On VALIS'
    example IHC series the smoother fields take slide 5 onto slide 1 from 0.22 to at most 0.37 edge correlation,
    DeepFlow smoothed at one edge sigma to 0.44 (4.5 noise sd more), and DeepFlow as VALIS uses it, unsmoothed, to
    0.48. One edge sigma is the finest scale the measures compare, so no field is left finer than what can judge it
    (docs/accuracy.md, "Deformed sections")."""
    raw = _deepflow(scorer, placed)
    smoothing = FLOW_SMOOTHING_FRACTIONS[0]
    flow = _regularise(raw, region, smoothing)
    motion = median_motion(flow, region, scorer.sigma)
    finest = scorer.sigma / max(placed.shape[:2])
    return (FieldCandidate(smoothing, float("nan"), flow, motion, DEEPFLOW),
            FieldCandidate(finest, float("nan"), _regularise(raw, region, finest), motion, DEEPFLOW))


def deepflow_screen(reference: TiffImage, moving: TiffImage, reference_channel: int | str,
                    moving_channel: int | str, affine: np.ndarray, working_side: int) -> float | None:
    """DeepFlow's median motion over tissue, in edge sigmas, on the pair placed by ``affine`` at half the working
    images' long side (``working_side``): a quarter of the pixels, so a quarter of the time. Below
    ``DEEPFLOW_SCREEN_SHARE`` of the resolvable motion, the engine does not estimate DeepFlow at full size. None where
    the half-size images would be too small for their edge sigma to be the same share of the side
    (``MIN_SCREEN_SIDE``): there, motion in sigmas would read low, and DeepFlow runs at full size as before."""
    if working_side < 2 * MIN_SCREEN_SIDE:
        return None
    _, scorer, placed, placed_mask = placed_for_flow(reference, moving, reference_channel, moving_channel, affine,
                                                     working_side // 2)
    region = scorer.mask | placed_mask
    return median_motion(_regularise(_deepflow(scorer, placed), region, FLOW_SMOOTHING_FRACTIONS[0]), region,
                         scorer.sigma)


def _deepflow(scorer: AlignmentScorer, placed: np.ndarray) -> np.ndarray:
    """DeepFlow (VALIS' flow) from the reference to the placed image, on their local contrast."""
    deep = cv2.optflow.createOptFlow_DeepFlow()
    reference, moved = (to_uint8(local_contrast(image, scorer.sigma)) for image in (scorer.reference, placed))
    return deep.calc(reference, moved, None)


def diffeomorphic_candidate(reference: TiffImage, moving: TiffImage, reference_channel: int | str,
                            moving_channel: int | str, affine: np.ndarray, dim: int, grid: Downsampled,
                            region: np.ndarray, sigma: float, start: np.ndarray | None = None) -> FieldCandidate:
    """The diffeomorphic field of local NCC (slimreg.register.diffeomorphic) of the pair placed by ``affine``,
    estimated at ``dim`` both ways and averaged (``_both_ways``), read on ``grid`` (the other fields' working frame,
    edge sigma ``sigma``), with its median motion over ``region`` in edge sigmas (for reports). ``start``: a field
    on ``grid`` that the moving image is first pulled through; the result is then that field refined, the two
    composed (the start read where the refinement points, plus the refinement).

    Both ways, because one direction's estimate is biased toward its own fixed image: on the four shared section
    directions the landmarks' median went from 3.03 / 2.95 / 5.26 / 5.42 px one way to 2.45 / 2.82 / 5.11 / 5.17
    averaged, and the maps registered in opposite directions then undo each other, as the DIS fields' do.

    On a brightfield RGB pair the way back is estimated on the pair's darkness (slimreg.register.channel), the way
    there on its optical density: two greys that weigh dense and faint structure differently err less alike, so
    their mean errs less, at the cost of one direction each. Measured (docs/accuracy.md, "Two greys, one per
    direction"): the shared section pairs and their wrinkled copies 4.47 -> 4.38 px (mean of the eight medians)."""
    fine, fine_scorer, placed, _ = placed_for_flow(reference, moving, reference_channel, moving_channel, affine, dim)
    fixed, fine_sigma = fine_scorer.reference, fine_scorer.sigma
    del fine_scorer
    fixed_back, placed_back = fixed, placed
    if reference_channel == OPTICAL_DENSITY and reference.info.is_rgb and moving.info.is_rgb:
        fixed_back, placed_back = _darkness_pair(reference, moving, affine, dim)
    start_flow = None if start is None else resampled_flow(start, grid, fine)
    if start_flow is not None:
        one_grey = placed_back is placed
        placed = _pulled(placed, start_flow)
        placed_back = placed if one_grey else _pulled(placed_back, start_flow)
    # the two directions side by side: each runs mostly on one core, and on 2 cores this step is the pair's critical
    # path (memory: slimreg.estimate counts both at once)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="slimreg-field") as beside:
        pending = beside.submit(greedy_flow, placed_back, fixed_back, fine_sigma)
        forward = greedy_flow(fixed, placed, fine_sigma)
        fine_flow = _both_ways(forward, pending.result())
    del fixed, placed, fixed_back, placed_back, forward
    if start_flow is not None:
        fine_flow += np.stack([_pulled(start_flow[..., band], fine_flow) for band in range(2)], axis=-1)
        del start_flow
    flow = resampled_flow(fine_flow, fine, grid)
    return FieldCandidate(float("nan"), float("nan"), flow, median_motion(flow, region, sigma), DIFFEOMORPHIC)


def _darkness_pair(reference: TiffImage, moving: TiffImage, affine: np.ndarray,
                   dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Both brightfield RGB images' darkness at ``dim``: the reference's, and the moving image's placed on it by
    ``affine`` (glass and the border beyond the image both dark, as in the optical density)."""
    ref = registration_image(reference, DARKNESS, dim)
    mov = registration_image(moving, DARKNESS, dim)
    placed, _ = pull_onto(mov.array, np.ones(mov.array.shape, bool), to_working(affine, ref, mov), ref.array.shape)
    return ref.array, placed


def median_motion(flow: np.ndarray, region: np.ndarray, sigma: float) -> float:
    """How far ``flow`` moves the tissue: its median length over ``region``, in edge-smoothing sigmas."""
    return float(np.median(np.hypot(*flow[region].T)) / sigma) if region.any() else 0.0


def resampled_flow(flow: np.ndarray, source: Downsampled, target: Downsampled) -> np.ndarray:
    """A flow on ``source``'s grid (its px) read on ``target``'s grid (in its px): both frames of one image."""
    height, width = target.array.shape[:2]
    to_source = to_working(np.eye(3), target, source)  # target px -> source px, through level 0
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    map_x = (to_source[0, 0] * grid_x + to_source[0, 2]).astype(np.float32)
    map_y = (to_source[1, 1] * grid_y + to_source[1, 2]).astype(np.float32)
    # both frames are block averages of level 0 (no rotation): a px of the source is this share of the target's
    ratio = np.float32(source.scale / target.scale)
    return np.stack([cv2.remap(np.ascontiguousarray(flow[..., band]), map_x, map_y, cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE) * ratio
                     for band in range(2)], axis=-1)


def piece_candidates(scorer: AlignmentScorer, placed: np.ndarray, placed_mask: np.ndarray, model: str,
                     keypoints: tuple[dict[str, Described], dict[str, Described]] | None = None,
                     dense: np.ndarray | None = None) -> list[FieldCandidate]:
    """One correction per piece of the moving tissue (slimreg.register.pieces), where there are pieces. ``dense``:
    DeepFlow's field on this grid, where it was estimated: its motion of each piece is one more start."""
    found = piece_field(scorer, placed, placed_mask, RESOLVABLE_MOTION_SIGMAS, model, keypoints, dense)
    if found is None:
        return []
    flow, motion = found
    return [FieldCandidate(float("nan"), float("nan"), flow, motion, PIECES)]


def _unit(image: np.ndarray) -> np.ndarray:
    high = float(np.percentile(image, 99.5))
    return np.clip(image / high, 0, 1).astype(np.float32) if high > 0 else image


def _flow(reference: np.ndarray, placed: np.ndarray) -> np.ndarray:
    """DIS flow from the reference to the placed image, stopped at the finest pyramid scale its fields need
    (``finest_flow_scale``)."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setFinestScale(finest_flow_scale(max(reference.shape[:2]), dis.getPatchSize()))
    dis.setVariationalRefinementIterations(10)
    return dis.calc(to_uint8(reference), to_uint8(placed), None)


def finest_flow_scale(side: int, patch: int) -> int:
    """The finest pyramid scale (0: full size, s: 2^s px per pixel) at which DIS estimates a flow of an image of long
    side ``side`` px: the coarsest whose patches (``patch`` px at that scale) still fit within the finest smoothing
    every candidate gets (``_regularise``: ``FLOW_SMOOTHING_FRACTIONS[0]`` of the side). Finer estimates hold detail
    that smoothing removes: at 1024 px (smoothed at 20 px) scale 1 takes 0.11 s per flow where scale 0 took 0.41,
    and every shared and robustness result stayed as it was (docs/accuracy.md, "Twenty-third attempt"); images under
    800 px (smoothed at less than 16 px) keep scale 0."""
    sigma = _smoothing_sigma(FLOW_SMOOTHING_FRACTIONS[0], side)
    scale = 0
    while patch * 2 ** (scale + 1) <= sigma:
        scale += 1
    return scale


def _both_ways(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """A flow from the reference to the placed image averaged with the reverse of ``backward``, the flow estimated
    the other way, read where ``forward`` points (for a pull ``u``, the reverse is ``-u`` there).

    A flow estimator treats its two images differently, so one direction's error is not the other's reversed, and
    maps estimated one way do not compose: registered both ways, the calcium frames' light maps came back 1.02 px
    from where they started (VALIS' 0.47), and on VALIS' example IHC slides 1-4 a->b->c missed a->c by 1.17 px where
    the affines alone missed by 0.53. Measured with the affines held fixed (docs/accuracy.md, "Flows estimated both
    ways"): calcium 1.02 -> 0.48 px, IHC slides 1-4 1.17 -> 0.99 px, edge scores within 0.014 of before."""
    reverse = [_pulled(backward[..., band], forward) for band in range(2)]
    return (forward - np.stack(reverse, axis=-1)) / 2


def _pulled(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """One band pulled through ``flow`` (read at x + flow(x)), the border repeated beyond the image."""
    height, width = image.shape[:2]
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    return cv2.remap(np.ascontiguousarray(image), grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def _disagreement(first: np.ndarray, second: np.ndarray, region: np.ndarray) -> float:
    """Median distance between two flows over ``region``, as a share of their median length (NaN if no motion)."""
    difference = np.median(np.hypot(*(first - second)[region].T)) if region.any() else float("nan")
    length = np.median((np.hypot(*first[region].T) + np.hypot(*second[region].T)) / 2) if region.any() else 0.0
    return float(difference / length) if length > 0 else float("nan")


def _smoothing_sigma(smoothing: float, side: int) -> float:
    """The Gaussian sigma (px) a field is smoothed with: ``smoothing`` of the image's long ``side``, at least 2 px."""
    return max(2.0, smoothing * side)


def _regularise(flow: np.ndarray, tissue: np.ndarray, smoothing: float) -> np.ndarray:
    """Normalised convolution: smooth over tissue, fill background from nearby tissue, keep it invertible."""
    sigma = _smoothing_sigma(smoothing, max(flow.shape[:2]))
    weight = wide_blur(tissue.astype(np.float32), sigma)
    smooth = np.empty_like(flow)
    for band in range(2):
        smooth[..., band] = wide_blur(flow[..., band] * tissue, sigma) / np.maximum(weight, 1e-3)
    smooth[weight < 1e-3] = 0.0
    for _ in range(5):
        gradient = max(np.abs(np.gradient(smooth[..., b])).max() for b in range(2))
        if gradient < 0.5:
            break
        smooth = np.stack([wide_blur(smooth[..., band], sigma) for band in range(2)], axis=-1)
    return smooth

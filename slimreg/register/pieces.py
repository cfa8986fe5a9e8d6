"""Pieces of tissue that moved on their own: one correction per piece, as one more non-rigid candidate.

A section tears, or separate pieces (lung lobes, biopsy cores, fragments of a resection) float apart when they are
laid on the slide. One affine then fits one piece, or a compromise between them, and a smooth flow field cannot
follow the step between pieces that moved a few percent of the image apart.

Each piece of the moving tissue, as the affine places it (a connected component of its tissue mask, large enough to
be placed on its own), is refined alone (edge correlation, slimreg.register.refine, the engine's transform model)
against the reference tissue nearer to it than to any other piece, from where the affine left it, from the shift
that lays its edges best on the reference's (searched over every shift) and that shift turned a step either way, and
from one fit per feature detector (the search's keypoints, matched within the piece), and, where DeepFlow's field
was estimated, from the affine that follows that field over the piece (``flow_fit``) and that affine turned a step
either way; each start both by a sampled descent and by one on every pixel, so that the correction does not hinge on
the affine to a fraction of a pixel. Features alone were a draw on a piece with little distinct structure: on the
torn kidney H&E <- PanCK pair one piece was found only from FAST's fit of 9 inliers, which another descriptor of the
same corners placed elsewhere; the field found it (docs/accuracy.md, "Twenty-seventh attempt"). A piece that none of
these proposals finds away from where the affine put it is not refined at all (``piece_starts``): the affine
already agrees with it, so the cost follows the pieces that moved, not the number of pieces. A piece keeps its
correction only if the correction is resolvable (its median motion is at least one edge-smoothing sigma, the rule the
DeepFlow field follows), and raises both the edge correlation around the piece and the piece's significance over
unrelated placements; the others stay where the affine put them. The corrections become
one displacement field: exact inside each piece as it lands, filled between pieces from the nearest ones. Like every
field, the result must then raise both the edge score and mutual information of the whole pair to be kept
(slimreg.register.feature).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import ndimage

from slimreg.metrics import ncc
from slimreg.register.initial import Described, describe, fit_similarity
from slimreg.register.plausibility import plausibility_problem
from slimreg.register.preprocess import blur, edge_map
from slimreg.register.refine import refine_affine
from slimreg.register.similarity import MIN_RING_FRACTION, AlignmentScorer, Score

# share of pixels the stochastic refinement of a piece samples (``_correction``: each start is also refined on every
# pixel); its noise is what lets a descent off a shallow optimum on a ridge of the edge correlation
REFINE_SAMPLING = 0.25
FLOW_FIT_SAMPLES = 40_000  # grid nodes a dense flow is read at to propose a piece's motion (``flow_fit``)
MIN_FLOW_FIT_SAMPLES = 6  # twice the samples an affine needs: fewer fix it by chance


def pieces_of(mask: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Connected components of a tissue mask (a label image) and the labels of those large enough to be placed on
    their own: at least the square of the significance ring's radius (a tenth of the long side), the shift at which
    the score no longer sees overlap; smaller pieces hold too little structure at the working size and follow the
    field around them."""
    labels, count = ndimage.label(mask)
    if count < 2:
        return labels, []
    sizes = ndimage.sum(mask, labels, index=np.arange(1, count + 1))
    least = (MIN_RING_FRACTION * max(mask.shape)) ** 2
    return labels, [int(label) for label in np.flatnonzero(sizes >= least) + 1]


def piece_field(scorer: AlignmentScorer, placed: np.ndarray, placed_mask: np.ndarray,
                resolvable_sigmas: float, model: str,
                keypoints: tuple[dict[str, Described], dict[str, Described]] | None = None,
                dense: np.ndarray | None = None) -> tuple[np.ndarray, float] | None:
    """Flow (working px, reference grid; the placed image is pulled at x + flow(x)) that moves each piece of the
    placed moving tissue by its own correction, and the median motion of the pieces that moved (in edge sigmas);
    None where there are fewer than two pieces or none moved resolvably.

    The field is exact on each piece as it lands and blended between pieces; where two pieces meet it steps, as the
    tissue did when it tore, so unlike the smooth fields it is not kept invertible across that seam. Pieces are
    handled one at a time, so memory does not grow with their number; and only a piece that some start moves
    resolvably is refined (``piece_starts``), so neither does time where the affine already placed the pieces (the
    components of a nuclei image, fragments that did not move): the keypoints of both images are found once, and a
    piece costs one shift search and the matching of its own keypoints. ``keypoints``: the reference's and the
    placed image's (slimreg.register.initial.describe) on this grid, where the caller has them (the search's, placed
    by the affine); found here without them. ``dense``: a flow on this grid (DeepFlow's) whose motion of each piece
    is one more start (``flow_fit``), where the caller estimated one."""
    labels, pieces = pieces_of(placed_mask)
    if len(pieces) < 2:
        return None
    nearest = _nearest_piece(labels, pieces)
    references, placeds = keypoints or (describe(scorer.reference, scorer.mask), describe(placed, placed_mask))
    threshold = max(2.0, max(placed.shape) / 200)  # as for the whole image (slimreg.register.initial)
    corrections = []
    for index, label in enumerate(pieces):
        # each piece is fitted to the reference tissue nearer to it than to any other piece as the affine placed
        # them: tissue that belongs to another piece would pull it off (it is empty in this piece's image)
        piece, around = labels == label, scorer.mask & (nearest == index)
        alone = np.where(piece, placed, 0.0).astype(np.float32)
        fits = [found[0] for name in references
                if (found := fit_similarity(references[name], placeds[name], threshold, around, piece)) is not None]
        shift = shift_start(scorer, alone, piece)
        followed = None if dense is None else flow_fit(dense, piece, scorer.mask)
        proposals = [shift, *fits, *([] if followed is None else [followed])]
        starts = piece_starts(scorer, proposals, piece, resolvable_sigmas)
        for searched in (shift, followed):  # neither search measures the piece's turn: each is also turned
            if any(start is searched for start in starts):
                starts.extend(turned_starts(searched, piece, scorer.sigma))
        corrections.append(_correction(scorer, alone, piece, around, starts, model, resolvable_sigmas)
                           if starts else np.eye(3))
    if all(np.allclose(c, np.eye(3)) for c in corrections):
        return None
    flow, support, motions = _assemble(labels, pieces, corrections)
    if not motions:  # the pieces that moved left the frame
        return None
    return _fill_between(flow, support, scorer.sigma), float(np.median(motions)) / scorer.sigma


def piece_starts(scorer: AlignmentScorer, proposals: list[np.ndarray], piece: np.ndarray,
                 resolvable_sigmas: float) -> list[np.ndarray]:
    """The starts a piece is refined from: leaving it where the affine put it, and every proposal (the shift
    search's, one per detector) that moves the piece resolvably and differently from the others (median motion of
    its pixels at least ``resolvable_sigmas`` edge sigmas, the rule its correction must meet too); none where no
    proposal moves it resolvably.

    The shift search looks at every shift and the detectors at any pose; where neither finds the piece away from
    where the affine put it, the affine already agrees with the piece, as it does with the components of a nuclei
    image, and refining it from several starts cost seconds each (a 1024 px nuclei pair whose tissue lies in ten
    pieces: 128 s of 239 s, for no correction kept). Two proposals closer than that to each other are refined
    from the first only: the refinement's coarsest level blurs them into one start."""
    ys, xs = np.nonzero(piece)
    points = np.stack([xs, ys, np.ones_like(xs)], axis=1).astype(np.float64)
    least = resolvable_sigmas * scorer.sigma
    starts: list[np.ndarray] = []
    for proposal in proposals:
        if not np.isfinite(proposal).all() or abs(np.linalg.det(proposal[:2, :2])) < 1e-9:
            continue  # a fit collapsed onto a line (a detector's few matches in a row) places nothing
        if (median_motion(proposal, points) >= least
                and all(median_motion(proposal, points, start) >= least for start in starts)):
            starts.append(proposal)
    return [np.eye(3), *starts] if starts else []


def flow_fit(flow: np.ndarray, piece: np.ndarray, reference_mask: np.ndarray) -> np.ndarray | None:
    """The affine pull correction (reference working px -> placed px) that best follows a dense ``flow`` (reference
    grid; the placed image pulled at x + flow(x)) over the reference tissue (``reference_mask``) it pulls from
    ``piece``, least squares; None where too little of it does to fix an affine.

    A dense flow is a witness of each piece's motion that needs neither distinct features nor a start near the
    answer, and DeepFlow, built for large displacements, follows a piece that moved further than refinement reaches
    (module docstring). Only tissue counts: off it the field is filled in from the tissue around or smoothed towards
    none, which would draw the fit towards leaving the piece where it is. The flow is read on a grid of at most
    ``FLOW_FIT_SAMPLES`` nodes: six parameters need few, and the memory stays a few MB at any working size."""
    height, width = piece.shape
    stride = max(1, math.ceil(math.sqrt(height * width / FLOW_FIT_SAMPLES)))
    ys, xs = (axis.astype(np.float64) for axis in np.mgrid[0:height:stride, 0:width:stride])
    sampled = flow[::stride, ::stride].astype(np.float64)
    pulled_x, pulled_y = xs + sampled[..., 0], ys + sampled[..., 1]
    columns, rows = np.rint(pulled_x).astype(int), np.rint(pulled_y).astype(int)
    inside = (columns >= 0) & (columns < width) & (rows >= 0) & (rows < height)
    on = reference_mask[::stride, ::stride].copy()
    on[inside] &= piece[rows[inside], columns[inside]]
    on[~inside] = False
    if on.sum() < MIN_FLOW_FIT_SAMPLES:
        return None
    source = np.stack([xs[on], ys[on], np.ones(int(on.sum()))], axis=1)
    solution, _, rank, _ = np.linalg.lstsq(source, np.stack([pulled_x[on], pulled_y[on]], axis=1), rcond=None)
    if rank < 3:  # the samples lie on a line: no affine is fixed
        return None
    return np.vstack([solution.T, [0.0, 0.0, 1.0]])


def median_motion(correction: np.ndarray, points: np.ndarray, other: np.ndarray | None = None) -> float:
    """Median distance (working px) between where the pull ``correction`` lands the piece's pixels (``points``,
    homogeneous x, y, 1 rows) and where ``other`` (identity: where they are) lands them."""
    landing = points @ np.linalg.inv(correction)[:2].T
    before = points[:, :2] if other is None else points @ np.linalg.inv(other)[:2].T
    return float(np.median(np.hypot(*(landing - before).T)))


def shift_start(scorer: AlignmentScorer, alone: np.ndarray, piece: np.ndarray) -> np.ndarray:
    """The translation (a pull correction) that lays the piece's edges best on the reference's, over every shift
    that keeps at least half of the piece's extent in the frame: a start that needs neither features nor a start
    near the answer, as the best whole-image methods search thousands of shifts (ANCHORS.md: UPENN, AGH).

    A piece can move further than refinement reaches and hold too few distinct features for a detector: the torn
    lung proSPC <- H&E pair's moved piece was found by neither (15.80 px), and is by this search (6.09 px). The
    whole reference is searched, not only the tissue nearest the piece: where the affine put the piece says little
    about where it belongs (searching the nearest tissue alone: 15.31 px). The search runs on a grid half an edge
    sigma apart: the edges are smoothed by that sigma, refinement then takes the start the rest of the way, and
    the cost stays a few MB at any working size (on the four torn pairs the same medians as the full grid; a grid a
    whole sigma apart lost one, 5.44 instead of 4.87 px). The correlation is the cosine of the edge maps under the
    piece's footprint (``cv2.matchTemplate``, TM_CCORR_NORMED with a mask)."""
    step = max(1, round(scorer.sigma / 2))
    ys, xs = np.nonzero(piece)
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1

    def on_grid(image: np.ndarray) -> np.ndarray:
        image = image.astype(np.float32)
        if step == 1:
            return image
        size = (max(1, image.shape[1] // step), max(1, image.shape[0] // step))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    template = on_grid(edge_map(alone, scorer.sigma)[top:bottom, left:right])  # the piece's outline is an edge too
    footprint = on_grid(piece[top:bottom, left:right])
    pad_y, pad_x = template.shape[0] // 2, template.shape[1] // 2
    search = cv2.copyMakeBorder(on_grid(scorer.edges), pad_y, pad_y, pad_x, pad_x, cv2.BORDER_CONSTANT, value=0)
    match = cv2.matchTemplate(search, template, cv2.TM_CCORR_NORMED, mask=footprint)
    match[~np.isfinite(match)] = -1.0
    row, column = np.unravel_index(int(np.argmax(match)), match.shape)
    shift_x, shift_y = left - (column - pad_x) * step, top - (row - pad_y) * step
    return np.array([[1.0, 0.0, shift_x], [0.0, 1.0, shift_y], [0.0, 0.0, 1.0]])


def turned_starts(shift: np.ndarray, piece: np.ndarray, sigma: float) -> list[np.ndarray]:
    """A searched start (the shift search's, or the one a dense flow proposes, ``flow_fit``) turned one step either
    way about the piece's centre as that start lands it, the step being the turn that moves the piece's farthest
    pixel by two edge sigmas: the blur of the refinement's coarse edges, so about the turn a refinement captures
    from a start.

    The shift search finds where a piece lies but not how it turned, and the refinement has to find the turn. Where
    the piece sits on a ridge of the edge correlation, which side of it the descent climbs depends on the start to
    a fraction of a pixel: on the torn lung proSPC <- H&E pair the moved piece's refinement from the shift reached
    0.134 around the piece, or 0.114 with the affine 0.3 px (a tenth of a working pixel) to the left, and the field
    then failed the judgement's interior rule (19.7 px instead of 5.8). From a turn either way it reached 0.133-0.135
    in both (docs/accuracy.md, "A piece's correction that does not hinge on a tenth of a pixel"). A dense flow
    smooths across the tear, so the turn of the affine it proposes is no surer: on the torn kidney H&E <- PanCK pair
    that start refined to 0.166 with the flow read on every pixel and to 0.153 with it read on a grid, and one of its
    turns to 0.163 (docs/accuracy.md, "Twenty-seventh attempt"). The best of the refinements is kept, as among all
    starts."""
    ys, xs = np.nonzero(piece)
    centre_placed = np.array([xs.mean(), ys.mean(), 1.0])
    farthest = float(np.hypot(xs - centre_placed[0], ys - centre_placed[1]).max())
    if farthest <= 0:
        return []
    step = 2 * sigma / farthest
    centre = (np.linalg.inv(shift) @ centre_placed)[:2]  # where the shift lands the piece's centre
    to_centre = np.array([[1.0, 0.0, centre[0]], [0.0, 1.0, centre[1]], [0.0, 0.0, 1.0]])
    turned = []
    for angle in (-step, step):
        turn = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
        turned.append(shift @ to_centre @ turn @ np.linalg.inv(to_centre))
    return turned


def _nearest_piece(labels: np.ndarray, pieces: list[int]) -> np.ndarray:
    """For every pixel, the index (into ``pieces``) of the nearest piece."""
    nearest = np.zeros(labels.shape, np.int32)
    closest = np.full(labels.shape, np.inf)
    for index, label in enumerate(pieces):
        distance = ndimage.distance_transform_edt(labels != label)
        nearer = distance < closest
        nearest[nearer], closest[nearer] = index, distance[nearer]
    return nearest


def _landed(piece: np.ndarray, correction: np.ndarray) -> np.ndarray:
    """Where a piece of the placed image lies once pulled through ``correction`` (reference grid)."""
    height, width = piece.shape
    return cv2.warpAffine(piece.astype(np.uint8), correction[:2], (width, height),
                          flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP) > 0


def _assemble(labels: np.ndarray, pieces: list[int],
              corrections: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Each piece's correction as flow where the piece lands (the first piece keeps a pixel two would share), the
    pixels covered, and the median motion (working px) of each piece that moved."""
    height, width = labels.shape
    flow = np.zeros((height, width, 2), np.float32)
    support = np.zeros((height, width), bool)
    motions = []
    for label, correction in zip(pieces, corrections, strict=True):
        landed = _landed(labels == label, correction) & ~support
        ys, xs = (axis.astype(np.float32) for axis in np.nonzero(landed))  # only where the piece lands
        flow[landed, 0] = correction[0, 0] * xs + correction[0, 1] * ys + correction[0, 2] - xs
        flow[landed, 1] = correction[1, 0] * xs + correction[1, 1] * ys + correction[1, 2] - ys
        support |= landed
        if landed.any() and not np.allclose(correction, np.eye(3)):
            motions.append(float(np.median(np.hypot(flow[landed, 0], flow[landed, 1]))))
    return flow, support, motions


def _correction(scorer: AlignmentScorer, alone: np.ndarray, piece: np.ndarray, around: np.ndarray,
                starts: list[np.ndarray], model: str, resolvable_sigmas: float) -> np.ndarray:
    """The pull correction (reference working px -> placed px) of ``piece``, the only tissue left in ``alone``, or
    identity.

    ``starts``: identity, the shift search's translation (``shift_start``) and its two turns (``turned_starts``),
    one similarity fit per feature detector matching the piece alone to the reference, and the affine that follows
    a dense flow over the piece (``flow_fit``) and its two turns (a piece can have moved further than refinement
    alone reaches). Each
    is refined twice, by SimpleITK on a random quarter of the pixels and by the NumPy descent on every pixel
    (slimreg.register.refine); among the plausible, resolvable results the
    highest edge correlation with the reference tissue ``around`` the piece wins (as for the whole image), and it
    is kept only if it also stands out further from unrelated placements than the piece as the affine left it
    (``_significance``).

    Why twice: a piece's correlation has ridges and shallow optima, and where each descent ends depends on its start
    to a fraction of a pixel. The descent on every pixel ends on the nearest optimum; the sampled one's noise
    carries it past shallow ones, and sometimes past the right one. Either alone lost a torn pair when the affine
    moved by 0.3 px (a tenth of a search pixel): the sampled one the torn kidney H&E <- PanCK (7.3 -> 12.6-27.2 px),
    the one on every pixel the torn lung proSPC <- H&E (5.8 -> 19.7-20.0 px); with both, every one of 20 such
    cases kept its pieces' field (docs/accuracy.md, "A piece's correction that does not hinge on a tenth of a
    pixel")."""
    if not around.any():
        return np.eye(3)
    identity = np.eye(3)
    best, best_value = identity, _correlation(scorer, alone, piece, around, identity)[0]
    ys, xs = np.nonzero(piece)
    points = np.stack([xs, ys, np.ones_like(xs)], axis=1).astype(np.float64)
    for start, on_every_pixel in ((start, numpy) for start in starts for numpy in (False, True)):
        # ``alone`` is the placed image cut to the reference frame: beyond it the piece was cut off by the placing,
        # not known to be empty, so samples that leave it are dropped (slimreg.register.refine); counting them as
        # empty there too lost 0.1-4.4 px in all four torn directions (docs/accuracy.md)
        correction = refine_affine(scorer.reference, alone, around, start, scorer.sigma, model,
                                   sampling=REFINE_SAMPLING, outside=0.0, in_numpy=on_every_pixel)
        if plausibility_problem(correction) is not None:
            continue
        if median_motion(correction, points) < resolvable_sigmas * scorer.sigma:
            continue
        value = _correlation(scorer, alone, piece, around, correction)[0]
        if value > best_value:
            best, best_value = correction, value
    if best is identity or (_significance(scorer, alone, piece, around, best)
                            <= _significance(scorer, alone, piece, around, identity)):
        return np.eye(3)
    return best


def _correlation(scorer: AlignmentScorer, alone: np.ndarray, piece: np.ndarray, around: np.ndarray,
                 correction: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Edge correlation of the piece, pulled through ``correction``, with the reference around it (-1 where it
    cannot be computed), and the piece's edges and footprint as they land."""
    height, width = alone.shape
    moved = cv2.warpAffine(alone, correction[:2], (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    landed = _landed(piece, correction)
    edges = edge_map(moved, scorer.sigma)
    value = ncc(scorer.edges, edges, around | landed)
    return (value if np.isfinite(value) else -1.0), edges, landed


def _significance(scorer: AlignmentScorer, alone: np.ndarray, piece: np.ndarray, around: np.ndarray,
                  correction: np.ndarray) -> float:
    """How far the edge correlation of the piece, pulled through ``correction``, with the reference around it stands
    above the same piece shifted by the ring of far offsets (slimreg.register.similarity), in standard deviations.

    The correlation alone is not enough: a piece fitted to structure that is not its own can still correlate a
    little better where it covers more tissue, but it does not stand out further from unrelated placements.
    Measured on the torn variant of the shared pairs (benchmarks/robustness.py): of the eight pieces' best fits,
    seven moved closer to the landmarks and raised their significance; the one that stayed far off (61.5 -> 46.5
    px) lowered it (2.58 -> 1.82)."""
    value, edges, landed = _correlation(scorer, alone, piece, around, correction)
    significance = Score(value, *scorer.ring(edges, landed, around), overlap=0.0).significance
    return significance if np.isfinite(significance) else float("-inf")


def _fill_between(flow: np.ndarray, support: np.ndarray, sigma: float) -> np.ndarray:
    """Keep the flow on the pieces as they land; elsewhere, a normalised convolution of it (the nearest pieces'
    motion, blended), widened until it reaches everywhere."""
    filled = flow.copy()
    empty = ~support
    width = max(2.0, sigma)
    while empty.any() and width < 4 * max(flow.shape[:2]):
        weight = blur(support.astype(np.float32), width)
        reached = empty & (weight > 1e-3)
        for band in range(2):
            smooth = blur(flow[..., band] * support, width)
            filled[reached, band] = smooth[reached] / weight[reached]
        empty &= ~reached
        width *= 2
    return filled

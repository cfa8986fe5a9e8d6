"""The stain-robust alignment score that registration keeps or rejects results by, and QC judges them by.

Score: the normalised cross-correlation of the two images' edge maps (slimreg.register.preprocess) over
the union of both tissue masks, the moving image placed on the reference's working grid. The union
matters: tissue of either image that lands on the other's background lowers the score, so a pose that
overlaps only a sliver of tissue cannot win on that sliver.

Significance: the same score with the placed image shifted by a ring of far offsets (eight directions, a
distance at which smoothed edges no longer overlap) gives the score of *unrelated* structure in the same
images; an alignment is significant when it stands ``MIN_SIGNIFICANCE`` standard deviations above that
ring (the rule ROICaT uses for phase correlation peaks). A pose 30 px off on a 1000 px section scores
like the ring; the true pose stands far above it. Measured on the shared real pairs: docs/accuracy.md.

Shared tissue: serial sections, staining rounds and frames show the same tissue, so once aligned most of the
smaller of the two tissues (the overlap coefficient: common tissue over the smaller mask) lies on the other's.
The ring cannot tell this: the winner is the best of many refined poses, and a section of another organ can be
fitted to stand out from fixed shifted copies of itself (kidney H&E onto the lung proSPC reference: 5.4 sd, with
58 % of its tissue on the reference's glass). A result must keep more than half of the smaller tissue on the
other's; the right poses of the shared pairs keep 0.89-1.0 under every robustness variant (docs/accuracy.md).

The mirror decoy: neither rule sees the effort that found the pose. The winner is the best of many refined poses,
so its null is not one placement but the best that the same search finds for an image of the same kind that
does not belong there. The moving image's own mirror image is that image: the same stains, structures and
outline statistics, and no pose of it matches the reference's structure (without ``--allow-mirror``). A result
must beat the mirror image's best pose by more than the ring's noise (one sd). Measured (docs/accuracy.md):
right poses of the shared pairs beat it by 1.4-10 sd under the robustness variants; the other-tissue poses that
passed both rules above by -2.4 to 0.4 sd. Bilaterally symmetric tissue is its own mirror image, so there the decoy
is no stranger and no null; the engines set it aside where the image matches itself through the reflection the two
poses imply (slimreg.register.symmetry). Nor is a decoy needed where the pose was not picked as the best of many tries:
where two feature detectors' own fits land within one edge sigma of it, it was measured twice, independently of the
score (slimreg.register.mirror.MIN_CORROBORATING).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from slimreg.errors import RegistrationError
from slimreg.io.read import Downsampled
from slimreg.metrics import ncc
from slimreg.register.preprocess import edge_map, edge_sigma, pull_onto, tissue_mask
from slimreg.transform import Transform

MIN_SIGNIFICANCE = 4.0
MIN_SHARED_TISSUE = 0.5  # most of the smaller tissue must lie on the other's: the same tissue, not a neighbour
MIN_MIRROR_MARGIN_SD = 1.0  # the pose must beat its mirror image's best pose by more than the ring's noise
# "clearly higher": by more than this many standard deviations of the score between unrelated placements (the
# ring), a gap unrelated placements reach about 2 % of the time. Where one result has to earn its place over another
# (the light engine's over VALIS'; a finer field over smoother ones), smaller gaps are noise.
CLEAR_GAIN_SD = 2.0
IDENTITY_TOLERANCE_PX = 1.0  # a pose within this many working px of the unregistered one *is* unregistered
RING_DIRECTIONS = 8
RING_SIGMAS = 8.0  # ring radius in edge-smoothing sigmas: smoothed edges this far apart do not overlap
MIN_RING_FRACTION = 0.1  # ... and at least this share of the long side


@dataclass(frozen=True)
class Score:
    """One pose's score, the ring's statistics and what follows from them."""

    value: float
    ring_mean: float
    ring_std: float
    overlap: float  # share of the reference tissue that the placed image's tissue covers
    shared: float = float("nan")  # share of the smaller tissue (reference's or placed image's) on the other's

    @property
    def significance(self) -> float:
        if not np.isfinite(self.value):
            return float("nan")
        return (self.value - self.ring_mean) / max(self.ring_std, 1e-3)

    def to_json(self, prefix: str = "", suffix: str = "") -> dict[str, float]:
        return {f"{prefix}edge_correlation{suffix}": self.value, f"{prefix}significance{suffix}": self.significance,
                f"{prefix}tissue_overlap{suffix}": self.overlap, f"{prefix}tissue_shared{suffix}": self.shared}


class AlignmentScorer:
    """Scores poses of moving working images against one reference working image."""

    def __init__(self, reference: np.ndarray, reference_mask: np.ndarray | None = None):
        self.reference = reference.astype(np.float32)
        self.shape = reference.shape[:2]
        self.sigma = edge_sigma(self.shape)
        self.mask = tissue_mask(self.reference) if reference_mask is None else reference_mask
        self.edges = edge_map(self.reference, self.sigma)
        self.ring_radius = max(RING_SIGMAS * self.sigma, MIN_RING_FRACTION * max(self.shape))

    def place(self, moving: np.ndarray, pull: np.ndarray, moving_mask: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """The moving image and its tissue mask on the reference grid through a 3x3 working-px pull matrix."""
        mask = tissue_mask(moving) if moving_mask is None else moving_mask
        return pull_onto(moving, mask, pull, self.shape)

    def score_placed(self, placed: np.ndarray, placed_mask: np.ndarray, ring: bool = True) -> Score:
        """Score an image already on the reference grid (QC reads registered images this way)."""
        edges = edge_map(placed, self.sigma)
        region = self.mask | placed_mask
        value = ncc(self.edges, edges, region)
        common = float((self.mask & placed_mask).sum())
        overlap = common / max(1, self.mask.sum())
        shared = common / max(1, min(self.mask.sum(), placed_mask.sum()))
        if not ring:
            return Score(value, float("nan"), float("nan"), overlap, shared)
        return Score(value, *self.ring(edges, placed_mask, self.mask), overlap, shared)

    def ring(self, edges: np.ndarray, placed_mask: np.ndarray, base: np.ndarray) -> tuple[float, float]:
        """Mean and standard deviation of the edge correlation of ``edges`` (on the reference grid) shifted by the
        ring of far offsets, each over ``base`` and the shifted ``placed_mask``: the score of unrelated structure
        (NaN where fewer than two shifts can be scored)."""
        ring_values = []
        for k in range(RING_DIRECTIONS):
            angle = 2 * np.pi * k / RING_DIRECTIONS
            shift = (round(self.ring_radius * np.sin(angle)), round(self.ring_radius * np.cos(angle)))
            shifted, shifted_mask = np.roll(edges, shift, axis=(0, 1)), np.roll(placed_mask, shift, axis=(0, 1))
            ring_values.append(ncc(self.edges, shifted, base | shifted_mask))
        finite = np.array([v for v in ring_values if np.isfinite(v)])
        if finite.size < 2:
            return float("nan"), float("nan")
        return float(finite.mean()), float(finite.std())

    def score(self, moving: np.ndarray, pull: np.ndarray, moving_mask: np.ndarray | None = None,
              ring: bool = True) -> Score:
        placed, placed_mask = self.place(moving, pull, moving_mask)
        return self.score_placed(placed, placed_mask, ring=ring)


def finite_or_worst(value: float) -> float:
    """A score to compare with: nan (no tissue in common, nothing to correlate) ranks below every real score."""
    return value if np.isfinite(value) else -np.inf


def judge(result: Score, unregistered: Score, moved_px: float, mirror: float | None = None) -> str | None:
    """Why a registration result must not be kept, or None: it must stand out from unrelated placements, keep most
    of the smaller tissue on the other's, beat the best pose of its own mirror image (``mirror``, its edge
    correlation, where that search was run) and, unless it leaves the image where it was, beat leaving it there."""
    if not result.significance >= MIN_SIGNIFICANCE:
        return (f"no alignment found that stands out from unrelated placements (edge correlation {result.value:.3f}, "
                f"{rounded_down(result.significance, 2)} sd above shifted copies; {MIN_SIGNIFICANCE:.0f} needed): "
                "the image probably shows other tissue, or its registration channel has no matching structure")
    if not result.shared > MIN_SHARED_TISSUE:
        return (f"the best alignment found leaves most of the tissue on the other image's glass (only "
                f"{result.shared:.0%} of the smaller tissue lies on the other's; more than {MIN_SHARED_TISSUE:.0%} "
                "needed): the image probably shows other tissue")
    problem = mirror_problem(result, mirror)
    if problem is not None:
        return problem
    if moved_px > IDENTITY_TOLERANCE_PX and not result.value > finite_or_worst(unregistered.value):
        return (f"registration did not beat leaving the image as it is (edge correlation {result.value:.3f} vs "
                f"{unregistered.value:.3f} unregistered)")
    return None


def rounded_down(value: float, decimals: int) -> str:
    """``value`` with ``decimals`` digits, rounded toward minus infinity: a refusal at 3.996 sd must not read as
    "4.00 sd; 4 needed"."""
    if not np.isfinite(value):
        return str(value)
    return f"{np.floor(value * 10**decimals) / 10**decimals:.{decimals}f}"


def mirror_problem(result: Score, mirror: float | None) -> str | None:
    """Why a result that fits no better than the moving image's mirror image can must not be kept, or None."""
    if mirror is None or not np.isfinite(mirror):
        return None
    noise = result.ring_std if np.isfinite(result.ring_std) else 0.0
    if result.value - mirror > MIN_MIRROR_MARGIN_SD * noise:
        return None
    return (f"the best alignment fits the reference no better than the image's own mirror image does (edge "
            f"correlation {result.value:.3f} against {mirror:.3f}; a margin of {MIN_MIRROR_MARGIN_SD:.0f} noise sd, "
            f"{noise:.3f}, needed): what fits is the tissue's outline, not its structure; the image probably shows "
            "other tissue (sections mounted face down: --allow-mirror)")


def check_result(result: Score, unregistered: Score, moved_px: float, path: str, mirror: float | None = None
                 ) -> None:
    """Raise the clear failure :func:`judge` describes (the image gets no output)."""
    problem = judge(result, unregistered, moved_px, mirror)
    if problem is not None:
        refuse(problem, path)


def refuse(problem: str, path: str) -> None:
    """The clear failure for a result that must not be kept (the image gets no output)."""
    raise RegistrationError(f"{problem}; refusing to write it.", path,
                            "check that this image belongs to the sample, or choose another --channel.")


def place_through(reference: Downsampled, moving: Downsampled, transform: Transform) -> np.ndarray:
    """The moving working image on the reference working grid through a level-0 transform (affine + field)."""
    height, width = reference.array.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width]
    points = reference.to_level0(np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float64))
    source = moving.from_level0(transform.pull(points))
    values = ndimage.map_coordinates(moving.array, [source[:, 1], source[:, 0]], order=1, cval=0.0)
    return values.reshape(height, width).astype(np.float32)


def moved_distance(transform: Transform, reference: Downsampled) -> float:
    """Largest distance (reference working px) a transform moves the reference frame's corners and centre."""
    height, width = reference.array.shape[:2]
    points = reference.to_level0(np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1],
                                           [(width - 1) / 2, (height - 1) / 2]], float))
    return float(np.abs(transform.pull(points) - points).max() / reference.scale)


def score_transform(reference: Downsampled, moving: Downsampled, transform: Transform,
                    reference_mask: np.ndarray | None = None) -> tuple[Score, Score]:
    """(result, unregistered) scores of a level-0 transform, on working images of both."""
    scorer = AlignmentScorer(reference.array, reference_mask)
    moving_mask = tissue_mask(moving.array)
    identity = Transform(np.eye(3), None)
    scores = []
    for candidate in (transform, identity):
        placed = place_through(reference, moving, candidate)
        placed_mask = place_through(reference, Downsampled(moving_mask.astype(np.float32), moving.scale),
                                    candidate) > 0.5
        scores.append(scorer.score_placed(placed, placed_mask))
    return scores[0], scores[1]


def clearly_higher(value: float, other: float, noise: float) -> bool:
    """Whether ``value`` beats ``other`` by more than ``CLEAR_GAIN_SD`` ring standard deviations (``noise``; a
    non-finite noise counts as none)."""
    return value > other + CLEAR_GAIN_SD * (noise if np.isfinite(noise) else 0.0)

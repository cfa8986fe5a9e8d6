"""Intensity refinement of an affine pose: SimpleITK maximises the correlation of edge maps on tissue.

Correlating edge maps (not intensities) is what makes it work across stains: on the shared kidney pair
(H&E vs PanCK) a feature fit 10-13 px off converges to 3.5 px, the least-squares affine through the expert
landmarks leaves 3.5 px (docs/accuracy.md). Multi-resolution (shrink 4, 2, 1) gives it a capture range of
several percent of the image.

Reference tissue that a pose carries off the moving image counts as facing no edges, as the edge score
(slimreg.register.similarity) counts it, rather than being dropped from the metric as ITK does by default: a
metric that drops those samples lets a pose gain by pushing tissue it cannot match off the image, and a section
that runs off its image (the shared lung pair's does, on two sides) then settles off the landmarks. Counting them
took the lung pair from 5.73 / 6.13 to 5.58 / 5.75 px and the kidney pair from 3.64 / 4.30 to 3.64 / 4.31
(docs/accuracy.md).

Those zeros can also mislead the coarsest levels, where edges are blurred over several pixels: where moving tissue
runs into its image's border (a section cut off by the scan), a start at the landmarks' own affine on the partial
kidney pair drifted to a squashed pose 21.5 px off (edge score 0.199 -> 0.139) with zeros at every level, and
stayed at 4.5 px (0.206) with zeros at the finest level only. Neither schedule is right everywhere (the shared lung
pair is better with zeros throughout), so ``refine_both_ways`` runs both and the caller's score picks, where the
moving tissue reaches its image's border. Where it does not, the zeros meet glass, which has no edges either, and
one schedule is enough: on the shared kidney H&E <- PanCK pair (tissue clear of the border) both reached the same
poses, and skipping the second halves the refinement there (docs/accuracy.md, "Two refinement schedules").

The descent is SimpleITK's (regular steps, scales from physical shift, the correlation metric), run either by
SimpleITK or, five times faster per iteration, in NumPy (``in_numpy``, slimreg.register.regular_step). The pose
search (the result's and its mirror decoy's, slimreg.register.pose) runs in NumPy and hands the caller's score every
stage's pose (``refine_both_ways``); the polish runs in NumPy on every pixel (SimpleITK's on a random quarter took
twice as long, docs/accuracy.md, "Fifteenth attempt"), and each piece of a torn section is refined both ways
(slimreg.register.pieces). The search in NumPy moves poses by fractions of a pixel against SimpleITK's,
and until the pieces' correction stopped hinging on that (docs/accuracy.md, "A piece's correction that does not
hinge on a tenth of a pixel") it lost the torn lung proSPC <- H&E pair ("Tenth attempt").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from scipy import ndimage
from threadpoolctl import threadpool_limits

from slimreg.register.preprocess import edge_map
from slimreg.register.regular_step import NoOverlap, Pose, regular_step_descent
from slimreg.resources import usable_cpus

if TYPE_CHECKING:
    import SimpleITK as sitk

T = TypeVar("T")
EdgeMaps = dict[float, tuple[np.ndarray, np.ndarray]]  # smoothing factor -> (reference, moving) edge maps
# At most this many of the search's refinements run side by side: each holds the NumPy descent's level, 30 MB at the
# search's 512 px (docs/accuracy.md, "Seventh attempt"), so four stay below what the non-rigid step holds at twice the
# search's size, which the plan estimates.
MAX_SIDE_BY_SIDE = 4

SHRINK_FACTORS = (4, 2, 1)
EDGE_SCALES = (2.0, 1.0)  # edge smoothing, coarse to fine, in multiples of the working sigma
# How far beyond the moving image its samples count as facing no edges, as a share of its long side on every side:
# refinement moves a pose by a few percent of the image, and the tissue boxes around each image carry a 5 % margin
# (slimreg.register.tissue_crop). On the shared pairs a tenth, a quarter and a half gave the same affine medians.
OUTSIDE_FRACTION = 0.1
# the descent's steps, in physical px of the working image: a full step, then shortened by RELAXATION at each turn
LEARNING_RATE = 1.0
MIN_STEP = 1e-4
RELAXATION = 0.7


def refine_affine(reference: np.ndarray, moving: np.ndarray, reference_mask: np.ndarray, pull: np.ndarray,
                  sigma: float, model: str = "affine", iterations: int = 200,
                  shrink_factors: tuple[int, ...] = SHRINK_FACTORS, sampling: float = 1.0,
                  edge_scales: tuple[float, ...] = EDGE_SCALES, outside: float = OUTSIDE_FRACTION,
                  outside_at_coarse_levels: bool = True, edges: EdgeMaps | None = None,
                  in_numpy: bool = False, threads: int = 1) -> np.ndarray:
    """The pull matrix (reference working px -> moving working px) after refinement from ``pull``.

    Edges are correlated coarse to fine (``edge_scales`` times ``sigma``): edges smoothed more overlap from further
    away, so a start several percent off in scale still converges (measured: the shared kidney pair turned 90
    degrees, three of its starts reach the optimum this way and none with ``sigma`` alone). A pose that is already
    close (the polish at the finest size, a piece's fit) needs neither the coarse edges nor the coarsest level:
    ``edge_scales`` (1,) and ``shrink_factors`` (2, 1) make it several times faster, as ``sampling`` (a random
    share of the pixels, SimpleITK only) does. With
    ``outside_at_coarse_levels`` False, the zeros beyond the moving image (``outside``) are added at the finest
    level only (module docstring). ``edges``: the two images' edge maps at each of ``edge_scales`` (``edge_maps``),
    where the caller refines several starts of one pair. ``in_numpy``: the same descent run by
    ``slimreg.register.regular_step`` (module docstring), on every pixel, its larger levels spread over ``threads``
    (the same pose for any number).
    """
    return refine_stages(reference, moving, reference_mask, pull, sigma, model, iterations, shrink_factors, sampling,
                         edge_scales, outside, outside_at_coarse_levels, edges, in_numpy, threads)[-1]


def refine_stages(reference: np.ndarray, moving: np.ndarray, reference_mask: np.ndarray, pull: np.ndarray,
                  sigma: float, model: str = "affine", iterations: int = 200,
                  shrink_factors: tuple[int, ...] = SHRINK_FACTORS, sampling: float = 1.0,
                  edge_scales: tuple[float, ...] = EDGE_SCALES, outside: float = OUTSIDE_FRACTION,
                  outside_at_coarse_levels: bool = True, edges: EdgeMaps | None = None,
                  in_numpy: bool = False, threads: int = 1) -> list[np.ndarray]:
    """``refine_affine``'s pose after each of ``edge_scales``, coarse to fine: the last is its result."""
    # rotate and scale about the reference tissue's centre, not the image corner: about the corner, every
    # change of the matrix also moves the tissue far away, and the optimiser trades the two off badly
    centre = np.array(ndimage.center_of_mass(reference_mask))[::-1] if reference_mask.any() else np.zeros(2)
    schedule = [(tuple(shrink_factors), outside)]
    if not outside_at_coarse_levels and outside and len(shrink_factors) > 1:
        schedule = [(tuple(shrink_factors[:-1]), 0.0), (tuple(shrink_factors[-1:]), outside)]
    maps = edges if edges is not None else edge_maps(reference, moving, sigma, edge_scales)
    stages = []
    for factor in edge_scales:
        for shrink, border in schedule:
            pull = _refine_at(*maps[factor], reference_mask, pull, centre, model, iterations, shrink, sampling, border,
                              in_numpy, threads)
        stages.append(pull)
    return stages


def refine_both_ways(reference: np.ndarray, moving: np.ndarray, reference_mask: np.ndarray, pull: np.ndarray,
                     sigma: float, model: str = "affine", moving_mask: np.ndarray | None = None,
                     edges: EdgeMaps | None = None) -> list[np.ndarray]:
    """``pull`` refined by the NumPy descent with zeros beyond the moving image at every level, and at the finest
    level only: candidates for the caller's score to choose between (module docstring), each schedule's pose after
    its coarse edges as well as after its fine ones. Given ``moving_mask``, the second schedule only where its tissue
    reaches the image's border (``tissue_at_border``): elsewhere the zeros lie against glass.

    The coarse edges' pose is a candidate because the fine edges' first level can throw a pose out of its basin:
    on the half-size kidney pair they took a start from 0.317 to 0.152, and SimpleITK's descent climbed back to
    0.318 where the NumPy one stopped at 0.214; the search's score, which picks among starts anyway, then sees the
    0.317 (docs/accuracy.md, "Tenth attempt")."""
    schedules = (True, False) if moving_mask is None or tissue_at_border(moving_mask, sigma) else (True,)
    maps = edges if edges is not None else edge_maps(reference, moving, sigma)
    return [stage for coarse in schedules
            for stage in refine_stages(reference, moving, reference_mask, pull, sigma, model,
                                       outside_at_coarse_levels=coarse, edges=maps, in_numpy=True)]


def edge_maps(reference: np.ndarray, moving: np.ndarray, sigma: float,
              scales: tuple[float, ...] = EDGE_SCALES) -> EdgeMaps:
    """Both images' edge maps at each smoothing (``scales`` times ``sigma``): the same for every start and schedule
    of one pair, so found once."""
    return {factor: (edge_map(reference, sigma * factor), edge_map(moving, sigma * factor)) for factor in scales}


def side_by_side(starts: list[np.ndarray], refine: Callable[[np.ndarray], T]) -> list[T]:
    """``refine(start)`` of every start, in order, up to ``MAX_SIDE_BY_SIDE`` at a time on the CPUs this process may
    use: NumPy and OpenCV release the interpreter in their array work, and on images of a few hundred pixels one
    descent's arrays are too small to keep several CPUs busy; the poses found are the same (docs/accuracy.md,
    "Refinements side by side").

    BLAS runs on one thread meanwhile: each descent's products are a few tens of thousands of values, and a BLAS
    that splits them over its own threads in every worker leaves those threads waiting on one another (on 2 cores
    the shared kidney pair's refinements took 11-12 s side by side so, 5-6 s with one BLAS thread each;
    docs/accuracy.md, "Thirteenth attempt"). One at a time too, so that the sums, and the poses,
    do not depend on how many CPUs there are."""
    workers = min(len(starts), usable_cpus(), MAX_SIDE_BY_SIDE)
    with threadpool_limits(limits=1, user_api="blas"):
        if workers <= 1:
            return [refine(start) for start in starts]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="slimreg-refine") as pool:
            return list(pool.map(refine, starts))


def tissue_at_border(mask: np.ndarray, sigma: float) -> bool:
    """Whether tissue lies within two edge-smoothing sigmas of the image's border, where the zeros beyond the image
    meet its edges. Where it does not, the zeros meet glass, which has no edges either: the two schedules of
    ``refine_both_ways`` then differ only in whether reference samples beyond the image count as zeros or are
    dropped at the coarse levels, which on the shared pair did not move any pose (docs/accuracy.md)."""
    width = max(1, math.ceil(2 * sigma))
    return bool(mask[:width].any() or mask[-width:].any() or mask[:, :width].any() or mask[:, -width:].any())


def _refine_at(reference_edges: np.ndarray, moving_edges: np.ndarray, reference_mask: np.ndarray, pull: np.ndarray,
               centre: np.ndarray, model: str, iterations: int, shrink_factors: tuple[int, ...], sampling: float,
               outside: float, in_numpy: bool = False, threads: int = 1) -> np.ndarray:
    """One multi-resolution run on the two images' edge maps (of one smoothing), rotating about ``centre``: by
    SimpleITK, or with ``in_numpy`` by ``slimreg.register.regular_step`` on every pixel (on ``threads``)."""
    border = math.ceil(outside * max(moving_edges.shape))  # zeros around the moving edges (module docstring)
    if border:
        moving_edges = np.pad(moving_edges, border)
    linear = pull[:2, :2]
    if model == "similarity" and np.linalg.det(linear) < 0:  # a mirrored pose: similarity cannot hold it, affine can
        model = "affine"
    if in_numpy:
        return _refine_in_numpy(reference_edges, moving_edges, border, reference_mask, pull, centre, model,
                                iterations, shrink_factors, threads)
    return _refine_with_itk(reference_edges, moving_edges, border, reference_mask, pull, centre, model, iterations,
                            shrink_factors, sampling)


def _refine_in_numpy(reference_edges: np.ndarray, moving_edges: np.ndarray, border: int, reference_mask: np.ndarray,
                     pull: np.ndarray, centre: np.ndarray, model: str, iterations: int,
                     shrink_factors: tuple[int, ...], threads: int = 1) -> np.ndarray:
    """``_refine_at`` by ``slimreg.register.regular_step``; ``moving_edges`` padded by ``border`` px of zeros."""
    linear = pull[:2, :2]
    translation = pull[:2, 2] + linear @ centre - centre
    pose = Pose(linear.copy(), translation, centre.astype(np.float64), model == "similarity")
    try:
        pose = regular_step_descent(reference_edges, reference_mask, moving_edges, -float(border),
                                    pose.with_parameters(pose.parameters()), tuple(shrink_factors), iterations,
                                    learning_rate=LEARNING_RATE, min_step=MIN_STEP, relaxation=RELAXATION,
                                    threads=threads)
    except NoOverlap:  # all samples mapped outside the moving image: keep the start, as below
        return pull
    out = np.eye(3)
    out[:2, :2] = pose.matrix
    out[:2, 2] = pose.translation + pose.centre - pose.matrix @ pose.centre
    return out


def _refine_with_itk(reference_edges: np.ndarray, moving_edges: np.ndarray, border: int, reference_mask: np.ndarray,
                     pull: np.ndarray, centre: np.ndarray, model: str, iterations: int,
                     shrink_factors: tuple[int, ...], sampling: float) -> np.ndarray:
    """``_refine_at`` by SimpleITK; ``moving_edges`` padded by ``border`` px of zeros. SimpleITK is imported here, by
    the only caller that needs it (a torn section's pieces): its import alone holds about 90 MB and takes 0.3 s."""
    import SimpleITK as sitk
    fixed = sitk.GetImageFromArray(reference_edges)
    moved = sitk.GetImageFromArray(moving_edges)
    moved.SetOrigin((-float(border), -float(border)))  # the moving image's own pixels keep their coordinates
    linear = pull[:2, :2]
    translation = (pull[:2, 2] + linear @ centre - centre).tolist()
    if model == "similarity":
        transform: sitk.Transform = sitk.Similarity2DTransform()
        scale = float(np.sqrt(abs(np.linalg.det(linear))))
        transform.SetScale(scale)
        transform.SetAngle(float(np.arctan2(linear[1, 0], linear[0, 0])))
        transform.SetCenter(centre.tolist())
        transform.SetTranslation(translation)
    else:
        transform = sitk.AffineTransform(2)
        transform.SetMatrix(linear.ravel().tolist())
        transform.SetCenter(centre.tolist())
        transform.SetTranslation(translation)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsCorrelation()
    method.SetMetricFixedMask(sitk.GetImageFromArray(reference_mask.astype(np.uint8)))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=LEARNING_RATE, minStep=MIN_STEP,
                                                    numberOfIterations=iterations, relaxationFactor=RELAXATION)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink_factors))
    method.SetSmoothingSigmasPerLevel([float(np.log2(f)) for f in shrink_factors])
    if sampling < 1.0:
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(sampling, seed=1)
    method.SetInitialTransform(transform, inPlace=True)
    try:
        method.Execute(fixed, moved)
    except RuntimeError:  # e.g. all samples mapped outside the moving image: keep the start
        return pull
    return _as_matrix(transform)


def _as_matrix(transform: sitk.Transform) -> np.ndarray:
    """3x3 pull matrix of an ITK 2-D matrix-offset transform: p -> M (p - c) + c + t."""
    matrix = np.array(transform.GetMatrix()).reshape(2, 2)
    centre = np.array(transform.GetCenter())
    out = np.eye(3)
    out[:2, :2] = matrix
    out[:2, 2] = centre - matrix @ centre + np.array(transform.GetTranslation())
    return out

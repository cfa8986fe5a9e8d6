"""The one judgement every engine's result passes before anything is written (slimreg.register.batch applies it).

An engine returns a transform; whether it is kept is not the engine's call. The rule is the light engine's
(slimreg.register.similarity.judge): the result, placed through its whole transform (field included) on the search
frames, must stand out from unrelated placements, keep most of the smaller tissue on the other's, beat leaving the
image where it was, and fit better than the best pose the same search finds for the moving image's mirror image.
That last search is the expensive part: an engine that ran it already (the light engine, whose own search it is)
records its outcome in the transform's quality (``mirror_edge_correlation``, and ``mirror_null`` where the decoy is
not this same tissue), and it is not run twice. Where two feature detectors' fits corroborate the light engine's
pose (``pose_corroborated_by``, slimreg.register.mirror.MIN_CORROBORATING), the pose was measured twice rather than
picked as the best of many tries, which is what the decoy guards against, and no decoy is searched for it. So a new
engine gets the whole judgement by being registered.

A field can raise the edge score by moving outlines alone: fitted to the tissue's border it drags the inside with
it (a non-rigid result 11 sd above chance whose landmarks moved from 19.7 to 23.4 px, issue 37). So a field is also
weighed inside the tissue, away from every outline (``interior``): where it does not align the interior's edges
better than its own affine alone does, the field is dropped and the affine judged on its own.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from slimreg.io.read import Downsampled, TiffImage
from slimreg.register.channel import registration_image
from slimreg.register.mirror import CORROBORATED, MirrorDecoy, check_against_mirror
from slimreg.register.preprocess import edge_map, edge_sigma, tissue_mask
from slimreg.register.settings import RegistrationSettings
from slimreg.register.similarity import (
    check_result,
    mirror_problem,
    moved_distance,
    place_through,
    refuse,
    score_transform,
)
from slimreg.transform import Transform

MIRROR_SEARCHED = "mirror_edge_correlation"  # quality key: the engine ran the mirror decoy's search itself
MIRROR_NULL = "mirror_null"  # quality key: the decoy's edge correlation the result must beat (absent: no null)
# How far inside both tissues the interior begins, in edge sigmas: an edge map spreads an outline over about two
# sigmas either side, so three keep the outline's own response out
INTERIOR_DEPTH_SIGMAS = 3.0
# The interior must hold this share of the reference tissue to say anything (a thin strip of tissue has none)
MIN_INTERIOR_SHARE = 0.2


def judge_transform(reference: TiffImage, moving: TiffImage, reference_channel: int | str,
                    moving_channel: int | str, transform: Transform, settings: RegistrationSettings,
                    decoy: MirrorDecoy | None = None) -> None:
    """Raise the clear failure (slimreg.errors.RegistrationError) for a result that must not be kept; record what
    was measured in ``transform.metadata["quality"]`` either way. ``decoy``: the pair's mirror decoy where another
    engine searched it already (slimreg.register.mirror.MirrorDecoy)."""
    search_dim = settings.search_dim
    ref = registration_image(reference, reference_channel, search_dim)
    mov = registration_image(moving, moving_channel, search_dim)
    quality = transform.metadata.setdefault("quality", {})
    if transform.displacement is not None:
        interior = interior_scores(ref, mov, transform)
        if interior is not None:
            quality.update({"interior_edge_correlation_affine": interior[0],
                            "interior_edge_correlation_field": interior[1]})
            if not interior[1] > interior[0]:
                transform.displacement = None
                quality["field_dropped"] = "it does not align the tissue's interior better than the affine alone"
    result, unregistered = score_transform(ref, mov, transform)
    quality.update({**result.to_json("judged_"), **unregistered.to_json("judged_unregistered_")})
    check_result(result, unregistered, moved_distance(transform, ref), moving.info.path)
    if settings.allow_mirror:
        return
    if MIRROR_SEARCHED in quality:
        problem = mirror_problem(result, quality.get(MIRROR_NULL))
        if problem is not None:
            refuse(problem, moving.info.path)
    elif CORROBORATED not in quality:
        quality.update(check_against_mirror(reference, moving, reference_channel, moving_channel, settings,
                                            transform, decoy))


def interior_scores(ref: Downsampled, mov: Downsampled, transform: Transform) -> tuple[float, float] | None:
    """Edge correlation inside both tissues, at least ``INTERIOR_DEPTH_SIGMAS`` from any outline, of the moving image
    placed through the affine alone and through the whole transform; None where the interior is too small."""
    sigma = edge_sigma(ref.array.shape)
    depth = max(1, math.ceil(INTERIOR_DEPTH_SIGMAS * sigma))
    reference_tissue = tissue_mask(ref.array)
    affine_only = Transform(transform.affine, None)
    moving_tissue = place_through(ref, Downsampled(tissue_mask(mov.array).astype(np.float32), mov.scale, mov.origin),
                                  affine_only) > 0.5
    interior = ndimage.binary_erosion(reference_tissue, iterations=depth) & ndimage.binary_erosion(
        moving_tissue, iterations=depth)
    if interior.sum() < MIN_INTERIOR_SHARE * max(1, reference_tissue.sum()):
        return None
    reference_edges = edge_map(ref.array, sigma)[interior]
    scores = []
    for candidate in (affine_only, transform):
        placed_edges = edge_map(place_through(ref, mov, candidate), sigma)[interior]
        scores.append(float(np.corrcoef(reference_edges, placed_edges)[0, 1]))
    return scores[0], scores[1]

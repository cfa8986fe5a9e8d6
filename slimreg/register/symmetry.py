"""Whether the moving image is its own mirror image: then the mirror decoy is not a stranger, and not a null.

The mirror decoy (slimreg.register.similarity) assumes that no pose of the moving image's mirror image matches the
reference's structure. Bilaterally symmetric tissue breaks that: a coronal brain section, a transverse spinal cord
or a whole-body section looks the same mirrored about its midline, so the mirror image's best pose fits the
reference exactly as well as the right pose does, and every such pair was refused (measured on the shared sections
made symmetric, docs/accuracy.md "Symmetric sections").

When the decoy fits about as well as the result, the two poses say where the symmetry would be: the decoy's pose
followed by the inverse of the result's is a reflection of the moving image onto itself. The moving image's edges
are compared with themselves through that reflection, inside its tissue only (the outline left out, so a round core
or any outline that happens to be symmetric does not count), and through the reflections about other axes through
the same point, turned in even steps: those are the null, reflections that have no reason to match. Where the
implied reflection stands ``MIN_SIGNIFICANCE`` sd above them (the rule every registration meets against its ring),
the decoy is this same tissue, and the mirror rule has nothing to say. The other rules (significance, shared
tissue, beating the unregistered placement) still apply.

Why other reflections and not the ring of shifted copies: a reflection compares each point with a point at another
distance from it (none on the axis, far at the tissue's edges), and what is compared changes with that distance;
reflections about other axes compare the same kinds of distances. Against shifted copies, asymmetric random
textures stood up to 12 sd above the ring (tests/test_symmetry.py).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from slimreg.metrics import ncc
from slimreg.register.preprocess import edge_map, edge_sigma, pull_onto
from slimreg.register.similarity import MIN_RING_FRACTION, RING_SIGMAS, Score

NULL_AXES = 12  # reflections about axes turned by multiples of 180/12 degrees: 11 unrelated ones


def flipped_to_moving(width: int) -> np.ndarray:
    """The 3x3 map from the horizontally flipped image's working px to the image's own (its own inverse)."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def self_symmetry(moving: np.ndarray, moving_mask: np.ndarray, result_pull: np.ndarray,
                  decoy_pull: np.ndarray) -> Score:
    """How the moving image matches itself through the reflection the two poses imply, inside its tissue, against
    reflections about other axes (``Score``: value, the null's mean and sd).

    ``result_pull``: reference working px -> moving working px; ``decoy_pull``: reference working px -> the
    flipped moving image's working px (as the decoy's search returns it)."""
    reflection = flipped_to_moving(moving.shape[1]) @ decoy_pull @ np.linalg.inv(result_pull)
    sigma = edge_sigma(moving.shape)
    edges = edge_map(moving, sigma)
    # a point the reflection leaves near itself is compared with its own neighbourhood, which any image resembles:
    # only points moved at least as far as the ring's shifts (whose copies count as unrelated) are compared
    min_move = max(RING_SIGMAS * sigma, MIN_RING_FRACTION * max(moving.shape[:2]))
    # edges blur over about two sigmas: tissue that near its outline would compare the outline
    reach = max(1, math.ceil(2 * sigma))
    inside = cv2.erode(moving_mask.astype(np.uint8),
                       cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1)))
    value = _reflected_correlation(edges, inside, reflection, min_move)
    ys, xs = np.nonzero(moving_mask)
    centre = np.array([xs.mean(), ys.mean(), 1.0]) if xs.size else np.array([0.0, 0.0, 1.0])
    pivot = (centre + reflection @ centre) / 2  # on the implied reflection's axis
    null = []
    for step in range(1, NULL_AXES):
        turn = np.vstack([cv2.getRotationMatrix2D((float(pivot[0]), float(pivot[1])), 360.0 * step / NULL_AXES,
                                                  1.0), [0.0, 0.0, 1.0]])
        null.append(_reflected_correlation(edges, inside, turn @ reflection, min_move))
    finite = np.array([v for v in null if np.isfinite(v)])
    if finite.size < 2 or not np.isfinite(value):
        return Score(value, float("nan"), float("nan"), float("nan"))
    return Score(value, float(finite.mean()), float(finite.std()), float("nan"))


def _reflected_correlation(edges: np.ndarray, inside: np.ndarray, reflection: np.ndarray, min_move: float) -> float:
    """Correlation of the edge map with itself through ``reflection`` (a pull: point x is compared with the point
    the reflection takes it to), over tissue inside the outline whose image is also inside, moved at least
    ``min_move`` px."""
    height, width = edges.shape
    reflected, reflected_inside = pull_onto(edges, inside, reflection, edges.shape)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    moved = np.hypot(reflection[0, 0] * xx + reflection[0, 1] * yy + reflection[0, 2] - xx,
                     reflection[1, 0] * xx + reflection[1, 1] * yy + reflection[1, 2] - yy)
    return ncc(edges, reflected, (inside > 0) & reflected_inside & (moved >= min_move))

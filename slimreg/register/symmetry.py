"""Whether the moving image is its own mirror image: then the mirror decoy is not a stranger, and not a null.

The mirror decoy (slimreg.register.similarity) assumes that no pose of the moving image's mirror image matches the
reference's structure. Bilaterally symmetric tissue breaks that: a coronal brain section, a transverse spinal cord
or a whole-body section looks the same mirrored about its midline, so the mirror image's best pose fits the
reference exactly as well as the right pose does, and every such pair was refused (measured on the shared sections
made symmetric, docs/accuracy.md "Symmetric sections").

When the decoy fits about as well as the result, the two poses say where the symmetry would be: the decoy's pose
followed by the inverse of the result's is a reflection of the moving image onto itself. If the moving image
matches itself through that reflection *inside its tissue* (the outline left out, so a round core or any outline
that happens to be symmetric does not count) as clearly as a registration must stand out from unrelated placements
(``MIN_SIGNIFICANCE`` sd above shifted copies), the decoy is this same tissue, and the mirror rule has nothing to
say. The other rules (significance, shared tissue, beating the unregistered placement) still apply.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from slimreg.register.preprocess import edge_sigma
from slimreg.register.similarity import AlignmentScorer, Score


def flipped_to_moving(width: int) -> np.ndarray:
    """The 3x3 map from the horizontally flipped image's working px to the image's own (its own inverse)."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def self_symmetry(moving: np.ndarray, moving_mask: np.ndarray, result_pull: np.ndarray,
                  decoy_pull: np.ndarray) -> Score:
    """How the moving image matches itself through the reflection the two poses imply, inside its tissue.

    ``result_pull``: reference working px -> moving working px; ``decoy_pull``: reference working px -> the
    flipped moving image's working px (as the decoy's search returns it). Tissue within two edge-smoothing sigmas of
    the tissue's outline is left out: edges blur over that distance, so what remains is structure inside."""
    reflection = flipped_to_moving(moving.shape[1]) @ decoy_pull @ np.linalg.inv(result_pull)
    scorer = AlignmentScorer(moving, moving_mask)
    reflected, reflected_mask = scorer.place(moving, reflection, moving_mask)
    width = max(1, math.ceil(2 * edge_sigma(moving.shape)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    inside = cv2.erode((moving_mask & reflected_mask).astype(np.uint8), kernel) > 0
    if not inside.any():
        return Score(float("nan"), float("nan"), float("nan"), 0.0, 0.0)
    return AlignmentScorer(moving, inside).score_placed(reflected, inside)

"""The mirror decoy: the best pose the same search finds for the moving image's mirror image, the null a result
must beat (slimreg.register.similarity, "The mirror decoy"); for the light engine's own result and, through
:func:`check_against_mirror`, for a result found elsewhere (VALIS')."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slimreg.io.read import Downsampled, TiffImage
from slimreg.register.initial import Described
from slimreg.register.plausibility import expected_scale
from slimreg.register.pose import affine_through, best_pose
from slimreg.register.settings import RegistrationSettings
from slimreg.register.similarity import (
    MIN_SIGNIFICANCE,
    AlignmentScorer,
    Score,
    mirror_problem,
    place_through,
    refuse,
)
from slimreg.register.symmetry import self_symmetry
from slimreg.register.tissue_crop import tissue_image
from slimreg.transform import Transform

# quality key: the detectors whose fits corroborate the light engine's pose (slimreg.register.pose.corroborating)
CORROBORATED = "pose_corroborated_by"
# Two detectors' fits within one edge sigma of the result measure its pose twice, independently of the score that
# picked it: the mirror decoy guards against a pose that is only the best of many tries, so it is not held against one
MIN_CORROBORATING = 2


def corroborated(detectors: tuple[str, ...]) -> bool:
    """Whether a pose that these detectors' fits place within one edge sigma needs no mirror decoy."""
    return len(detectors) >= MIN_CORROBORATING


@dataclass(frozen=True)
class MirrorDecoy:
    """The outcome of the decoy's search: its edge correlation and its pose (reference working px -> the flipped
    moving image's, in the search frames of ``tissue_image`` at the search size). It depends on the pair and the
    settings only, not on any engine's result, so one search serves every result judged for the pair."""

    value: float
    pull: np.ndarray


def mirror_decoy(scorer: AlignmentScorer, ref: Downsampled, mov: Downsampled, mov_mask: np.ndarray,
                 settings: RegistrationSettings, expected: float,
                 reference_described: dict[str, Described] | None = None) -> MirrorDecoy:
    """The best pose the same search finds for the moving image's mirror image and its edge correlation: what an
    image of the same kind that does not belong there reaches with the same effort (slimreg.register.similarity,
    "The mirror decoy"). Only without ``allow_mirror``, where no mirrored pose can be the answer."""
    flipped = Downsampled(np.ascontiguousarray(mov.array[:, ::-1]), mov.scale, mov.origin)
    flipped_mask = np.ascontiguousarray(mov_mask[:, ::-1])
    found = best_pose(scorer, ref, flipped, flipped_mask, settings, expected, reference_described=reference_described)
    return MirrorDecoy(found.value, found.pull)

def mirror_null(result: Score, decoy: MirrorDecoy, result_pull: np.ndarray,
                mov: Downsampled, mov_mask: np.ndarray, stats: dict[str, float | str]) -> float | None:
    """The mirror image's best edge correlation as the null the result must beat, or None where the decoy is this
    same tissue: the result fits no better than the decoy and the moving image matches itself inside its tissue
    through the reflection the two poses imply (bilaterally symmetric tissue; slimreg.register.symmetry)."""
    mirror = decoy.value
    stats["mirror_edge_correlation"] = mirror
    if mirror_problem(result, mirror) is not None:
        symmetry = self_symmetry(mov.array, mov_mask, result_pull, decoy.pull)
        stats["mirror_self_symmetry_significance"] = symmetry.significance
        if symmetry.significance >= MIN_SIGNIFICANCE:
            return None
    stats["mirror_null"] = mirror  # slimreg.register.judgement reuses it rather than search again
    return mirror

def check_against_mirror(reference: TiffImage, moving: TiffImage, reference_channel: int | str,
                         moving_channel: int | str, settings: RegistrationSettings, transform: Transform,
                         decoy: MirrorDecoy | None = None) -> dict[str, float | str]:
    """The mirror-decoy rule for a result found elsewhere (VALIS'), in the light engine's search frames, where the
    decoy is searched; raises the clear failure, or returns what was measured (the mirror image's best edge
    correlation and, where the decoy fitted as well, the moving image's self-symmetry). ``decoy``: the pair's decoy
    where the light engine searched it already (the valis engine runs both); searched here otherwise.

    The whole transform is placed, field included: VALIS' affine is its rigid step alone, which on the shared kidney
    pair is 10.3 px off and scored 0.058 there, against 0.096 for the mirror image, refusing a 3.76 px result."""
    search_dim = settings.search_dim
    ref, ref_mask = tissue_image(reference, reference_channel, search_dim)
    mov, mov_mask = tissue_image(moving, moving_channel, search_dim)
    scorer = AlignmentScorer(ref.array, ref_mask)
    if decoy is None:
        decoy = mirror_decoy(scorer, ref, mov, mov_mask, settings, expected_scale(reference, moving))
    placed = place_through(ref, mov, transform)
    placed_mask = place_through(ref, Downsampled(mov_mask.astype(np.float32), mov.scale, mov.origin), transform) > 0.5
    stats: dict[str, float | str] = {}
    result = scorer.score_placed(placed, placed_mask)
    null = mirror_null(result, decoy, affine_through(transform, ref, mov, ref_mask), mov, mov_mask,
                       stats)
    problem = mirror_problem(result, null)
    if problem is not None:
        refuse(problem, moving.info.path)
    return stats

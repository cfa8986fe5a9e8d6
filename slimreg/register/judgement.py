"""The one judgement every engine's result passes before anything is written (slimreg.register.batch applies it).

An engine returns a transform; whether it is kept is not the engine's call. The rule is the light engine's
(slimreg.register.similarity.judge): the result, placed through its whole transform (field included) on the search
frames, must stand out from unrelated placements, keep most of the smaller tissue on the other's, beat leaving the
image where it was, and fit better than the best pose the same search finds for the moving image's mirror image.
That last search is the expensive part: an engine that ran it already (the light engine, whose own search it is)
records its outcome in the transform's quality (``mirror_edge_correlation``, and ``mirror_null`` where the decoy is
not this same tissue), and it is not run twice. So a new engine gets the whole judgement by being registered.
"""

from __future__ import annotations

from slimreg.io.read import TiffImage
from slimreg.register.channel import registration_image
from slimreg.register.feature import check_against_mirror
from slimreg.register.settings import RegistrationSettings
from slimreg.register.similarity import check_result, mirror_problem, moved_distance, refuse, score_transform
from slimreg.transform import Transform

MIRROR_SEARCHED = "mirror_edge_correlation"  # quality key: the engine ran the mirror decoy's search itself
MIRROR_NULL = "mirror_null"  # quality key: the decoy's edge correlation the result must beat (absent: no null)


def judge_transform(reference: TiffImage, moving: TiffImage, reference_channel: int | str,
                    moving_channel: int | str, transform: Transform, settings: RegistrationSettings) -> None:
    """Raise the clear failure (slimreg.errors.RegistrationError) for a result that must not be kept; record what
    was measured in ``transform.metadata["quality"]`` either way."""
    search_dim = settings.search_dim
    ref = registration_image(reference, reference_channel, search_dim)
    mov = registration_image(moving, moving_channel, search_dim)
    result, unregistered = score_transform(ref, mov, transform)
    quality = transform.metadata.setdefault("quality", {})
    quality.update({**result.to_json("judged_"), **unregistered.to_json("judged_unregistered_")})
    check_result(result, unregistered, moved_distance(transform, ref), moving.info.path)
    if settings.allow_mirror:
        return
    if MIRROR_SEARCHED in quality:
        problem = mirror_problem(result, quality.get(MIRROR_NULL))
        if problem is not None:
            refuse(problem, moving.info.path)
    else:
        quality.update(check_against_mirror(reference, moving, reference_channel, moving_channel, settings,
                                            transform))

"""Shared by the real-tissue test files (../shared/data): the settings, the bounds, one registration call and a
turned or mirrored copy of a moving section.

The bounds come from benchmarks/accuracy.py runs (docs/accuracy.md), where VALIS used plainly reached 3.78 px on
the kidney pair; each bound is below 1.5 % of the reference's diagonal (the project's target).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from benchmarks.realdata import SectionPair
from slimreg.io import write_array
from slimreg.io.read import TiffImage
from slimreg.register.batch import moving_channel_for
from slimreg.register.channel import choose_channel
from slimreg.register.feature import FeatureEngine
from slimreg.register.judgement import judge_transform
from slimreg.register.settings import RegistrationSettings
from slimreg.transform import Transform, similarity_matrix

SETTINGS = RegistrationSettings.from_preset("medium", engine="feature")
# median landmark error bound per pair (px): measured 3.64 (kidney) and 5.58 (lung), VALIS plainly 3.78 / 5.56
BOUNDS = {"kidney_HE <- kidney_PanCK": 4.5, "lung-lesion_HE <- lung-lesion_proSPC": 7.5}
# VALIS used plainly on the same pairs (benchmarks/accuracy.py, docs/accuracy.md, median px): the project's target is
# to be no worse. The light engine is held to it within 2 %, room for numeric differences between machines.
VALIS_PLAINLY = {"kidney_HE <- kidney_PanCK": 3.78, "lung-lesion_HE <- lung-lesion_proSPC": 5.56}


def register(reference: Path, moving: Path, settings: RegistrationSettings = SETTINGS) -> Transform:
    """The light engine's result as a user gets it: through the one judgement the batch step applies."""
    ref, mov = TiffImage(reference), TiffImage(moving)
    reference_channel = choose_channel(ref.info, settings.channel)
    channels = reference_channel, moving_channel_for(ref, reference_channel, mov, settings)
    transform = FeatureEngine().register_pair(ref, mov, *channels, settings)
    judge_transform(ref, mov, *channels, transform, settings)
    return transform


def rotated_copy(pair: SectionPair, folder: Path, degrees: float, mirror: bool) -> tuple[Path, np.ndarray]:
    """The moving section turned by ``degrees`` (and mirrored) on a larger white canvas, with its landmarks."""
    rgb = TiffImage(pair.moving).region(0, 0, 100000, 100000, channel=None)
    height, width = rgb.shape[:2]
    side = int(np.hypot(height, width)) + 40
    flip = np.array([[-1.0, 0, width - 1], [0, 1, 0], [0, 0, 1]]) if mirror else np.eye(3)
    turn = similarity_matrix(1.0, degrees, (side - width) / 2, (side - height) / 2,
                             centre=((width - 1) / 2, (height - 1) / 2))
    push = turn @ flip  # original moving px -> new image px
    turned = cv2.warpAffine(rgb, push[:2], (side, side), flags=cv2.INTER_LINEAR, borderValue=(255, 255, 255))
    path = write_array(turned, folder / f"turned{degrees:.0f}{'m' if mirror else ''}.ome.tif", is_rgb=True)
    points = pair.moving_landmarks @ push[:2, :2].T + push[:2, 2]
    return path, points

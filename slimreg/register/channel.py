"""Which channel registration looks at, and how it becomes a working image.

Fluorescence: a channel named DAPI/Hoechst (nuclei are in every round) unless one is requested, else the
first. Brightfield RGB: optical density summed over R, G and B, which makes tissue bright on a dark
background like a fluorescence image and is insensitive to the stain mix changing between sections.
"""

from __future__ import annotations

import numpy as np

from slimreg.errors import RegistrationError
from slimreg.io.probe import ImageInfo
from slimreg.io.read import Downsampled, TiffImage

NUCLEAR_NAMES = ("dapi", "hoechst", "nuclei", "nuclear", "dna", "h33342")
OPTICAL_DENSITY = "optical-density"


def choose_channel(info: ImageInfo, requested: str | None) -> int | str:
    """Index of the registration channel in ``info`` (or ``OPTICAL_DENSITY`` for RGB)."""
    if info.is_rgb and requested is None:
        return OPTICAL_DENSITY
    if requested is not None:
        names = [n.lower() for n in info.channel_names]
        if requested.lower() in names:
            return names.index(requested.lower())
        if requested.isdigit() and int(requested) < info.channels:
            return int(requested)
        raise RegistrationError(
            f"has no channel {requested!r} (channels: {', '.join(info.channel_names)}).", info.path,
            "pick a channel present in the reference and every moving image with --channel.")
    for index, name in enumerate(info.channel_names):
        if any(word in name.lower() for word in NUCLEAR_NAMES):
            return index
    return 0


def registration_image(image: TiffImage, channel: int | str, max_dim: int, frame: int = 0,
                       region: tuple[int, int, int, int] | None = None) -> Downsampled:
    """The registration channel (of ``region``, level-0 x, y, width, height, if given) at most ``max_dim`` px on
    its long side, as float32 scaled to about 0..1."""
    if channel == OPTICAL_DENSITY:
        rgb = image.downsampled(max_dim, channel=None, frame=frame, region=region)
        density = -np.log((rgb.array[..., :3].astype(np.float32) + 1.0) / 256.0).sum(axis=2)
        return Downsampled(normalise(density), rgb.scale, rgb.origin)
    assert isinstance(channel, int)
    small = image.downsampled(max_dim, channel=channel, frame=frame, region=region)
    return Downsampled(normalise(small.array.astype(np.float32)), small.scale, small.origin)


def normalise(array: np.ndarray) -> np.ndarray:
    """Scale robustly to 0..1 (1st-99.8th percentile of the non-background pixels)."""
    values = array[array > np.percentile(array, 5)] if array.size > 100 else array.ravel()
    if values.size == 0:
        values = array.ravel()
    low, high = np.percentile(values, [1, 99.8]) if values.size else (0.0, 1.0)
    if high - low < 1e-9:
        return np.zeros_like(array, dtype=np.float32)
    return np.clip((array - low) / (high - low), 0, 1).astype(np.float32)

"""Which channel registration looks at, and how it becomes a working image.

Fluorescence: a channel named DAPI/Hoechst (nuclei are in every round) unless one is requested, else the
first. Brightfield RGB: optical density summed over R, G and B, which makes tissue bright on a dark
background like a fluorescence image and is insensitive to the stain mix changing between sections. A brightfield
scan stored as one grey channel (a monochrome camera, a converted file) is registered onto RGB ones on its own
optical density: one channel alone cannot say whether it is brightfield or fluorescence, so its glass decides
(:func:`is_grey_brightfield`).

A brightfield RGB pair has a second grey, its darkness (the complement of the mean brightness). Optical density
weighs dense stain most; darkness, linear in the light, weighs the faint structures (alveolar walls, pale cytoplasm)
as much. The light engine's diffeomorphic field estimates one of its two directions on each
(slimreg.register.fields.diffeomorphic_candidate), so that the two estimates it averages err less alike.
"""

from __future__ import annotations

import sys

import numpy as np

from slimreg.errors import RegistrationError
from slimreg.io.probe import ImageInfo
from slimreg.io.read import Downsampled, TiffImage

NUCLEAR_NAMES = ("dapi", "hoechst", "nuclei", "nuclear", "dna", "h33342")
OPTICAL_DENSITY = "optical-density"
DARKNESS = "darkness"  # of a brightfield RGB scan: 255 minus the mean of R, G and B (glass dark, as in optical density)
# A working copy may be up to a tenth smaller on its side where a coarser pyramid level gives it: a scan's whole
# factors rarely divide its levels, and the finest fit then decodes the whole scan (2.2 s per read at 20000 px)
LEVEL_SHARE = 0.9
# Whether one grey channel is brightfield is read from a copy this size: the glass around the section is what decides
BRIGHTFIELD_TEST_DIM = 256
BORDER_SHARE = 0.03  # the frame of the image taken as its glass: 3 % of each side (at least 2 px)
# Brightfield glass is the brightest thing in the image: the frame's median lies in the top quarter of the range (2nd
# to 98th percentile); fluorescence glass lies at the bottom, and a field the signal fills (a calcium recording) in
# the middle
GLASS_POSITION = 0.75


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
    if channel == OPTICAL_DENSITY and not image.info.is_rgb:  # a grey brightfield scan (is_grey_brightfield)
        grey = image.downsampled(max_dim, channel=0, frame=frame, region=region, level_share=LEVEL_SHARE)
        light = _finite(grey.array.astype(np.float32), image)
        white = float(np.iinfo(grey.array.dtype).max) if grey.array.dtype.kind in "iu" else float(light.max())
        density = -np.log((np.clip(light, 0.0, None) + 1.0) / (max(white, 0.0) + 1.0))
        return Downsampled(normalise(density), grey.scale, grey.origin)
    if channel == OPTICAL_DENSITY:
        rgb = image.downsampled(max_dim, channel=None, frame=frame, region=region, level_share=LEVEL_SHARE)
        density = -np.log((_finite(rgb.array[..., :3].astype(np.float32), image) + 1.0) / 256.0).sum(axis=2)
        return Downsampled(normalise(density), rgb.scale, rgb.origin)
    if channel == DARKNESS:
        if not image.info.is_rgb:
            raise ValueError(f"{image.info.path}: darkness is a grey of brightfield RGB scans only")
        rgb = image.downsampled(max_dim, channel=None, frame=frame, region=region, level_share=LEVEL_SHARE)
        darkness = 255.0 - _finite(rgb.array[..., :3].astype(np.float32), image).mean(axis=2)
        return Downsampled(normalise(darkness), rgb.scale, rgb.origin)
    assert isinstance(channel, int)
    small = image.downsampled(max_dim, channel=channel, frame=frame, region=region, level_share=LEVEL_SHARE)
    return Downsampled(normalise(_finite(small.array.astype(np.float32), image)), small.scale, small.origin)


def is_grey_brightfield(image: TiffImage) -> bool:
    """Whether ``image`` is a brightfield scan stored as one grey channel (:func:`grey_brightfield_glass`)."""
    return grey_brightfield_glass(image) is not None


def grey_brightfield_glass(image: TiffImage) -> float | None:
    """The brightness of the glass of a brightfield scan stored as one grey channel, or None where ``image`` is not
    one. Its glass (the image's outer frame) lies in the top quarter of its range (``GLASS_POSITION``), where a
    fluorescence image's glass is dark. Only a single-channel, single-frame image can be one; one whose tissue fills
    its frame reads as fluorescence (and is then refused beside RGB sections, as before)."""
    info = image.info
    if info.is_rgb or info.channels != 1 or info.frames != 1:
        return None
    grey = _finite(image.downsampled(BRIGHTFIELD_TEST_DIM, channel=0).array.astype(np.float32), image)
    height, width = grey.shape
    if min(height, width) < 8:
        return None
    rows, columns = max(2, round(BORDER_SHARE * height)), max(2, round(BORDER_SHARE * width))
    glass = float(np.median(np.concatenate([grey[:rows].ravel(), grey[-rows:].ravel(), grey[:, :columns].ravel(),
                                            grey[:, -columns:].ravel()])))
    low, high = np.percentile(grey, [2, 98])
    return glass if high > low and glass > low + GLASS_POSITION * (high - low) else None


_told_non_finite: set[str] = set()  # files whose NaN/inf pixels were reported (once per file and process)


def _finite(array: np.ndarray, image: TiffImage) -> np.ndarray:
    """``array`` with NaN and infinite pixels set to the lowest finite value: missing data, read as "no signal".

    Float images carry NaN where a processing step had no value (outside a stitched mosaic, a masked region) and
    inf where one divided by zero; every statistic of the registration (percentiles, Otsu's threshold, the edge
    score) fails on them ("autodetected range of [nan, nan] is not finite", with no file named, which used to lose
    the whole batch). Such pixels are told once per file on stderr; a plane with no finite pixel at all is refused.
    """
    bad = ~np.isfinite(array)
    if not bad.any():
        return array
    path = str(image.path)
    if bad.all():
        raise RegistrationError("has no finite pixel in its registration channel (all NaN or infinite).", path,
                                "check the image, or choose another --channel.")
    if path not in _told_non_finite:
        _told_non_finite.add(path)
        print(f"slimreg: warning: {path}: {100 * bad.mean():.2g} % of its registration channel's pixels are NaN or "
              "infinite; registration treats them as missing data (no signal), and the registered copy keeps them "
              "as they are.", file=sys.stderr)
    return np.where(bad, array[~bad].min(), array)


def normalise(array: np.ndarray) -> np.ndarray:
    """Scale robustly to 0..1 (1st-99.8th percentile of the non-background pixels)."""
    values = array[array > np.percentile(array, 5)] if array.size > 100 else array.ravel()
    if values.size == 0:
        values = array.ravel()
    low, high = np.percentile(values, [1, 99.8]) if values.size else (0.0, 1.0)
    if high - low < 1e-9:
        return np.zeros_like(array, dtype=np.float32)
    return np.clip((array - low) / (high - low), 0, 1).astype(np.float32)

"""Plausibility of a fit, checked before anything is allocated or written from it.

A bad fit can imply an absurd output (VALIS' tracker has a 664 GB allocation from one): slimreg refuses
scale changes far from what the pixel sizes imply, strong shear, and mirror images unless they were asked
for. The warp's output is always the reference frame, so an accepted transform cannot enlarge it.
"""

from __future__ import annotations

import numpy as np

from slimreg.errors import RegistrationError
from slimreg.io.read import TiffImage

MAX_SCALE_CHANGE = 2.0  # beyond the scale the pixel sizes imply
MAX_ANISOTROPY = 1.5  # sections shear a little when cut and mounted; not by half


def plausibility_problem(matrix: np.ndarray, expected_scale: float = 1.0, allow_mirror: bool = False) -> str | None:
    """Why a level-0 pull matrix is implausible, or None."""
    linear = np.asarray(matrix, dtype=np.float64)[:2, :2]
    if not np.isfinite(matrix).all():
        return "registration produced a non-finite transform"
    singular = np.linalg.svd(linear, compute_uv=False)
    if singular.min() <= 0:
        return "registration produced a degenerate transform"
    if np.linalg.det(linear) < 0 and not allow_mirror:
        return "registration found a mirrored fit (pass --allow-mirror if sections were mounted face down)"
    relative = singular / expected_scale
    if relative.max() > MAX_SCALE_CHANGE or relative.min() < 1 / MAX_SCALE_CHANGE:
        return (f"registration found an implausible scale change ({relative.min():.2f}-{relative.max():.2f}x of "
                "what the pixel sizes imply)")
    if singular.max() / singular.min() > MAX_ANISOTROPY:
        return f"registration found an implausible shear/anisotropy ({singular.max() / singular.min():.2f})"
    return None


def check_plausible(matrix: np.ndarray, moving_path: str, expected_scale: float = 1.0,
                    allow_mirror: bool = False) -> None:
    """Raise a RegistrationError naming the image if the fit is implausible."""
    problem = plausibility_problem(matrix, expected_scale, allow_mirror)
    if problem is not None:
        raise RegistrationError(f"{problem}; refusing to write it.", moving_path,
                                "check pixel sizes and that the image belongs to the sample, or choose another "
                                "--channel.")


def expected_scale(reference: TiffImage, moving: TiffImage) -> float:
    """Moving level-0 px per reference level-0 px that the pixel sizes imply (1 when either is unknown)."""
    ref_size, mov_size = reference.info.pixel_size_um, moving.info.pixel_size_um
    if not ref_size or not mov_size or min(*ref_size, *mov_size) <= 0:
        return 1.0
    return float(np.mean(ref_size) / np.mean(mov_size))

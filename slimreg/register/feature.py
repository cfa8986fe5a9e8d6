"""The light engine: OpenCV features + RANSAC, ECC refinement, and dense optical flow; no torch.

All work happens on downsampled copies (``Downsampled`` carries their exact level-0 scale), so memory
depends on the preset, not on the image size. The result is a level-0 pull map (see slimreg.transform).
Matrices between frames: ``S`` maps a downsampled frame to level 0, ``x0 = s * x + (s - 1) / 2``.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage
from skimage import filters

from slimreg.errors import RegistrationError
from slimreg.io.read import Downsampled, TiffImage
from slimreg.metrics import ncc
from slimreg.register.channel import registration_image
from slimreg.register.settings import RegistrationSettings
from slimreg.transform import Displacement, Transform

MAX_SCALE_CHANGE = 2.0
MAX_ANISOTROPY = 1.5
FLOW_GRID_FACTOR = 4
MIN_FLOW_GAIN = 0.002  # NCC gain below which a displacement field is noise, not deformation


def tissue_mask(image: np.ndarray) -> np.ndarray:
    """Foreground (tissue, cells) by Otsu's threshold on a lightly smoothed copy, slightly dilated."""
    smooth = ndimage.gaussian_filter(image.astype(np.float32), 2.0)
    if smooth.max() - smooth.min() < 1e-6:
        return np.zeros(image.shape, dtype=bool)
    mask = smooth > filters.threshold_otsu(smooth) * 0.5
    mask = ndimage.binary_opening(mask, iterations=2)
    return ndimage.binary_dilation(mask, iterations=3)


def frame_matrix(scale: float) -> np.ndarray:
    """3x3 matrix mapping a downsampled frame of ``scale`` to level-0 pixels."""
    offset = (scale - 1.0) / 2.0
    return np.array([[scale, 0, offset], [0, scale, offset], [0, 0, 1.0]])


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)


def check_plausible(matrix: np.ndarray, moving_path: str) -> None:
    """Refuse a fit whose output would be absurd (far scale change, strong shear, mirror)."""
    linear = matrix[:2, :2]
    singular = np.linalg.svd(linear, compute_uv=False)
    if np.linalg.det(linear) <= 0:
        raise RegistrationError("registration found a mirrored fit; the images probably do not match.", moving_path,
                                "check that this image belongs to the sample, or try another --channel.")
    if singular.max() > MAX_SCALE_CHANGE or singular.min() < 1 / MAX_SCALE_CHANGE:
        raise RegistrationError(f"registration found an implausible scale change ({singular.min():.2f}-"
                                f"{singular.max():.2f}x); refusing to write it.", moving_path,
                                "check pixel sizes and that the image belongs to the sample.")
    if singular.max() / singular.min() > MAX_ANISOTROPY:
        raise RegistrationError(f"registration found an implausible shear/anisotropy "
                                f"({singular.max() / singular.min():.2f}); refusing to write it.", moving_path,
                                "try --transform-model similarity or another --channel.")


class FeatureEngine:
    """SIFT matches -> RANSAC affine/similarity -> ECC refinement -> optional dense-flow displacement."""

    name = "feature"

    def register_pair(self, reference: TiffImage, moving: TiffImage, reference_channel: int | str,
                      moving_channel: int | str, settings: RegistrationSettings) -> Transform:
        ref = registration_image(reference, reference_channel, settings.processing_dim)
        mov = registration_image(moving, moving_channel, settings.processing_dim)
        affine, stats = self.match(ref, mov, settings, moving.info.path)
        if settings.micro:
            affine, stats["ecc_correlation"] = self.refine_ecc(reference, moving, reference_channel, moving_channel,
                                                               affine, settings)
            check_plausible(affine, moving.info.path)
        displacement = None
        if settings.non_rigid:
            displacement, flow_stats = self.dense_flow(reference, moving, reference_channel, moving_channel, affine,
                                                       settings)
            stats.update(flow_stats)
        ref_info, mov_info = reference.info, moving.info
        return Transform(affine, displacement, (ref_info.height, ref_info.width), (mov_info.height, mov_info.width),
                         metadata={"engine": self.name, "quality": stats})

    def match(self, ref: Downsampled, mov: Downsampled, settings: RegistrationSettings,
              moving_path: str) -> tuple[np.ndarray, dict[str, float]]:
        """Level-0 affine from SIFT matches (Lowe ratio test) and RANSAC."""
        sift = cv2.SIFT_create(nfeatures=settings.max_features)
        kp_ref, des_ref = sift.detectAndCompute(to_uint8(ref.array), None)
        kp_mov, des_mov = sift.detectAndCompute(to_uint8(mov.array), None)
        too_few = min(len(kp_ref), len(kp_mov)) < settings.min_inliers
        if des_ref is None or des_mov is None or too_few:
            raise RegistrationError(
                f"too few features to register ({0 if des_mov is None else len(kp_mov)} in the image, "
                f"{0 if des_ref is None else len(kp_ref)} in the reference): the registration channel has no texture.",
                moving_path, "check the image has tissue in the registration channel, or choose another --channel.")
        pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(des_ref, des_mov, k=2)
        good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < 0.8 * n.distance]
        if len(good) < settings.min_inliers:
            raise RegistrationError(f"only {len(good)} feature matches with the reference (need "
                                    f"{settings.min_inliers}); the images may not overlap.", moving_path,
                                    "check the image belongs to this sample, or try another --channel.")
        src = ref.to_level0(np.array([kp_ref[m.queryIdx].pt for m in good]))
        dst = mov.to_level0(np.array([kp_mov[m.trainIdx].pt for m in good]))
        estimator = cv2.estimateAffine2D if settings.transform_model == "affine" else cv2.estimateAffinePartial2D
        threshold = 2.5 * max(ref.scale, mov.scale)
        matrix, inliers = estimator(src.astype(np.float32), dst.astype(np.float32), method=cv2.RANSAC,
                                    ransacReprojThreshold=threshold, maxIters=10000, confidence=0.9999,
                                    refineIters=100)
        count = int(inliers.sum()) if inliers is not None else 0
        if matrix is None or count < settings.min_inliers:
            raise RegistrationError(f"only {count} consistent feature matches (need {settings.min_inliers}); "
                                    "registration failed.", moving_path,
                                    "check the image belongs to this sample, or try another --channel.")
        affine = np.vstack([matrix, [0, 0, 1]])
        check_plausible(affine, moving_path)
        mask = inliers.ravel().astype(bool)
        residual = np.hypot(*((src[mask] @ affine[:2, :2].T + affine[:2, 2]) - dst[mask]).T)
        return affine, {"matches": len(good), "inliers": count, "inlier_rmse_px": float(np.sqrt(np.mean(residual**2)))}

    def refine_ecc(self, reference: TiffImage, moving: TiffImage, reference_channel: int | str,
                   moving_channel: int | str, affine: np.ndarray,
                   settings: RegistrationSettings) -> tuple[np.ndarray, float]:
        """Refine the affine by maximising the enhanced correlation (ECC) at ``micro_dim``."""
        ref = registration_image(reference, reference_channel, settings.micro_dim)
        mov = registration_image(moving, moving_channel, settings.micro_dim)
        s_ref, s_mov = frame_matrix(ref.scale), frame_matrix(mov.scale)
        warp = (np.linalg.inv(s_mov) @ affine @ s_ref)[:2].astype(np.float32)
        motion = cv2.MOTION_AFFINE if settings.transform_model == "affine" else cv2.MOTION_EUCLIDEAN
        if motion == cv2.MOTION_EUCLIDEAN and abs(np.linalg.det(warp[:, :2]) - 1) > 1e-3:
            motion = cv2.MOTION_AFFINE
        template = ndimage.gaussian_filter(ref.array, 1.0)
        source = ndimage.gaussian_filter(mov.array, 1.0)
        mask = tissue_mask(template).astype(np.uint8)
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 200, 1e-6)
        try:
            correlation, refined = cv2.findTransformECC(template, source, warp, motion, criteria, mask, 1)
        except cv2.error:
            return affine, float("nan")
        candidate = s_mov @ np.vstack([refined, [0, 0, 1]]) @ np.linalg.inv(s_ref)
        shift = np.abs(candidate[:2, 2] - affine[:2, 2]).max()
        if not np.isfinite(candidate).all() or shift > 10 * max(ref.scale, mov.scale):
            return affine, float("nan")  # ECC wandered off: keep the feature fit
        return candidate, float(correlation)

    def dense_flow(self, reference: TiffImage, moving: TiffImage, reference_channel: int | str,
                   moving_channel: int | str, affine: np.ndarray,
                   settings: RegistrationSettings) -> tuple[Displacement | None, dict[str, float]]:
        """Smooth displacement (reference frame) from DIS optical flow on the affinely aligned pair."""
        ref = registration_image(reference, reference_channel, settings.non_rigid_dim)
        mov = registration_image(moving, moving_channel, settings.non_rigid_dim)
        warp = np.linalg.inv(frame_matrix(mov.scale)) @ affine @ frame_matrix(ref.scale)
        height, width = ref.array.shape
        aligned = cv2.warpAffine(mov.array, warp[:2], (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        flow = self._flow(ref.array, aligned)
        tissue = tissue_mask(ref.array) & (aligned > 0.0)
        flow = self._regularise(flow, tissue)
        before = ncc(ref.array, aligned, tissue)
        grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
        unwarped = cv2.remap(aligned, grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_LINEAR)
        after = ncc(ref.array, unwarped, tissue)
        stats = {"flow_ncc_before": before, "flow_ncc_after": after}
        if not after > before + MIN_FLOW_GAIN:
            return None, {**stats, "non_rigid_used": 0.0}
        factor = FLOW_GRID_FACTOR if min(height, width) >= 16 * FLOW_GRID_FACTOR else 1
        gh, gw = height // factor, width // factor
        blocks = flow[: gh * factor, : gw * factor].reshape(gh, factor, gw, factor, 2).mean(axis=(1, 3))
        displacement = Displacement(blocks[..., 0] * ref.scale, blocks[..., 1] * ref.scale, spacing=ref.scale * factor)
        return displacement, {**stats, "non_rigid_used": 1.0,
                              "max_displacement_px": float(np.hypot(displacement.dx, displacement.dy).max())}

    @staticmethod
    def _flow(reference: np.ndarray, aligned: np.ndarray) -> np.ndarray:
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        dis.setFinestScale(0)
        dis.setVariationalRefinementIterations(10)
        return dis.calc(to_uint8(reference), to_uint8(aligned), None)

    @staticmethod
    def _regularise(flow: np.ndarray, tissue: np.ndarray) -> np.ndarray:
        """Normalised convolution: smooth over tissue, fill background from nearby tissue, keep it invertible."""
        sigma = max(2.0, 0.015 * max(flow.shape[:2]))
        weight = ndimage.gaussian_filter(tissue.astype(np.float32), sigma)
        smooth = np.empty_like(flow)
        for band in range(2):
            smooth[..., band] = ndimage.gaussian_filter(flow[..., band] * tissue, sigma) / np.maximum(weight, 1e-3)
        smooth[weight < 1e-3] = 0.0
        for _ in range(5):
            gradient = max(np.abs(np.gradient(smooth[..., b])).max() for b in range(2))
            if gradient < 0.5:
                break
            smooth = ndimage.gaussian_filter(smooth, (sigma, sigma, 0))
        return smooth


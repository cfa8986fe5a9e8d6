"""The VALIS engine: VALIS finds the transforms, slimreg maps them to level 0 and warps.

Why not VALIS' own outputs:
- Its warp-and-save reads whole levels and ignores ``tile_wh``; slimreg's streamed warp keeps memory flat.
- It scales coordinates between level 0 and its processed images as ``x / s`` (pixel corners) while its
  matrices are fitted on pixel-index coordinates (pixel centres). Used plainly, every moving image lands
  ``(s - 1) / 2`` px off the reference frame along each axis (measured: 0.55, 0.53 px at s = 2; see
  docs/valis-offset.md). slimreg therefore asks VALIS only for the mapping between its *processed* frames,
  where its own scalings cancel, and converts to level 0 with the exact centre rule
  ``x0 = (x + 0.5) * W0 / w - 0.5``.

Each moving image is registered with the reference on its own (a two-image VALIS run), so an image's
result never depends on which batch it lands in, and memory is that of two images at the preset's size.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from slimreg.errors import RegistrationError
from slimreg.io.read import TiffImage
from slimreg.register.channel import OPTICAL_DENSITY
from slimreg.register.feature import check_plausible
from slimreg.register.settings import RegistrationSettings
from slimreg.register.valis_offline import deep_weights_available, import_valis, no_network, weights_dir
from slimreg.transform import Displacement, Transform

GRID_STEP_PROCESSED_PX = 8  # displacement grid spacing, in processed-image pixels
MIN_DISPLACEMENT_PX = 0.01  # below this everywhere, a field is dropped as numerically zero


class ValisEngine:
    """Registers each moving image to the reference with VALIS (rigid, non-rigid, micro)."""

    name = "valis"

    def __init__(self, log: Any = None):
        self.log = log or (lambda text: print(f"[valis] {text}", file=sys.stderr, flush=True))

    def register_many(self, reference: TiffImage, moving: list[TiffImage], reference_channel: int | str,
                      moving_channels: list[int | str], settings: RegistrationSettings,
                      workdir: Path) -> list[Transform | RegistrationError]:
        registration = import_valis()
        matcher_note = self._matcher_description()
        self.log(matcher_note)
        results: list[Transform | RegistrationError] = []
        for index, (image, channel) in enumerate(zip(moving, moving_channels, strict=True)):
            try:
                with no_network():
                    transform = self._register_pair(registration, reference, image, reference_channel, channel,
                                                    settings, workdir / f"pair{index}")
                transform.metadata["matcher"] = matcher_note
                results.append(transform)
            except RegistrationError as error:
                results.append(error)
        return results

    @staticmethod
    def _matcher_description() -> str:
        if deep_weights_available():
            return f"DISK features with LightGlue matching (weights from {weights_dir()})"
        return (f"DISK/LightGlue weights not found in {weights_dir()}; using weights-free VGG features with "
                "brute-force matching (set SLIMREG_WEIGHTS_DIR to a torch hub folder that holds them)")

    def _build(self, registration: Any, src: Path, dst: Path, reference: Path, moving: Path,
               settings: RegistrationSettings) -> Any:
        from skimage import transform as sktransform
        from valis import feature_detectors, feature_matcher, non_rigid_registrars

        if deep_weights_available():
            matcher = feature_matcher.LightGlueMatcher(feature_detector=feature_detectors.DiskFD())
        else:
            matcher = feature_matcher.Matcher(feature_detector=feature_detectors.VggFD(),
                                              match_filter_method=feature_matcher.DEFAULT_RANSAC_NAME)
        model = sktransform.AffineTransform if settings.transform_model == "affine" else sktransform.SimilarityTransform
        registrar = registration.Valis(
            str(src), str(dst), img_list=[str(reference), str(moving)], reference_img_f=str(reference),
            align_to_reference=True, imgs_ordered=True, crop="reference",
            feature_detector_cls=None, matcher=matcher, transformer_cls=model,
            matcher_for_sorting=feature_matcher.Matcher(feature_detector=feature_detectors.VggFD()),
            non_rigid_registrar_cls=non_rigid_registrars.OpticalFlowWarper if settings.non_rigid else None,
            max_image_dim_px=settings.processing_dim, max_processed_image_dim_px=settings.processing_dim,
            max_non_rigid_registration_dim_px=settings.non_rigid_dim)
        registrar.non_rigid_reg_kwargs = getattr(registrar, "non_rigid_reg_kwargs", {})  # VALIS bug without NR
        return registrar

    def _register_pair(self, registration: Any, reference: TiffImage, moving: TiffImage,
                       reference_channel: int | str, moving_channel: int | str, settings: RegistrationSettings,
                       workdir: Path) -> Transform:
        from valis import preprocessing, slide_io

        src, dst = workdir / "src", workdir / "valis"
        src.mkdir(parents=True, exist_ok=True)
        ref_link, mov_link = src / f"reference{_suffix(reference.path)}", src / f"moving{_suffix(moving.path)}"
        os.symlink(reference.path.resolve(), ref_link)
        os.symlink(moving.path.resolve(), mov_link)
        registrar = self._build(registration, src, dst, ref_link, mov_link, settings)
        processors = {str(ref_link): _processor(preprocessing, reference, reference_channel),
                      str(mov_link): _processor(preprocessing, moving, moving_channel)}
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            rigid, _, _ = registrar.register(reader_cls=slide_io.VipsSlideReader, processor_dict=processors)
        if rigid is None:
            raise RegistrationError(f"VALIS registration failed: {_last_error(captured.getvalue())}", moving.path,
                                    "check the image has tissue in the registration channel, or try --engine "
                                    "feature.")
        transform = self._to_transform(registrar, ref_link, mov_link, reference, moving, settings)
        if settings.micro and settings.non_rigid and settings.micro_dim > settings.non_rigid_dim and \
                max(reference.info.width, reference.info.height) > settings.non_rigid_dim:
            transform = self._micro(registrar, processors, ref_link, mov_link, reference, moving, reference_channel,
                                    moving_channel, settings, transform, captured)
        check_plausible(transform.affine, moving.info.path)
        return transform

    def _micro(self, registrar: Any, processors: dict[str, Any], ref_link: Path, mov_link: Path,
               reference: TiffImage, moving: TiffImage, reference_channel: int | str, moving_channel: int | str,
               settings: RegistrationSettings, before: Transform, captured: io.StringIO) -> Transform:
        """VALIS micro-registration, kept only if it improves the alignment measurably.

        Measured here: on the demo's smoothly deformed round, ``register_micro`` moved VALIS' own point
        mapping from 0.13 px to 14.9 px median error, so its result is checked rather than trusted.
        """
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            registrar.register_micro(processor_dict=processors, reference_img_f=str(ref_link),
                                     align_to_reference=True, max_non_rigid_registration_dim_px=settings.micro_dim)
        after = self._to_transform(registrar, ref_link, mov_link, reference, moving, settings)
        score_before, score_after = (alignment_score(reference, moving, reference_channel, moving_channel, t,
                                                     settings.non_rigid_dim) for t in (before, after))
        kept = score_after > score_before + 0.002
        chosen = after if kept else before
        chosen.metadata["quality"].update({"micro_ncc_before": score_before, "micro_ncc_after": score_after,
                                           "micro_used": float(kept)})
        if not kept:
            self.log(f"{moving.path.name}: micro-registration did not improve NCC ({score_before:.3f} -> "
                     f"{score_after:.3f}); keeping the non-rigid result")
        return chosen

    def _to_transform(self, registrar: Any, ref_link: Path, mov_link: Path, reference: TiffImage,
                      moving: TiffImage, settings: RegistrationSettings) -> Transform:
        """Sample VALIS' reference->moving map between processed frames; fit A; keep the rest as D."""
        ref_slide, mov_slide = registrar.get_slide(str(ref_link)), registrar.get_slide(str(mov_link))
        ref_h, ref_w = ref_slide.processed_img_shape_rc
        mov_h, mov_w = mov_slide.processed_img_shape_rc
        height0, width0 = reference.info.height, reference.info.width
        scale_x, scale_y = width0 / ref_w, height0 / ref_h
        spacing = GRID_STEP_PROCESSED_PX * scale_x
        gw, gh = int(np.ceil(width0 / spacing)), int(np.ceil(height0 / spacing))
        node_x = (np.arange(gw) + 0.5) * spacing - 0.5
        node_y = (np.arange(gh) + 0.5) * spacing - 0.5
        xx, yy = np.meshgrid(node_x, node_y)
        level0 = np.stack([xx.ravel(), yy.ravel()], axis=1)
        processed = np.stack([(level0[:, 0] + 0.5) / scale_x - 0.5, (level0[:, 1] + 0.5) / scale_y - 0.5], axis=1)
        mapped = ref_slide.warp_xy_from_to(processed, mov_slide, src_pt_level=(ref_h, ref_w),
                                           dst_slide_level=(mov_h, mov_w), non_rigid=settings.non_rigid)
        mov_x = (mapped[:, 0] + 0.5) * moving.info.width / mov_w - 0.5
        mov_y = (mapped[:, 1] + 0.5) * moving.info.height / mov_h - 0.5
        target = np.stack([mov_x, mov_y], axis=1)
        design = np.hstack([level0, np.ones((len(level0), 1))])
        solution, *_ = np.linalg.lstsq(design, target, rcond=None)
        affine = np.vstack([solution.T, [0, 0, 1]])
        displacement = None
        if settings.non_rigid:
            inverse = np.linalg.inv(affine)
            residual = target @ inverse[:2, :2].T + inverse[:2, 2] - level0
            if np.abs(residual).max() > MIN_DISPLACEMENT_PX:
                displacement = Displacement(residual[:, 0].reshape(gh, gw), residual[:, 1].reshape(gh, gw), spacing)
        quality = {"processed_shape_reference": [int(ref_h), int(ref_w)],
                   "processed_shape_moving": [int(mov_h), int(mov_w)],
                   "non_rigid_used": float(displacement is not None)}
        return Transform(affine, displacement, (height0, width0), (moving.info.height, moving.info.width),
                         metadata={"engine": self.name, "quality": quality})


def alignment_score(reference: TiffImage, moving: TiffImage, reference_channel: int | str,
                    moving_channel: int | str, transform: Transform, max_dim: int) -> float:
    """NCC over the reference's tissue between the reference and the moving image pulled through ``transform``."""
    from scipy import ndimage

    from slimreg.metrics import ncc
    from slimreg.register.channel import registration_image
    from slimreg.register.feature import tissue_mask

    ref = registration_image(reference, reference_channel, max_dim)
    mov = registration_image(moving, moving_channel, max_dim)
    height, width = ref.array.shape
    yy, xx = np.mgrid[0:height, 0:width]
    points = ref.to_level0(np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float64))
    source = mov.from_level0(transform.pull(points))
    pulled = ndimage.map_coordinates(mov.array, [source[:, 1], source[:, 0]], order=1, cval=0.0).reshape(height, width)
    return ncc(ref.array, pulled, tissue_mask(ref.array))


def _suffix(path: Path) -> str:
    return ".ome.tif" if path.name.lower().endswith((".ome.tif", ".ome.tiff")) else path.suffix


def _processor(preprocessing: Any, image: TiffImage, channel: int | str) -> list[Any]:
    if channel == OPTICAL_DENSITY:
        return [preprocessing.OD, {"adaptive_eq": False}]
    return [preprocessing.ChannelGetter, {"channel": image.info.channel_names[int(channel)], "adaptive_eq": True}]


def _last_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if "Error" in line or "error" in line]
    return lines[-1][:300] if lines else "VALIS returned no result (no message)"

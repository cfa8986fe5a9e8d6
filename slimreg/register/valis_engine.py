"""The VALIS engine: VALIS finds the transforms, slimreg maps them to level 0 and warps.

Why not VALIS' own outputs:
- Its warp-and-save reads whole levels and ignores ``tile_wh``; slimreg's streamed warp keeps memory flat.
- It scales coordinates between level 0 and its processed images as ``x / s`` (pixel corners) while its
  matrices are fitted on pixel-index coordinates (pixel centres). Used plainly, every moving image lands
  ``(s - 1) / 2`` px off the reference frame along each axis (measured: 0.55, 0.53 px at s = 2; see
  docs/valis-offset.md). slimreg therefore asks VALIS only for the mapping between its *processed* frames,
  where its own scalings cancel, and converts to level 0 with the exact centre rule
  ``x0 = (x + 0.5) * W0 / w - 0.5``.

VALIS reads the user's file itself where it can read it as it would used plainly (its result hangs on the pixels it
is given), a bounded copy otherwise (:func:`valis_source`).

A batch of several moving images is registered in one VALIS run, as VALIS' authors run a sample: VALIS orders the
images by similarity and aligns each to its neighbour on the way to the reference (its default,
``align_to_reference=False``), so a section is chained through the sections most like it. A single moving image is
a two-image run. If the groupwise run fails as a whole, each image is registered with the reference on its own.
Memory grows with the batch (``slimreg.estimate.valis_run_bytes``: one image's share per further moving image).
Measured with VALIS used plainly on samples of three moving sections (benchmarks/valis_groupwise.py,
docs/accuracy.md): the groupwise run took 55-69 s against 87-110 s for one run per image, at the same peak; it was
better on 6 of the 12 images and worse on 6, and never failed where one single run did (42 px against 5.7 px).

VALIS' result is one candidate, not the verdict: the light engine registers the same pair first (seconds, no
torch; the mirror decoy it searches judges VALIS' result too, so it is searched once) and replaces VALIS' result
when the stain-robust edge score rates it clearly higher (``slimreg.register.similarity.CLEAR_GAIN_SD``).
Measured (docs/accuracy.md): on the shared lung pair with proSPC as reference, VALIS, used plainly or by this
engine, lands 42 px off (rTRE 0.036) while the light engine lands 6 px off, and the score tells them apart (0.183
vs 0.241, 3.7 noise sd); on the other pairs VALIS is kept. A user who asks for VALIS gets VALIS unless the measure
every result is judged by shows it clearly worse, with one exception. Where neither result scores clearly higher, and
the two place the tissue within one edge sigma of each other (which the score cannot resolve) but more than a px of
its copy apart, the engine keeps the map halfway between them (``AGREEMENT_SIGMAS``, ``SAME_PLACEMENT_PX``): two
estimates with independent errors average to a smaller error. On the shared kidney pair, where VALIS was kept, the
landmarks' median went from 3.51 / 4.20 px (VALIS used plainly 3.46 / 4.22) to 2.93 / 3.06 (docs/accuracy.md, "The
valis engine: a draw between two results that agree").
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from slimreg.errors import RegistrationError
from slimreg.estimate import BUDGET_MARGIN, pair_bytes, valis_copy_dim
from slimreg.io.read import Downsampled, TiffImage
from slimreg.register.bounded import run_within_budget
from slimreg.register.channel import OPTICAL_DENSITY, registration_image
from slimreg.register.feature import FeatureEngine
from slimreg.register.fields import RESOLVABLE_MOTION_SIGMAS
from slimreg.register.judgement import judge_transform
from slimreg.register.mirror import MirrorDecoy
from slimreg.register.plausibility import check_plausible, expected_scale
from slimreg.register.preprocess import edge_sigma, tissue_mask
from slimreg.register.settings import RegistrationSettings
from slimreg.register.similarity import clearly_higher, score_transform
from slimreg.register.tissue_crop import tissue_share
from slimreg.register.valis_offline import deep_weights_available, import_valis, no_network, weights_dir
from slimreg.transform import Displacement, Transform, midway

# VALIS' maps are sampled at every processed pixel, up to this many a side (a field of 1024 x 1024 nodes is 8 MB).
# Measured on the shared section pairs (median landmark px, VALIS used plainly 3.78 / 4.38 / 5.56 / 42.12): a node
# every 8 processed px gave 3.80 / 4.27 / 5.64 / 6.27, every 2 px 3.76 / 4.36 / 5.58 / 6.27, every pixel 3.75 / 4.36 /
# 5.56 / 6.27. Capped at 512 a side, the lung pair's 890 px were sampled every 1.7 px: 5.57, behind VALIS used plainly.
MAX_GRID_NODES_PER_SIDE = 1024
MIDWAY = "halfway between VALIS and the light engine (a draw; they agree)"
MIN_DISPLACEMENT_PX = 0.01  # below this everywhere, a field is dropped as numerically zero
# Where neither VALIS' result nor the light engine's scores clearly higher, and they place the reference's tissue within
# this many edge sigmas of each other (median), the engine keeps the map halfway between them: closer than one sigma
# the edge score cannot tell two placements apart (the light engine tries no field finer:
# slimreg.register.fields.RESOLVABLE_MOTION_SIGMAS), and the mean of two estimates with independent errors errs less
AGREEMENT_SIGMAS = RESOLVABLE_MOTION_SIGMAS
# Closer than one px of the judging copy, the two are one placement at its resolution, and VALIS' is kept, as asked:
# averaging the IF rounds' maps, which differ by a tenth of a px, made their compositions 0.10 px inconsistent where
# VALIS' own are 0.03 (docs/accuracy.md, "The valis engine: a draw between two results that agree")
SAME_PLACEMENT_PX = 1.0


class ValisEngine:
    """Registers a batch of moving images onto the reference with VALIS: in one groupwise run, rigid and non-rigid
    as VALIS used plainly runs them, micro-registration only where it works at a larger size than the non-rigid
    step."""

    name = "valis"

    def __init__(self, log: Any = None):
        self.log = log or (lambda text: print(f"[valis] {text}", file=sys.stderr, flush=True))

    def register_many(self, reference: TiffImage, moving: list[TiffImage], reference_channel: int | str,
                      moving_channels: list[int | str], settings: RegistrationSettings,
                      workdir: Path) -> list[Transform | RegistrationError]:
        matcher_note = self._matcher_description()
        self.log(matcher_note)
        lights: list[Transform | RegistrationError] = []
        decoys: list[MirrorDecoy | None] = []
        for image, channel in zip(moving, moving_channels, strict=True):
            # the light engine first: VALIS' result is judged against the same mirror decoy, searched once
            decoy = None
            try:
                light, decoy = FeatureEngine().register_pair_and_decoy(reference, image, reference_channel, channel,
                                                                       settings, for_another_result=True)
            except RegistrationError as error:
                light = error
            lights.append(light)
            decoys.append(decoy)
        found = self._valis_results(reference, moving, reference_channel, moving_channels, settings, workdir, decoys)
        for result in found:
            if isinstance(result, Transform):
                result.metadata["matcher"] = matcher_note
        return [self._better(reference, image, reference_channel, channel, settings, valis_result, light)
                for image, channel, valis_result, light in zip(moving, moving_channels, found, lights, strict=True)]

    def _valis_results(self, reference: TiffImage, moving: list[TiffImage], reference_channel: int | str,
                       moving_channels: list[int | str], settings: RegistrationSettings, workdir: Path,
                       decoys: list[MirrorDecoy | None]) -> list[Transform | RegistrationError]:
        """VALIS' result for each moving image: one groupwise run for a batch of several, else (or if that run
        fails as a whole) one two-image run per image, each in a child process under its memory budget."""
        if len(moving) > 1:
            budget = int(BUDGET_MARGIN * pair_bytes(reference.info, [image.info for image in moving], settings))
            try:
                found, peak = run_within_budget(
                    register_group_offline, (reference.path, [image.path for image in moving], reference_channel,
                                             moving_channels, settings, workdir / "group", decoys), budget,
                    "VALIS registration", str(reference.path))
            except RegistrationError as error:
                self.log(f"VALIS' groupwise run of {len(moving)} images failed ({error.message}); registering each "
                         "with the reference on its own")
            else:
                for result in found:
                    if isinstance(result, Transform):  # the run's peak, shared by its images
                        result.metadata["quality"]["peak_memory_bytes"] = peak
                        result.metadata["quality"]["valis_group_size"] = float(len(moving) + 1)
                return found
        results: list[Transform | RegistrationError] = []
        for index, (image, channel, decoy) in enumerate(zip(moving, moving_channels, decoys, strict=True)):
            budget = int(BUDGET_MARGIN * pair_bytes(reference.info, image.info, settings))
            try:
                transform, peak = run_within_budget(
                    register_pair_offline, (reference.path, image.path, reference_channel, channel, settings,
                                            workdir / f"pair{index}", decoy), budget, "VALIS registration",
                    str(image.path))
                transform.metadata["quality"]["peak_memory_bytes"] = peak
                results.append(transform)
            except RegistrationError as error:
                results.append(error)
        return results

    def _better(self, reference: TiffImage, moving: TiffImage, reference_channel: int | str,
                moving_channel: int | str, settings: RegistrationSettings,
                valis_result: Transform | RegistrationError,
                light: Transform | RegistrationError) -> Transform | RegistrationError:
        """VALIS' result or the light engine's, whichever the edge score rates clearly higher, or, where neither does
        and the two agree within ``AGREEMENT_SIGMAS`` but are distinct placements (``SAME_PLACEMENT_PX``), the map
        halfway between them (see the module docstring).

        When both fail, VALIS' message is the one reported (the user asked for VALIS)."""
        if isinstance(light, RegistrationError):
            if isinstance(valis_result, Transform):
                valis_result.metadata["quality"]["light_engine_failed"] = 1.0
                self.log(f"{moving.path.name}: kept VALIS' result (the light engine found none: {light.message})")
            return valis_result
        if isinstance(valis_result, RegistrationError):
            self.log(f"{moving.path.name}: VALIS failed ({valis_result.message}); keeping the light engine's result")
            return self._labelled(light, "light engine (VALIS failed)", {})
        dim = settings.search_dim
        ref = registration_image(reference, reference_channel, dim)
        mov = registration_image(moving, moving_channel, dim)
        valis_score = score_transform(ref, mov, valis_result)[0]
        light_score = score_transform(ref, mov, light)[0].value
        noise = valis_score.ring_std if np.isfinite(valis_score.ring_std) else 0.0
        scores = {"valis_edge_correlation": valis_score.value, "light_engine_edge_correlation": light_score,
                  "edge_correlation_noise_sd": noise}
        # smaller gaps are noise, and the user asked for VALIS. Measured: lung proSPC <- HE 3.3 sd (VALIS 42 px off,
        # light 6 px: switched); calcium frames +1.3 and -1.3 sd (kept; both engines' maps equally self-consistent)
        if clearly_higher(light_score, valis_score.value, noise):
            self.log(f"{moving.path.name}: the light engine's result scores clearly higher than VALIS' "
                     f"({light_score:.3f} vs {valis_score.value:.3f} edge correlation, noise sd {noise:.3f}); "
                     "keeping it")
            # the VALIS child ran all the same: its peak is part of what this image cost
            scores["peak_memory_bytes"] = valis_result.metadata["quality"].get("peak_memory_bytes", 0)
            return self._labelled(light, "light engine (scored clearly higher)", scores)
        apart = disagreement_sigmas(ref, valis_result, light)
        scores["light_valis_disagreement_sigmas"] = apart
        apart_px = apart * edge_sigma(ref.array.shape)  # px of the judging copy
        if apart_px >= SAME_PLACEMENT_PX and apart < AGREEMENT_SIGMAS and \
                not clearly_higher(valis_score.value, light_score, noise):
            self.log(f"{moving.path.name}: VALIS' result and the light engine's score alike ({valis_score.value:.3f} "
                     f"vs {light_score:.3f} edge correlation, noise sd {noise:.3f}) and agree within {apart:.2f} edge "
                     "sigma; keeping the map halfway between them")
            return self._labelled(midway(valis_result, light, valis_result.metadata), MIDWAY, scores)
        return self._labelled(valis_result, "VALIS", scores)

    def _labelled(self, transform: Transform, chosen: str, scores: dict[str, float]) -> Transform:
        transform.metadata["engine"] = self.name
        transform.metadata["chosen"] = chosen
        transform.metadata.setdefault("quality", {}).update(scores)
        return transform

    @staticmethod
    def _matcher_description() -> str:
        if deep_weights_available():
            return f"DISK features with LightGlue matching (weights from {weights_dir()})"
        return (f"DISK/LightGlue weights not found in {weights_dir()}; using weights-free VGG features with "
                "brute-force matching (set SLIMREG_WEIGHTS_DIR to a torch hub folder that holds them)")

    def _build(self, registration: Any, src: Path, dst: Path, reference: Path, moving: list[Path],
               settings: RegistrationSettings) -> Any:
        """A VALIS run of the reference and ``moving`` with VALIS' own defaults at the medium preset.

        VALIS is tuned as: similarity rigid model, images read at 1024 px and processed at 512 px, non-rigid at
        2048 px. Driving it otherwise (affine model, processing at 1024 px) cost accuracy on real sections (kidney
        pair: 31.9 px, worse than not registering; docs/accuracy.md). The presets scale those three sizes together
        (medium = VALIS' defaults); only the matcher departs, because DISK/LightGlue weights need a download. Several
        moving images keep VALIS' serial order (``align_to_reference=False``, its default); for one the two orders
        are the same run.
        """
        from valis import feature_detectors, feature_matcher

        if deep_weights_available():
            matcher = feature_matcher.LightGlueMatcher(feature_detector=feature_detectors.DiskFD())
        else:
            matcher = feature_matcher.Matcher(feature_detector=feature_detectors.VggFD())
        options: dict[str, Any] = {}
        if not settings.non_rigid:
            options["non_rigid_registrar_cls"] = None
        registrar = registration.Valis(
            str(src), str(dst), img_list=[str(reference), *map(str, moving)], reference_img_f=str(reference),
            align_to_reference=len(moving) == 1, feature_detector_cls=None, matcher=matcher,
            matcher_for_sorting=feature_matcher.Matcher(feature_detector=feature_detectors.VggFD()),
            max_image_dim_px=settings.processing_dim, max_processed_image_dim_px=settings.processing_dim // 2,
            max_non_rigid_registration_dim_px=settings.valis_non_rigid_dim, **options)
        registrar.non_rigid_reg_kwargs = getattr(registrar, "non_rigid_reg_kwargs", {})  # VALIS bug without NR
        return registrar

    def _register_group(self, registration: Any, reference: TiffImage, moving: list[TiffImage],
                        reference_channel: int | str, moving_channels: list[int | str],
                        settings: RegistrationSettings, workdir: Path,
                        decoys: list[MirrorDecoy | None]) -> list[Transform | RegistrationError]:
        """One VALIS run of the reference and every moving image; each image's result, or why it is not kept.

        Raises RegistrationError if VALIS' run fails as a whole."""
        from valis import preprocessing, slide_io

        src, dst = workdir / "src", workdir / "valis"
        src.mkdir(parents=True, exist_ok=True)
        ref_link, ref_span, ref_side = valis_source(reference, reference_channel, settings, src / "reference")
        sources = [valis_source(image, channel, settings, src / f"moving{index}")
                   for index, (image, channel) in enumerate(zip(moving, moving_channels, strict=True))]
        registrar = self._build(registration, src, dst, ref_link, [link for link, _, _ in sources], settings)
        processors = {str(ref_link): _processor(preprocessing, reference, reference_channel)}
        for (link, _, _), image, channel in zip(sources, moving, moving_channels, strict=True):
            processors[str(link)] = _processor(preprocessing, image, channel)
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            rigid, _, _ = registrar.register(reader_cls=slide_io.VipsSlideReader, processor_dict=processors)
        if rigid is None:
            raise RegistrationError(f"VALIS registration failed: {_last_error(captured.getvalue())}",
                                    moving[0].path if len(moving) == 1 else reference.path,
                                    "check the image has tissue in the registration channel, or try --engine "
                                    "feature.")
        transforms = [self._to_transform(registrar, ref_link, link, reference, image, settings, ref_span, span)
                      for (link, span, _), image in zip(sources, moving, strict=True)]
        # VALIS used plainly does not micro-register. A second pass adds detail only where it works at a larger size
        # than the non-rigid step did; VALIS caps both at the smaller image's long side. At the presets micro_dim is
        # the non-rigid size (VALIS' own 2048 px at medium), so it never runs a second pass at the same size.
        smaller = min(ref_side, *(side for _, _, side in sources))
        if settings.micro and settings.non_rigid and \
                min(settings.micro_dim, smaller) > min(settings.valis_non_rigid_dim, smaller):
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                registrar.register_micro(processor_dict=processors, reference_img_f=str(ref_link),
                                         align_to_reference=len(moving) == 1,
                                         max_non_rigid_registration_dim_px=settings.micro_dim)
            transforms = [self._micro_kept(before, self._to_transform(registrar, ref_link, link, reference, image,
                                                                      settings, ref_span, span),
                                           reference, image, reference_channel, channel, settings)
                          for before, (link, span, _), image, channel
                          in zip(transforms, sources, moving, moving_channels, strict=True)]
        results: list[Transform | RegistrationError] = []
        for transform, image, channel, decoy in zip(transforms, moving, moving_channels, decoys, strict=True):
            try:
                check_plausible(transform.affine, image.info.path, expected_scale(reference, image))
                # judged here too, so that _better weighs only a result that may be kept against the light engine's
                judge_transform(reference, image, reference_channel, channel, transform, settings, decoy)
                results.append(transform)
            except RegistrationError as error:
                results.append(error)
        return results

    def _micro_kept(self, before: Transform, after: Transform, reference: TiffImage, moving: TiffImage,
                    reference_channel: int | str, moving_channel: int | str,
                    settings: RegistrationSettings) -> Transform:
        """VALIS' micro-registration of one image, kept only if it improves the alignment measurably.

        Measured here: on the demo's smoothly deformed round, ``register_micro`` moved VALIS' own point
        mapping from 0.13 px to 14.9 px median error, so its result is checked rather than trusted.
        """
        ref = registration_image(reference, reference_channel, settings.non_rigid_dim)
        mov = registration_image(moving, moving_channel, settings.non_rigid_dim)
        score_before, score_after = (score_transform(ref, mov, t)[0].value for t in (before, after))
        kept = score_after > score_before
        chosen = after if kept else before
        chosen.metadata["quality"].update({"micro_ncc_before": score_before, "micro_ncc_after": score_after,
                                           "micro_used": float(kept)})
        if not kept:
            self.log(f"{moving.path.name}: micro-registration did not raise the edge correlation "
                     f"({score_before:.3f} -> {score_after:.3f}); keeping the non-rigid result")
        return chosen

    def _to_transform(self, registrar: Any, ref_link: Path, mov_link: Path, reference: TiffImage,
                      moving: TiffImage, settings: RegistrationSettings, ref_span: tuple[float, float],
                      mov_span: tuple[float, float]) -> Transform:
        """Sample VALIS' reference->moving maps between processed frames: A from its rigid map (exactly affine),
        D from the rest of its non-rigid map. (A fit through the whole non-rigid map let background areas, where
        VALIS' field is unconstrained, shear A: 2.08 on the kidney pair.)"""
        ref_slide, mov_slide = registrar.get_slide(str(ref_link)), registrar.get_slide(str(mov_link))
        ref_h, ref_w = ref_slide.processed_img_shape_rc
        mov_h, mov_w = mov_slide.processed_img_shape_rc
        height0, width0 = reference.info.height, reference.info.width
        scale_x, scale_y = ref_span[0] / ref_w, ref_span[1] / ref_h  # level-0 px per processed px
        spacing = max(1.0, max(ref_h, ref_w) / MAX_GRID_NODES_PER_SIDE) * scale_x
        gw, gh = int(np.ceil(width0 / spacing)), int(np.ceil(height0 / spacing))
        node_x = (np.arange(gw) + 0.5) * spacing - 0.5
        node_y = (np.arange(gh) + 0.5) * spacing - 0.5
        xx, yy = np.meshgrid(node_x, node_y)
        level0 = np.stack([xx.ravel(), yy.ravel()], axis=1)
        processed = np.stack([(level0[:, 0] + 0.5) / scale_x - 0.5, (level0[:, 1] + 0.5) / scale_y - 0.5], axis=1)
        def mapped_level0(non_rigid: bool) -> np.ndarray:
            mapped = ref_slide.warp_xy_from_to(processed, mov_slide, src_pt_level=(ref_h, ref_w),
                                               dst_slide_level=(mov_h, mov_w), non_rigid=non_rigid)
            return np.stack([(mapped[:, 0] + 0.5) * mov_span[0] / mov_w - 0.5,
                             (mapped[:, 1] + 0.5) * mov_span[1] / mov_h - 0.5], axis=1)

        design = np.hstack([level0, np.ones((len(level0), 1))])
        solution, *_ = np.linalg.lstsq(design, mapped_level0(False), rcond=None)
        target = mapped_level0(True) if settings.non_rigid else None
        affine = np.vstack([solution.T, [0, 0, 1]])
        displacement = None
        if target is not None:
            inverse = np.linalg.inv(affine)
            residual = target @ inverse[:2, :2].T + inverse[:2, 2] - level0
            if np.abs(residual).max() > MIN_DISPLACEMENT_PX:
                displacement = Displacement(residual[:, 0].reshape(gh, gw), residual[:, 1].reshape(gh, gw), spacing)
        quality = {"processed_shape_reference": [int(ref_h), int(ref_w)],
                   "processed_shape_moving": [int(mov_h), int(mov_w)],
                   "non_rigid_used": float(displacement is not None)}
        return Transform(affine, displacement, (height0, width0), (moving.info.height, moving.info.width),
                         metadata={"engine": self.name, "quality": quality})


def disagreement_sigmas(reference: Downsampled, first: Transform, second: Transform) -> float:
    """How far apart two results for one pair place the reference's tissue: the median distance between their pull
    maps over the tissue of ``reference`` (a working copy of the reference), in that copy's edge sigmas (the scale of
    the score that judges them), converted to level-0 reference px."""
    rows, columns = np.nonzero(tissue_mask(reference.array))
    if rows.size == 0:
        return math.inf
    points = reference.to_level0(np.stack([columns, rows], axis=1))
    apart = np.hypot(*(first.pull(points) - second.pull(points)).T)
    moving_px_per_reference_px = math.sqrt(abs(float(np.linalg.det(first.affine[:2, :2])))) or 1.0
    sigma = edge_sigma(reference.array.shape) * reference.scale
    return float(np.median(apart) / moving_px_per_reference_px / sigma)


def register_pair_offline(reference_path: Path, moving_path: Path, reference_channel: int | str,
                          moving_channel: int | str, settings: RegistrationSettings, workdir: Path,
                          decoy: MirrorDecoy | None = None) -> Transform:
    """One VALIS pair registration, offline (run in its own process by ``run_within_budget``); ``decoy``: the pair's
    mirror decoy, searched by the light engine in the parent. Raises why the result is not kept."""
    result = register_group_offline(reference_path, [moving_path], reference_channel, [moving_channel], settings,
                                    workdir, [decoy])[0]
    if isinstance(result, RegistrationError):
        raise result
    return result


def register_group_offline(reference_path: Path, moving_paths: list[Path], reference_channel: int | str,
                           moving_channels: list[int | str], settings: RegistrationSettings, workdir: Path,
                           decoys: list[MirrorDecoy | None]) -> list[Transform | RegistrationError]:
    """One VALIS run of the reference and every moving image, offline (in its own process, as
    ``register_pair_offline``); each image's result or why it is not kept."""
    registration = import_valis()
    with no_network():
        return ValisEngine()._register_group(registration, TiffImage(reference_path),
                                             [TiffImage(path) for path in moving_paths], reference_channel,
                                             moving_channels, settings, workdir, decoys)


def valis_source(image: TiffImage, channel: int | str, settings: RegistrationSettings,
                 target: Path) -> tuple[Path, tuple[float, float], int]:
    """What VALIS reads of ``image`` (``target`` plus a suffix): the user's file itself where VALIS reads it as it
    would used plainly, else a copy (:func:`valis_input`). Returns as :func:`valis_input` does.

    VALIS' result hangs on the pixels it is given: on the shared kidney pair at twice its size, VALIS used plainly
    lands 7.16 px off reading the file's own (JPEG-compressed) pyramid, and 11.82 px off reading a lossless copy of
    the same level 0 (its rigid step 19.4 against 49.4 px; docs/accuracy.md, "The valis engine"). So an RGB
    brightfield image is handed over as it is, where VALIS' libvips reader decodes at most twice what it needs:
    a single level, or a SubIFD pyramid as OME-TIFF writers make. Float and multi-channel files, which VALIS' readers
    fail on or read otherwise, and larger flat files are copied."""
    side = copy_dim(image, channel, settings)
    info = image.info
    if channel == OPTICAL_DENSITY and info.is_rgb and info.dtype == "uint8" and info.frames == 1 and \
            (len(info.levels) == 1 or info.subifd_pyramid):
        sides = sorted(max(height, width) for height, width in info.levels)
        decoded = next((level for level in sides if level >= side), sides[-1])
        if decoded <= 2 * side:
            ome = image.path.name.lower().endswith((".ome.tif", ".ome.tiff"))
            link = target.with_name(target.name + (".ome.tif" if ome else ".tif"))  # VALIS picks readers by suffix
            link.symlink_to(image.path.resolve())
            return link, (float(info.width), float(info.height)), max(info.width, info.height)
    return valis_input(image, channel, side, target.with_name(target.name + ".ome.tif"))


def copy_dim(image: TiffImage, channel: int | str, settings: RegistrationSettings) -> int:
    """Long side of the copy VALIS reads of ``image``: its tissue's box at VALIS' finest working size, as VALIS
    would read it from the slide itself (:func:`slimreg.estimate.valis_copy_dim`)."""
    return valis_copy_dim(image.info, settings.valis_finest_dim, tissue_share(image, channel, settings.search_dim))


def valis_input(image: TiffImage, channel: int | str, max_dim: int,
                target: Path) -> tuple[Path, tuple[float, float], int]:
    """What VALIS reads: a small OME-TIFF of the registration channel (RGB for brightfield), at most ``max_dim`` px.

    VALIS' readers fail on files users bring (ImageJ float TIFFs: "UnboundLocalError: slide_reader"), and read whole
    pyramid levels; a copy slimreg writes at VALIS' largest working size avoids both. Returns the copy, the
    level-0 extent (width, height) it covers (its size times its exact block factor) and its long side (px).
    """
    from slimreg.io import write_array
    from slimreg.register.channel import normalise

    if channel == OPTICAL_DENSITY and not image.info.is_rgb:
        # a grey brightfield scan (slimreg.register.channel.is_grey_brightfield): as 8-bit RGB, so that VALIS reads
        # it as brightfield. 8-bit pixels as they are, as VALIS used plainly would read them (its result moves with
        # the pixels it is given: on the grey kidney pair 3.17 / 4.31 px as they are, 3.74 px / the light result
        # stretched to the glass); wider ones with their glass (the brightest thing on the slide: the 99.9th
        # percentile) made white, as a 12-bit camera's scan in 16-bit pixels would otherwise be near black
        small = image.downsampled(max_dim, channel=0)
        if small.array.dtype == np.uint8:
            grey8 = small.array
        else:
            grey = small.array.astype(np.float32)
            white = float(np.percentile(grey, 99.9))
            grey8 = np.round(np.clip(grey / max(white, 1e-12), 0, 1) * 255).astype(np.uint8)
        pixels = np.repeat(grey8[..., None], 3, axis=2)
        write_array(pixels, target, is_rgb=True)
    elif channel == OPTICAL_DENSITY:
        small = image.downsampled(max_dim, channel=None)
        pixels = small.array[..., :3].astype(np.uint8)
        write_array(pixels, target, is_rgb=True)
    else:
        small = image.downsampled(max_dim, channel=int(channel))
        pixels = small.array
        if pixels.dtype not in (np.uint8, np.uint16):
            pixels = np.round(normalise(pixels.astype(np.float32)) * 65535).astype(np.uint16)
        write_array(pixels, target, channel_names=[image.info.channel_names[int(channel)]])
    height, width = pixels.shape[:2]
    return target, (width * small.scale, height * small.scale), max(width, height)


def _processor(preprocessing: Any, image: TiffImage, channel: int | str) -> list[Any]:
    if channel == OPTICAL_DENSITY:
        return [preprocessing.OD, {"adaptive_eq": False}]
    return [preprocessing.ChannelGetter, {"channel": image.info.channel_names[int(channel)], "adaptive_eq": True}]


def _last_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if "Error" in line or "error" in line]
    return lines[-1][:300] if lines else "VALIS returned no result (no message)"

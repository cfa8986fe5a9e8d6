"""GENERATE_REGISTRATION_QC: pictures and numbers for one registered image, at a size independent of the image.

Only downsampled registration channels are read (``max_dim`` px on the long side), so QC is never the step that runs
out of memory (the pipeline this project learned from warped full-resolution QC images inside REGISTER: the
VALIS-in-Nextflow memory notes this project started from). "Before" compares the reference with the original image
placed on the reference grid unchanged; "after" compares it with the registered image.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

import slimreg.layout as layout
from slimreg.atomic import atomic_output, write_json_atomic
from slimreg.errors import InputError
from slimreg.io.read import Downsampled, TiffImage
from slimreg.landmarks import read_landmarks
from slimreg.metrics import mutual_information, ncc
from slimreg.register.channel import OPTICAL_DENSITY, choose_channel, registration_image
from slimreg.register.preprocess import tissue_mask
from slimreg.register.similarity import (
    IDENTITY_TOLERANCE_PX,
    MIN_SHARED_TISSUE,
    MIN_SIGNIFICANCE,
    AlignmentScorer,
    moved_distance,
    place_through,
)
from slimreg.transform import Transform

UNCHANGED = Transform(np.eye(3))  # "before": the image placed on the reference grid as it is


@dataclass(frozen=True)
class QcThresholds:
    """When a registration is called a failure (each can be set on the command line).

    The image measure is the registration engines' own (slimreg.register.similarity): the registered image must
    stand ``min_significance`` sd above unrelated placements, keep more than ``min_shared_tissue`` of the smaller
    tissue on the other's and, if it moved, beat the unregistered placement.
    Landmarks, where given, must improve and end below ``max_landmark_rtre`` of the reference's diagonal (the
    ANHIR measure; 1.5 % is this project's target for serial sections), or ``max_landmark_error_px`` if set.
    """

    min_significance: float = MIN_SIGNIFICANCE
    min_shared_tissue: float = MIN_SHARED_TISSUE
    min_coverage: float = 0.8
    max_landmark_rtre: float = 0.015
    max_landmark_error_px: float | None = None


@dataclass
class QcResult:
    image: str
    reference: str
    metrics: dict[str, Any]
    status: str
    reasons: list[str] = field(default_factory=list)


def _inside(reference: Downsampled, shape_level0: tuple[int, int], transform: Transform | None) -> np.ndarray:
    """Reference pixels whose source position lies inside the image (geometric coverage)."""
    height, width = reference.array.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width]
    points = reference.to_level0(np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float64))
    if transform is not None:
        points = transform.pull(points)
    h0, w0 = shape_level0
    inside = (points[:, 0] >= -0.5) & (points[:, 0] <= w0 - 0.5) & (points[:, 1] >= -0.5) & (points[:, 1] <= h0 - 0.5)
    return inside.reshape(height, width)


# The overlay's colours (RGB), named once: the picture's own legend and the report's legend both read them.
REFERENCE_COLOUR = (0, 255, 0)  # green
IMAGE_COLOUR = (255, 0, 255)  # magenta
BOTH_COLOUR = (255, 255, 255)  # green + magenta: aligned structure
REFERENCE_LANDMARK_COLOUR = (0, 200, 255)  # a ring, where the reference's landmark lies
IMAGE_LANDMARK_COLOUR = (255, 220, 0)  # a cross where this image's landmark lies, a line to its reference landmark
LEGEND = (("green", REFERENCE_COLOUR, "reference"), ("magenta", IMAGE_COLOUR, "this image"),
          ("white", BOTH_COLOUR, "both: aligned structure"))
LANDMARK_LEGEND = (("blue ring", REFERENCE_LANDMARK_COLOUR, "ring: reference landmark"),
                   ("yellow cross", IMAGE_LANDMARK_COLOUR, "cross: this image's landmark, line: its error"))


def _overlay(reference: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Reference in green, image in magenta: aligned structure shows white."""
    g = np.clip(reference * 255, 0, 255).astype(np.uint8)
    m = np.clip(moving * 255, 0, 255).astype(np.uint8)
    return np.dstack([m, g, m])


def _text_scale(width: int) -> float:
    """OpenCV font scale for a picture ``width`` px wide: legible when the picture is shown at about 800 px (the
    PNG is opened at full size from the report; a fixed small font vanished in 2 x 2048 px pictures)."""
    return float(np.clip(width / 700, 0.45, 2.5))


def _wrap(title: str, width: int, scale: float, thickness: int) -> list[str]:
    """``title``'s parts (separated by two spaces) on as few lines as fit in ``width`` px (a part longer than the
    line keeps a line of its own)."""
    lines: list[str] = []
    for part in title.split("  "):
        joined = f"{lines[-1]}  {part}" if lines else part
        if lines and cv2.getTextSize(joined, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] <= width:
            lines[-1] = joined
        else:
            lines.append(part)
    return lines


def _panels(overlays: list[tuple[np.ndarray, str]]) -> list[np.ndarray]:
    """Each overlay with its title above it, wrapped onto more lines where a picture is narrow (a 256 px
    panel's one-line title used to be squeezed unreadable or cut off), every title bar as tall as the tallest so
    that the panels line up."""
    wrapped = []
    for image, title in overlays:
        scale = _text_scale(image.shape[1])
        thickness = max(1, round(scale * 1.5))
        wrapped.append((image, _wrap(title, int(image.shape[1] - 12 * scale), scale, thickness), scale, thickness))
    panels = []
    rows = max(len(lines) for _, lines, _, _ in wrapped)
    for image, lines, scale, thickness in wrapped:
        (_, text_height), baseline = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        line_height = text_height + baseline + int(6 * scale)
        bar = np.full((rows * line_height + int(8 * scale), image.shape[1], 3), 255, np.uint8)
        for number, line in enumerate(lines):
            # a line still too long (one part wider than the panel) is drawn smaller rather than cut off
            width = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0]
            fitted = scale * min(1.0, (image.shape[1] - 12 * scale) / max(1, width))
            cv2.putText(bar, line, (int(6 * scale), int(4 * scale) + number * line_height + text_height),
                        cv2.FONT_HERSHEY_SIMPLEX, fitted, (0, 0, 0), thickness, cv2.LINE_AA)
        panels.append(np.vstack([bar, image]))
    # the tallest bar's scale may differ between panels of different widths: pad to one height
    height = max(p.shape[0] for p in panels)
    return [np.pad(p, ((height - p.shape[0], 0), (0, 0), (0, 0)), constant_values=255) for p in panels]


def _legend(width: int, items: tuple[tuple[str, tuple[int, int, int], str], ...], scale: float) -> np.ndarray:
    """A white strip ``width`` px wide with one swatch and its words per item, wrapped onto as many rows as needed:
    the PNG says what its colours mean wherever it is opened, not only inside the report."""
    thickness = max(1, round(scale * 1.5))
    longest = max(cv2.getTextSize(words, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] for _, _, words in items)
    scale *= min(1.0, width * 0.8 / max(1, longest))  # every item fits on a row, swatch and margins included
    thickness = max(1, round(scale * 1.5))
    (_, text_height), baseline = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    row_height, pad, swatch = text_height + baseline + int(12 * scale), int(8 * scale), text_height + baseline
    placed: list[tuple[int, int, tuple[int, int, int], str]] = []
    x, row = pad, 0
    for _, colour, words in items:
        text_width = cv2.getTextSize(words, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0]
        need = swatch + pad + text_width + 2 * pad
        if x > pad and x + need > width:
            x, row = pad, row + 1
        placed.append((x, row, colour, words))
        x += need
    strip = np.full(((row + 1) * row_height + pad, width, 3), 255, np.uint8)
    for x, row, colour, words in placed:
        top = pad + row * row_height
        cv2.rectangle(strip, (x, top), (x + swatch, top + swatch), colour, -1)
        cv2.rectangle(strip, (x, top), (x + swatch, top + swatch), (90, 90, 90), 1)
        cv2.putText(strip, words, (x + swatch + pad, top + text_height), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0), thickness, cv2.LINE_AA)
    return strip


def _draw_landmarks(panel: np.ndarray, reference_xy: np.ndarray, image_xy: np.ndarray) -> None:
    """Draw each landmark pair on an overlay (in place): the reference's as a ring, the image's as a cross, joined
    by a line whose length is that landmark's error. Coordinates are the overlay's pixels."""
    size = max(4, round(max(panel.shape[:2]) / 90))
    thickness = max(1, size // 4)
    for (rx, ry), (mx, my) in zip(reference_xy, image_xy, strict=True):
        if not np.isfinite([rx, ry, mx, my]).all():
            continue
        reference_point, image_point = (round(rx), round(ry)), (round(mx), round(my))
        cv2.line(panel, reference_point, image_point, IMAGE_LANDMARK_COLOUR, thickness, cv2.LINE_AA)
        cv2.circle(panel, reference_point, size, REFERENCE_LANDMARK_COLOUR, thickness, cv2.LINE_AA)
        cv2.drawMarker(panel, image_point, IMAGE_LANDMARK_COLOUR, cv2.MARKER_CROSS, 2 * size, thickness,
                       cv2.LINE_AA)


def _to_overlay(reference: Downsampled, level0_xy: np.ndarray, scale: float) -> np.ndarray:
    """Landmarks in an image's true level-0 pixels -> the overlay's pixels. ``scale``: how much the QC image
    (a block-reduced projection for sessions) is smaller than the true level 0 (pixel centres at integers)."""
    return reference.from_level0((np.asarray(level0_xy, dtype=np.float64) + 0.5) / scale - 0.5)


def _landmark_errors(reference_csv: Path, moving_csv: Path, transform: Transform | None,
                     pixel_size_um: tuple[float, float] | None) -> dict[str, Any]:
    ref_points = read_landmarks(reference_csv)
    mov_points = read_landmarks(moving_csv)
    if len(ref_points) != len(mov_points):
        raise InputError(f"has {len(mov_points)} landmarks but the reference's file {reference_csv} has "
                         f"{len(ref_points)}.", moving_csv, "give both files the same points in the same order.")
    result: dict[str, Any] = {"landmarks": len(ref_points)}
    mapped = {"before": mov_points, "after": transform.push(mov_points) if transform is not None else None}
    for label, points in mapped.items():
        if points is None:
            continue
        error = np.hypot(*(points - ref_points).T)
        for stat, value in (("median", np.median(error)), ("p90", np.percentile(error, 90)), ("max", error.max())):
            result[f"landmark_{stat}_{label}_px"] = float(value)
            if pixel_size_um:
                result[f"landmark_{stat}_{label}_um"] = float(value * float(np.mean(pixel_size_um)))
    return result


def run_qc(reference_path: str | Path, registered_path: str | Path, outdir: str | Path, *,
           original_path: str | Path | None = None, transform_path: str | Path | None = None,
           landmarks_reference: str | Path | None = None, landmarks_moving: str | Path | None = None,
           max_dim: int = 2048, channel: str | None = None, thresholds: QcThresholds | None = None,
           stem: str | None = None, reference_scale: float = 1, moving_scale: float = 1,
           sample: str | None = None) -> QcResult:
    """Compute QC numbers and the overlay PNG for one registered image; write ``<stem>_qc.png/json``."""
    start = time.perf_counter()
    thresholds = thresholds or QcThresholds()
    outdir = Path(outdir)
    reference_image, registered_image = TiffImage(reference_path), TiffImage(registered_path)
    original_image = TiffImage(original_path) if original_path else None
    transform = Transform.load(transform_path) if transform_path else None
    level0_transform = transform
    if transform is not None and (reference_scale != 1 or moving_scale != 1):
        # QC images are block-reduced projections: bring the level-0 transform into their frames
        transform = transform.rescaled(1 / reference_scale, 1 / moving_scale,
                                       (reference_image.info.height, reference_image.info.width),
                                       (registered_image.info.height, registered_image.info.width))
        if original_image is not None:
            transform.moving_shape = (original_image.info.height, original_image.info.width)
    if (landmarks_reference is None) != (landmarks_moving is None):
        raise InputError("landmark QC needs both --landmarks-reference and --landmarks-moving.",
                         landmarks_reference or landmarks_moving)
    reference_channel = choose_channel(reference_image.info, channel)

    def channel_of(image: TiffImage) -> int | str:
        if reference_channel == OPTICAL_DENSITY:
            return OPTICAL_DENSITY
        wanted = reference_image.info.channel_names[int(reference_channel)].lower()
        own = [n.lower() for n in image.info.channel_names]
        return own.index(wanted) if wanted in own else choose_channel(image.info, channel)

    reference = registration_image(reference_image, reference_channel, max_dim)
    registered = registration_image(registered_image, channel_of(registered_image), max_dim)
    after = place_through(reference, registered, UNCHANGED)
    tissue = tissue_mask(reference.array)
    if transform is not None:
        covered = _inside(reference, transform.moving_shape, transform)
    else:
        covered = ndimage.binary_closing(after > 0.0, iterations=3)
    metrics: dict[str, Any] = {"max_dim": max_dim, "scale": reference.scale,
                               "coverage": float((tissue & covered).sum() / max(1, tissue.sum()))}
    mask_after = tissue & covered
    metrics["ncc_after"] = ncc(reference.array, after, mask_after)
    metrics["mi_after"] = mutual_information(reference.array, after, mask_after)
    scorer = AlignmentScorer(reference.array, tissue)
    metrics.update(scorer.score_placed(after, tissue_mask(after) & covered).to_json(suffix="_after"))
    if transform is not None:
        metrics["moved_px"] = moved_distance(transform, reference)
    overlays: list[tuple[np.ndarray, str]] = []  # (overlay, title), landmarks drawn on them below
    if original_image is not None:
        original = registration_image(original_image, channel_of(original_image), max_dim)
        before = place_through(reference, original, UNCHANGED)
        inside_before = _inside(reference, (original_image.info.height, original_image.info.width), None)
        mask_before = tissue & inside_before
        metrics["ncc_before"] = ncc(reference.array, before, mask_before)
        metrics["mi_before"] = mutual_information(reference.array, before, mask_before)
        metrics.update(scorer.score_placed(before, tissue_mask(before) & inside_before).to_json(suffix="_before"))
        overlays.append((_overlay(reference.array, before),
                         f"before  edge corr. {metrics['edge_correlation_before']:.3f}"))
    overlays.append((_overlay(reference.array, after),
                     f"after  edge corr. {metrics['edge_correlation_after']:.3f}  "
                     f"({metrics['significance_after']:.1f} sd)  coverage {metrics['coverage']:.0%}"))
    legend = LEGEND
    if landmarks_reference and landmarks_moving:
        pixel_size = reference_image.info.pixel_size_um
        if pixel_size and reference_scale != 1:
            pixel_size = (pixel_size[0] / reference_scale, pixel_size[1] / reference_scale)
        metrics.update(_landmark_errors(Path(landmarks_reference), Path(landmarks_moving), level0_transform,
                                        pixel_size))
        diagonal = float(np.hypot(reference_image.info.width, reference_image.info.height))
        for label in ("before", "after"):
            if f"landmark_median_{label}_px" in metrics:
                metrics[f"landmark_rtre_{label}"] = metrics[f"landmark_median_{label}_px"] / diagonal
        # where the numbers come from, on the pictures: before, the image's landmarks where it lay; after, where the
        # transform carries them (the pairs whose distances are the landmark errors above)
        reference_points = _to_overlay(reference, read_landmarks(landmarks_reference), reference_scale)
        moving_points = read_landmarks(landmarks_moving)
        if original_image is not None:  # the first overlay is "before"
            _draw_landmarks(overlays[0][0], reference_points, _to_overlay(reference, moving_points, moving_scale))
        if level0_transform is not None:
            _draw_landmarks(overlays[-1][0], reference_points,
                            _to_overlay(reference, level0_transform.push(moving_points), reference_scale))
        legend = LEGEND + LANDMARK_LEGEND
    status, reasons = verdict(metrics, thresholds)
    stem = stem or registered_image.path.name.split(".")[0]
    metrics["seconds"] = time.perf_counter() - start
    panels = _panels(overlays)
    picture = np.hstack([np.pad(p, ((0, 0), (0, 8), (0, 0)), constant_values=255) for p in panels])
    picture = np.vstack([picture, _legend(picture.shape[1], legend, _text_scale(panels[-1].shape[1]))])
    result = QcResult(image=str(registered_path), reference=str(reference_path), metrics=metrics, status=status,
                      reasons=reasons)
    png_path = outdir / f"{stem}{layout.QC_PNG_SUFFIX}"
    with atomic_output(png_path) as tmp:
        if not cv2.imwrite(str(tmp) + ".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
            raise InputError("could not write the QC picture.", png_path)
        Path(str(tmp) + ".png").replace(tmp)
    write_json_atomic(outdir / f"{stem}{layout.QC_JSON_SUFFIX}", {**asdict(result), "thresholds": asdict(thresholds),
                                                   "png": png_path.name, "sample": sample or outdir.name})
    return result


def verdict(metrics: dict[str, Any], thresholds: QcThresholds) -> tuple[str, list[str]]:
    """Pass or fail, with the reasons, from the numbers (the registration engines' own rule, plus landmarks)."""
    reasons = []
    after, before = metrics.get("edge_correlation_after", float("nan")), metrics.get("edge_correlation_before")
    significance = metrics.get("significance_after", float("nan"))
    if not np.isfinite(after):
        reasons.append("the alignment could not be scored (no overlapping tissue)")
    elif not significance >= thresholds.min_significance:
        reasons.append(f"the registered image does not stand out from unrelated placements (edge correlation "
                       f"{after:.3f}, {significance:.1f} sd; {thresholds.min_significance:.0f} needed)")
    elif not metrics.get("tissue_shared_after", float("nan")) > thresholds.min_shared_tissue:
        reasons.append(f"the registered image leaves most of the tissue on the other image's glass (only "
                       f"{metrics.get('tissue_shared_after', float('nan')):.0%} of the smaller tissue lies on the "
                       f"other's; more than {thresholds.min_shared_tissue:.0%} needed)")
    elif before is not None and np.isfinite(before) and after <= before and \
            metrics.get("moved_px", np.inf) > IDENTITY_TOLERANCE_PX:
        reasons.append(f"registration is not better than leaving the image as it was (edge correlation {after:.3f} "
                       f"after, {before:.3f} before)")
    if metrics["coverage"] < thresholds.min_coverage:
        reasons.append(f"the registered image covers only {metrics['coverage']:.0%} of the reference tissue "
                       f"(minimum {thresholds.min_coverage:.0%})")
    median, median_before = metrics.get("landmark_median_after_px"), metrics.get("landmark_median_before_px")
    if median is not None:
        rtre = metrics.get("landmark_rtre_after", 0.0)
        if median_before is not None and median >= median_before and median > 0:
            reasons.append(f"median landmark error {median:.2f} px is not better than before ({median_before:.2f} px)")
        elif thresholds.max_landmark_error_px is not None and median > thresholds.max_landmark_error_px:
            reasons.append(f"median landmark error {median:.2f} px exceeds {thresholds.max_landmark_error_px} px")
        elif thresholds.max_landmark_error_px is None and rtre > thresholds.max_landmark_rtre:
            reasons.append(f"median landmark error {median:.2f} px is {rtre:.2%} of the reference's diagonal "
                           f"(maximum {thresholds.max_landmark_rtre:.1%})")
    return ("fail" if reasons else "pass"), reasons

"""Registration on the real section pairs changed the way unseen slides differ: does every engine still register?

    .venv/bin/python benchmarks/robustness.py [--engines feature valis valis-plain] [--variants ...]

The maintainers check slimreg on real sections it has never seen. Two shared pairs cannot stand in for them, but
the ways slides differ from one another can be applied to those pairs, with the landmarks carried along exactly:

- ``half``: both images at half size (a lower pyramid level, or a 10x scan next to a 20x one);
- ``on-slide``: the moving section placed off-centre on a blank slide three times its size (whole-slide scans
  are mostly glass);
- ``partial``: the moving section cut to its left 70 % (a torn section, a partial scan);
- ``faded``: the moving stain at 40 % of its optical density (a weak or faded stain);
- ``uneven``: the moving image under a strong illumination gradient and a colour cast (scanner differences);
- ``grey``: the moving image as one grey channel;
- ``rotated``: the moving section turned 90 degrees (slides are placed either way up);
- ``pen``: a thick pen line and a dark label patch on the moving slide, off the tissue;
- ``warped``: the moving section bent smoothly (up to 1 % of its long side; locally sheared by up to about 9 %),
  as a section stretches or creases when it is laid on the slide: what no affine can follow, and a non-rigid step
  should;
- ``wrinkled``: the moving section deformed locally, a random smooth field with a correlation length of 4 % of the
  long side and a median displacement of 0.5 % of it (4.5-5.8 px here), the same field every run: neighbouring
  structures move differently by a few px, as they do between serial sections (on ANHIR's lung-lesion_3 the light
  engine's residual landmark errors are predicted by their neighbours' over 25-50 px, docs/accuracy.md); what a
  non-rigid step that follows the tissue's own structures, not only its outline, must undo;
- ``symmetric``: both sections made bilaterally symmetric (the moving one first placed on the reference by its
  landmarks' affine, then the left half of each mirrored onto its right, landmarks mirrored too) and the moving one
  turned by 30 degrees, like coronal brain or transverse spinal-cord sections: the moving image's mirror image is
  the same tissue, so a search for it fits as well as the right pose does;
- ``torn``: the moving section cut in two, the piece right of the cut moved away (by 5 % of the long side) and
  turned by 3 degrees, as a section tears, or separate pieces (lobes, biopsy cores) float apart when they are
  laid on the slide: one affine cannot follow both pieces.

Each variant is registered in a fresh process (``slimreg register`` as a user runs it; VALIS used plainly as in
benchmarks/accuracy.py) and scored with the landmarks: median error after, against the unregistered placement's.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.accuracy import PointMap, _fmt, _status, run_engine
from benchmarks.realdata import (
    SectionPair,
    landmark_affine_fit,
    landmark_errors,
    reference_diagonal,
    section_pairs,
    shared_data_missing,
)

Image = np.ndarray
Points = np.ndarray
Change = Callable[[Image, Points], tuple[Image, Points]]


def _affine(image: Image, points: Points, matrix: np.ndarray, size: tuple[int, int]) -> tuple[Image, Points]:
    """Push ``image`` through a 2x3 matrix (pixel-centre coordinates) onto a white canvas of ``size``."""
    import cv2

    moved = cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=(255, 255, 255))
    return moved, points @ matrix[:, :2].T + matrix[:, 2]


def on_slide(image: Image, points: Points) -> tuple[Image, Points]:
    height, width = image.shape[:2]
    return _affine(image, points, np.array([[1.0, 0, 1.6 * width], [0, 1.0, 0.4 * height]]), (3 * width, 3 * height))


def partial(image: Image, points: Points) -> tuple[Image, Points]:
    return image[:, : int(0.7 * image.shape[1])].copy(), points


def faded(image: Image, points: Points) -> tuple[Image, Points]:
    density = -np.log((image.astype(float) + 1) / 256)
    return np.clip(256 * np.exp(-0.4 * density) - 1, 0, 255).astype(np.uint8), points


def uneven(image: Image, points: Points) -> tuple[Image, Points]:
    ramp = np.linspace(0.55, 1.0, image.shape[1])[None, :, None] * np.array([1.0, 0.93, 0.8])
    return np.clip(image * ramp + np.array([20, 10, 0]), 0, 255).astype(np.uint8), points


def grey(image: Image, points: Points) -> tuple[Image, Points]:
    import cv2

    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), points


def rotated(image: Image, points: Points) -> tuple[Image, Points]:
    height = image.shape[0]
    return np.ascontiguousarray(np.rot90(image, -1)), np.stack([height - 1 - points[:, 1], points[:, 0]], axis=1)


def pen(image: Image, points: Points) -> tuple[Image, Points]:
    import cv2

    height, width = image.shape[:2]
    canvas, moved = _affine(image, points, np.array([[1.0, 0, 0.5 * width], [0, 1.0, 0.25 * height]]),
                            (2 * width, int(1.5 * height)))
    canvas = canvas.copy()
    cv2.line(canvas, (int(0.1 * width), int(0.1 * height)), (int(0.3 * width), int(1.3 * height)), (20, 30, 90),
             max(3, width // 60))
    cv2.rectangle(canvas, (int(1.7 * width), int(0.02 * height)), (int(1.95 * width), int(0.2 * height)),
                  (40, 40, 40), -1)
    return canvas, moved


WARP_AMPLITUDE = 0.01  # of the long side: a section stretched or bent when it was laid on the slide


def _bend(shape: tuple[int, int], x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A smooth displacement, one period of a sine across the image on each axis, ``WARP_AMPLITUDE`` strong."""
    height, width = shape
    amplitude = WARP_AMPLITUDE * max(height, width)
    return (amplitude * np.sin(2 * np.pi * y / height) * np.cos(np.pi * x / width),
            amplitude * np.sin(2 * np.pi * x / width) * np.cos(np.pi * y / height))


def warped(image: Image, points: Points) -> tuple[Image, Points]:
    """New pixel q shows old pixel q + d(q); a landmark p moves to the q that solves q + d(q) = p (fixed point:
    the displacement changes slowly, so the iteration contracts)."""
    import cv2

    shape = image.shape[:2]
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    dx, dy = _bend(shape, xx, yy)
    moved = cv2.remap(image, (xx + dx).astype(np.float32), (yy + dy).astype(np.float32), cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_CONSTANT, borderValue=(255, 255, 255))
    new = points.astype(float).copy()
    for _ in range(100):
        new = points - np.stack(_bend(shape, new[:, 0], new[:, 1]), axis=1)
    return moved, new


# ``wrinkled``: a random smooth field, the same for every run (its seed), over the tissue's own structures
WRINKLE_LENGTH = 0.04  # of the long side: the Gaussian correlation length of the local deformation
WRINKLE_AMPLITUDE = 0.005  # of the long side: its median displacement
WRINKLE_SEED = 37


def wrinkle_field(shape: tuple[int, int]) -> np.ndarray:
    """The ``wrinkled`` variant's displacement (height, width, 2; x then y, px): white noise smoothed over
    ``WRINKLE_LENGTH`` of the long side, scaled to a median length of ``WRINKLE_AMPLITUDE`` of it."""
    import cv2

    height, width = shape
    noise = np.random.default_rng(WRINKLE_SEED).standard_normal((height, width, 2)).astype(np.float32)
    length = WRINKLE_LENGTH * max(height, width)
    field = np.stack([cv2.GaussianBlur(noise[..., band], (0, 0), length) for band in range(2)], axis=-1)
    return field * np.float32(WRINKLE_AMPLITUDE * max(height, width) / np.median(np.hypot(*field.reshape(-1, 2).T)))


def wrinkled(image: Image, points: Points) -> tuple[Image, Points]:
    """New pixel q shows old pixel q + d(q), d the ``wrinkle_field``; a landmark p moves to the q that solves
    q + d(q) = p, d read bilinearly (fixed point, as ``warped``: the field changes slowly)."""
    import cv2

    shape = image.shape[:2]
    field = wrinkle_field(shape)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    moved = cv2.remap(image, xx + field[..., 0], yy + field[..., 1], cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_CONSTANT, borderValue=(255, 255, 255))

    def at(where: Points) -> Points:
        map_x, map_y = (np.ascontiguousarray(where[:, axis : axis + 1], np.float32) for axis in (0, 1))
        return np.hstack([cv2.remap(field[..., band], map_x, map_y, cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REPLICATE) for band in range(2)]).astype(float)

    new = points.astype(float).copy()
    for _ in range(100):
        new = points - at(new)
    return moved, new


TORN_CUT = 0.55  # of the width: where the section is cut
TORN_SHIFT = 0.05  # of the long side: how far the right piece moves (right and a third of that down)
TORN_TURN_DEG = 3.0  # how far it turns, about the middle of the cut


def torn(image: Image, points: Points) -> tuple[Image, Points]:
    """The right piece moved rigidly on a canvas grown to hold it; the glass colour (the brightest percentile of
    each channel) fills where it was."""
    import cv2

    height, width = image.shape[:2]
    cut = int(TORN_CUT * width)
    glass = np.percentile(image.reshape(-1, image.shape[2]), 99, axis=0).astype(np.uint8)
    shift = TORN_SHIFT * max(height, width)
    turn = cv2.getRotationMatrix2D((float(cut), height / 2), -TORN_TURN_DEG, 1.0)
    turn[:, 2] += (shift, shift / 3)
    size = (width + int(2 * shift), height + int(2 * shift))
    canvas = np.empty((size[1], size[0], 3), np.uint8)
    canvas[:] = glass
    canvas[:height, :cut] = image[:, :cut]
    right = np.ascontiguousarray(image[:, cut:])
    piece_matrix = turn.copy()
    piece_matrix[:, 2] += turn[:, 0] * cut  # the piece's own x starts at the cut
    moved = cv2.warpAffine(right, piece_matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=(0, 0, 0))
    inside = cv2.warpAffine(np.full(right.shape[:2], 255, np.uint8), piece_matrix, size, flags=cv2.INTER_NEAREST)
    canvas[inside > 0] = moved[inside > 0]
    carried = points.astype(float).copy()
    on_right = carried[:, 0] >= cut - 0.5
    carried[on_right] = carried[on_right] @ turn[:, :2].T + turn[:, 2]
    return canvas, carried


MOVING_CHANGES: dict[str, Change] = {"on-slide": on_slide, "partial": partial, "faded": faded, "uneven": uneven,
                                     "grey": grey, "rotated": rotated, "pen": pen, "warped": warped,
                                     "wrinkled": wrinkled, "torn": torn}
VARIANTS = ("half", *MOVING_CHANGES, "symmetric")


def _read(path: Path) -> Image:
    import tifffile

    return np.asarray(tifffile.imread(path))


def _write(image: Image, target: Path) -> Path:
    from slimreg.io import write_array

    write_array(image, target, is_rgb=image.ndim == 3)
    return target


def _halved(image: Image, points: Points) -> tuple[Image, Points]:
    import cv2

    small = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return small, (points + 0.5) * (small.shape[1] / image.shape[1]) - 0.5


def symmetric_pair(pair: SectionPair, workdir: Path) -> SectionPair:
    """Both sections made bilaterally symmetric about the reference landmarks' mean x, the moving one turned 30
    degrees (module docstring). The moving section is first placed on the reference by the affine fitted to the
    landmarks (moving px -> reference px), so both are mirrored about the same line of tissue; its landmarks are
    carried by that affine, so the error left by the fit stays in them as it stays in the unchanged pair."""
    import cv2

    stem = pair.name.replace(" <- ", "__")
    reference = _read(pair.reference)
    height, width = reference.shape[:2]
    design = np.hstack([pair.moving_landmarks, np.ones((len(pair.moving_landmarks), 1))])
    onto_reference, *_ = np.linalg.lstsq(design, pair.reference_landmarks, rcond=None)
    placed, placed_points = _affine(_read(pair.moving), pair.moving_landmarks, onto_reference.T, (width, height))
    axis = round(float(pair.reference_landmarks[:, 0].mean()))
    keep = (pair.reference_landmarks[:, 0] < axis - 0.5) & (placed_points[:, 0] < axis - 0.5)

    def mirrored(image: Image, points: Points) -> tuple[Image, Points]:
        left = image[:, :axis]
        reflected = np.stack([2 * axis - 1 - points[keep, 0], points[keep, 1]], axis=1)
        return np.ascontiguousarray(np.concatenate([left, left[:, ::-1]], axis=1)), np.vstack([points[keep],
                                                                                              reflected])

    symmetric_reference, reference_points = mirrored(reference, pair.reference_landmarks)
    symmetric_moving, moving_points = mirrored(placed, placed_points)
    side = int(np.ceil(np.hypot(2 * axis, height)))  # the turned section whole, on white around it
    turn = cv2.getRotationMatrix2D((axis - 0.5, (height - 1) / 2), 30.0, 1.0)
    turn[:, 2] += ((side - 1) / 2 - (axis - 0.5), (side - 1) / 2 - (height - 1) / 2)
    moving, moving_points = _affine(symmetric_moving, moving_points, turn, (side, side))
    return SectionPair(f"{pair.name} [symmetric]",
                       _write(symmetric_reference, workdir / f"{stem}_symmetric_reference.ome.tif"),
                       _write(moving, workdir / f"{stem}_symmetric.ome.tif"), reference_points, moving_points)


def variant_pair(pair: SectionPair, variant: str, workdir: Path) -> SectionPair:
    """``pair`` changed by ``variant``, written as OME-TIFF, landmarks carried along."""
    if variant == "symmetric":
        return symmetric_pair(pair, workdir)
    stem = pair.name.replace(" <- ", "__")
    moving, moving_points = MOVING_CHANGES.get(variant, _halved)(_read(pair.moving), pair.moving_landmarks)
    reference, reference_points = pair.reference, pair.reference_landmarks
    if variant == "half":
        halved, reference_points = _halved(_read(pair.reference), pair.reference_landmarks)
        reference = _write(halved, workdir / f"{stem}_{variant}_reference.ome.tif")
    return SectionPair(f"{pair.name} [{variant}]", reference, _write(moving, workdir / f"{stem}_{variant}.ome.tif"),
                       reference_points, moving_points)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+", default=["feature"], choices=["feature", "valis", "valis-plain"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--references", nargs="+", default=None,
                        help="only pairs with these references (e.g. kidney_HE lung-lesion_HE); default: every pair "
                             "both ways")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/slimreg-bench-robustness"))
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    if shared_data_missing():
        return 2
    (args.workdir / "images").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # "affine floor": the median error left by the affine fitted to the landmarks themselves (least distances)
    rows = ["| pair (reference <- moving) [variant] | engine | median before px | median after px | affine floor px | "
            "rTRE after | wall s | peak MB | result |", "|---|---|---|---|---|---|---|---|---|"]
    for pair in section_pairs(args.workdir / "sections"):
        if args.references and pair.reference.name.split(".")[0] not in args.references:
            continue
        for variant in args.variants:
            changed = variant_pair(pair, variant, args.workdir / "images")
            before = np.median(landmark_errors(None, changed))
            floor = np.median(landmark_errors(PointMap(mapped=landmark_affine_fit(changed, least_distances=True)),
                                              changed))
            for engine in args.engines:
                name = changed.moving.name.split(".")[0]
                measured, point_map = run_engine(engine, changed.reference, changed.moving,
                                                 changed.reference_landmarks, args.workdir / "runs" / engine / name,
                                                 args.timeout)
                after = float(np.median(landmark_errors(point_map, changed))) if point_map else float("nan")
                verdict = _status(measured) if point_map is None else (
                    "registered" if after < before else "WORSE than unregistered")
                rows.append(f"| {changed.name} | {engine} | {_fmt(before)} | {_fmt(after, 2)} | {_fmt(floor, 2)} | "
                            f"{_fmt(after / reference_diagonal(changed), 4)} | {_fmt(measured['seconds'], 0)} | "
                            f"{_fmt(measured['peak_mb'], 0)} | {verdict} |")
                print(rows[-1], file=sys.stderr, flush=True)
    print("\n".join(rows))
    print(f"\n(total {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmarks' own arithmetic: the affine floor they print and the landmarks they carry through a variant.

A benchmark whose reference numbers are wrong misleads every decision taken from it, so these are checked
exactly, on points and images made here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.realdata import SectionPair, landmark_affine_fit
from benchmarks.robustness import TORN_CUT, _bend, symmetric_pair, torn, warped


def _pair(reference: np.ndarray, moving: np.ndarray) -> SectionPair:
    return SectionPair("test", Path("reference.ome.tif"), Path("moving.ome.tif"), reference, moving)


def test_the_affine_fit_reproduces_an_exact_affine_and_shrugs_off_one_outlier() -> None:
    rng = np.random.default_rng(0)
    reference = rng.uniform(0, 500, (40, 2))
    matrix = np.array([[1.05, 0.2, 30.0], [-0.15, 0.95, -12.0]])
    moving = reference @ matrix[:, :2].T + matrix[:, 2]
    for least_distances in (False, True):
        assert np.abs(landmark_affine_fit(_pair(reference, moving), least_distances) - moving).max() < 1e-6
    moving[0] += 200.0  # one landmark misplaced: least distances should keep the others exact, least squares not
    squares, distances = (np.hypot(*(landmark_affine_fit(_pair(reference, moving), flag) - moving).T)
                          for flag in (False, True))
    assert np.median(distances) < 0.05 < np.median(squares)


def test_the_warped_variant_carries_each_landmark_to_where_its_pixel_went() -> None:
    height, width = 120, 160
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.dstack([(xx * 1.5) % 256, (yy * 2.0) % 256, (xx + yy) % 256]).astype(np.uint8)
    points = np.array([[20.0, 30.0], [80.0, 60.0], [140.0, 100.0], [5.5, 110.25]])
    bent, carried = warped(image, points)
    # the bent image shows, at pixel q, the original pixel q + d(q); a landmark must land on the q where that is it
    dx, dy = _bend((height, width), carried[:, 0], carried[:, 1])
    assert np.abs(carried + np.stack([dx, dy], axis=1) - points).max() < 1e-6
    assert np.hypot(*(carried - points).T).max() > 0.5  # the bend moved them
    qx, qy = 100, 40  # and the image agrees: pixel (100, 40) of the bent image came from (100, 40) + d
    sx, sy = _bend((height, width), np.array([qx]), np.array([qy]))
    source = (qx + sx[0], qy + sy[0])
    x0, y0 = int(np.floor(source[0])), int(np.floor(source[1]))
    fx, fy = source[0] - x0, source[1] - y0
    patch = image[y0 : y0 + 2, x0 : x0 + 2].astype(float)
    expected = (patch[0, 0] * (1 - fx) * (1 - fy) + patch[0, 1] * fx * (1 - fy) + patch[1, 0] * (1 - fx) * fy
                + patch[1, 1] * fx * fy)
    assert np.abs(bent[qy, qx].astype(float) - expected).max() <= 1.0


def test_the_torn_variant_moves_the_right_piece_and_carries_its_landmarks() -> None:
    height, width = 100, 200
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.dstack([xx * 1.2, yy * 2.0, np.full_like(xx, 60)]).astype(np.uint8)  # smooth: sampling is exact
    points = np.array([[20.0, 30.0], [150.0, 50.0], [180.0, 80.0], [60.0, 70.0]])
    out, carried = torn(image, points)
    for (x, y), (qx, qy) in zip(points, carried, strict=True):
        expected = image[int(y), int(x)].astype(int)
        seen = out[round(qy), round(qx)].astype(int)
        assert np.abs(seen - expected).max() <= 3, (x, y)
    left = points[:, 0] < TORN_CUT * width
    assert np.array_equal(carried[left], points[left])  # the left piece stays
    assert np.hypot(*(carried[~left] - points[~left]).T).min() > 5  # the right one moved


def test_the_symmetric_variant_carries_every_landmark_mirrored_ones_included(tmp_path: Path) -> None:
    """A smooth image and a shifted copy of it with exact landmarks: after the variant each reference landmark and
    its moving landmark must show the same pixel, on both halves, and the reference must be its own mirror image."""
    from slimreg.io import write_array

    height, width = 120, 200
    yy, xx = np.mgrid[0:height + 20, 0:width + 20]
    texture = np.dstack([xx * 1.1, yy * 1.7, np.full_like(xx, 90)]).astype(np.uint8)  # smooth: sampling is exact
    reference, moving = texture[:height, :width], texture[12:12 + height, 7:7 + width]  # moving = reference - (7, 12)
    points = np.array([[30.0, 20.0], [60.0, 90.0], [110.0, 40.0], [150.0, 70.0], [45.0, 55.0], [90.0, 100.0]])
    pair = SectionPair("a <- b", write_array(reference, tmp_path / "a.ome.tif", is_rgb=True),
                       write_array(moving, tmp_path / "b.ome.tif", is_rgb=True), points, points - (7.0, 12.0))
    changed = symmetric_pair(pair, tmp_path)
    import tifffile

    ref_out, mov_out = tifffile.imread(changed.reference), tifffile.imread(changed.moving)
    assert np.array_equal(ref_out, ref_out[:, ::-1])
    axis = ref_out.shape[1] // 2
    on_left = changed.reference_landmarks[:, 0] < axis
    assert on_left.sum() == (~on_left).sum() >= 3  # the landmarks left of the axis and their mirror images
    for (x, y), (qx, qy) in zip(changed.reference_landmarks, changed.moving_landmarks, strict=True):
        seen = mov_out[round(qy), round(qx)].astype(int)
        expected = ref_out[round(y), round(x)].astype(int)
        assert np.abs(seen - expected).max() <= 4, (x, y)


def test_the_summary_counts_a_failure_as_unregistered_and_compares_with_valis_used_plainly() -> None:
    from benchmarks.accuracy import _summary

    rows = _summary({"feature": {"a": 0.004, "b": 0.010}, "valis": {"a": 0.005, "b": 0.010},
                     "valis-plain": {"a": 0.005, "b": 0.008}})
    table = {row.split(" | ")[0].strip("| "): row.strip("| ").split(" | ") for row in rows[3:]}
    assert table["feature"] == ["feature", "0.0070", "1 of 2", "1.08", "1.25"]
    assert table["valis"] == ["valis", "0.0075", "2 of 2", "1.15", "1.25"]  # a tie makes both the worst
    assert table["valis-plain"] == ["valis-plain", "0.0065", "1 of 2", "-", "-"]


def test_lesion3_landmarks_are_scaled_from_the_annotation_scale_to_the_images(tmp_path: Path) -> None:
    from benchmarks.realdata import LESION3_STAINS, annotator_disagreement, lesion3_landmarks, lesion3_pairs

    annotations = tmp_path / "annotations" / "lung-lesion_3"
    images = tmp_path / "dataset" / "lung-lesion_3" / "scale-5pc"
    images.mkdir(parents=True)
    for annotator, shift in (("user-PS", 0.0), ("user-JB", 30.0)):
        (annotations / f"{annotator}_scale-50pc").mkdir(parents=True)
        for stain in ("He", *LESION3_STAINS):
            if annotator == "user-JB" and stain != "He":
                continue  # the second annotator marked only some stains
            (annotations / f"{annotator}_scale-50pc" / f"29-041-Izd2-w35-{stain}-les3.csv").write_text(
                f" ,X,Y\n1,{100 + shift},200\n2,{400 + shift},600\n")
    assert np.allclose(lesion3_landmarks(tmp_path, "He"), [[10, 20], [40, 60]])
    assert lesion3_landmarks(tmp_path, "Ki67-7", "user-JB") is None
    assert annotator_disagreement(tmp_path) == {"He": 3.0}
    with pytest.raises(FileNotFoundError, match="Borda/dataset-histology-landmarks"):
        lesion3_pairs(tmp_path / "elsewhere", tmp_path / "work")


def test_the_wrinkled_variant_carries_each_landmark_to_where_its_pixel_went() -> None:
    from benchmarks.robustness import WRINKLE_AMPLITUDE, wrinkle_field, wrinkled

    height, width = 150, 200
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.dstack([(xx * 1.2) % 256, (yy * 1.6) % 256, np.full_like(xx, 90)]).astype(np.uint8)
    points = np.array([[30.0, 40.0], [100.0, 75.5], [170.0, 120.0]])
    moved, carried = wrinkled(image, points)
    field = wrinkle_field((height, width))
    assert abs(np.median(np.hypot(*field.reshape(-1, 2).T)) - WRINKLE_AMPLITUDE * width) < 1e-3
    for (qx, qy), (px, py) in zip(carried, points, strict=True):
        # the field at the carried point, read bilinearly, takes it back to the original landmark
        x0, y0 = int(np.floor(qx)), int(np.floor(qy))
        fx, fy = qx - x0, qy - y0
        patch = field[y0 : y0 + 2, x0 : x0 + 2]
        d = (patch[0, 0] * (1 - fx) * (1 - fy) + patch[0, 1] * fx * (1 - fy) + patch[1, 0] * (1 - fx) * fy
             + patch[1, 1] * fx * fy)
        assert np.hypot(qx + d[0] - px, qy + d[1] - py) < 0.05
    assert np.hypot(*(carried - points).T).max() > 0.5  # the wrinkle moved them
    # and the image agrees: an inner pixel of the wrinkled image shows the original at q + d(q)
    qx, qy = 120, 60
    sx, sy = qx + field[qy, qx, 0], qy + field[qy, qx, 1]
    expected = np.array([(sx * 1.2) % 256, (sy * 1.6) % 256, 90])
    assert np.abs(moved[qy, qx].astype(float) - expected).max() <= 1.5

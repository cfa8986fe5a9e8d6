"""A brightfield RGB pair's diffeomorphic field is estimated one way on the optical density and the other way on the
darkness (slimreg.register.channel.DARKNESS, slimreg.register.fields.diffeomorphic_candidate): two greys that weigh
dense and faint structure differently, so the two estimates averaged err less alike. Other pairs keep one grey."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import slimreg.register.fields as fields
from slimreg.io import write_array
from slimreg.io.read import TiffImage
from slimreg.register.channel import DARKNESS, OPTICAL_DENSITY, registration_image
from slimreg.register.preprocess import edge_sigma, tissue_mask


def _section(shape: tuple[int, int] = (240, 320), seed: int = 3) -> np.ndarray:
    """An H&E-like RGB uint8 image: white glass, a pink section, faint pale patches and dense purple nuclei."""
    rng = np.random.default_rng(seed)
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width]
    section = ((yy - height / 2) / (0.36 * height)) ** 2 + ((xx - width / 2) / (0.38 * width)) ** 2 < 1
    nuclei = cv2.GaussianBlur((rng.random(shape) > 0.985).astype(np.float32), (0, 0), 1.5) > 0.05
    pale = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 4) > 0.52
    rgb = np.full((*shape, 3), 240.0)
    rgb[section] = (225, 160, 195)
    rgb[section & pale] = (235, 200, 220)
    rgb[section & nuclei] = (100, 55, 150)
    rgb += rng.normal(0, 2, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _pair(folder: Path, is_rgb: bool) -> tuple[TiffImage, TiffImage]:
    reference, moving = _section(), _section()[:, ::-1].copy()  # the mirror: another section, the same stains
    if not is_rgb:
        reference, moving = ((255 - image.mean(axis=2)).astype(np.uint16)[None] for image in (reference, moving))
    options = {"is_rgb": True} if is_rgb else {"channel_names": ["DAPI"]}
    return (TiffImage(write_array(reference, folder / "reference.ome.tif", **options)),
            TiffImage(write_array(moving, folder / "moving.ome.tif", **options)))


def test_the_darkness_is_dark_on_glass_and_linear_in_the_light(tmp_path: Path) -> None:
    rgb = _section()
    image = TiffImage(write_array(rgb, tmp_path / "section.ome.tif", is_rgb=True))
    darkness = registration_image(image, DARKNESS, 512).array
    density = registration_image(image, OPTICAL_DENSITY, 512).array
    tissue = tissue_mask(density)
    assert darkness.dtype == np.float32 and darkness.min() >= 0 and darkness.max() <= 1
    assert np.median(darkness[tissue]) > np.median(darkness[~tissue]) + 0.2  # glass dark, tissue bright
    # linear in the light where the optical density is not: the faint patches stand further above the plain
    # section in the darkness, relative to the nuclei, than in the density
    yy, xx = np.mgrid[0:240, 0:320]
    inside = ((yy - 120) / (0.3 * 240)) ** 2 + ((xx - 160) / (0.3 * 320)) ** 2 < 1
    light = rgb.mean(axis=2)
    pale = inside & (light > 215) & (light < 230)
    plain = inside & (light > 185) & (light < 200)
    dense = inside & (light < 120)
    assert pale.any() and plain.any() and dense.any()

    def contrast(grey: np.ndarray) -> float:
        pale_step = np.median(grey[plain]) - np.median(grey[pale])
        return float(pale_step / (np.median(grey[dense]) - np.median(grey[plain])))

    assert contrast(darkness) > contrast(density)


def test_a_fluorescence_image_has_no_darkness(tmp_path: Path) -> None:
    reference, _ = _pair(tmp_path, is_rgb=False)
    with pytest.raises(ValueError, match="brightfield RGB"):
        registration_image(reference, DARKNESS, 256)


@pytest.mark.parametrize("is_rgb", [True, False])
def test_the_way_back_reads_the_darkness_of_a_brightfield_pair_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    is_rgb: bool) -> None:
    reference, moving = _pair(tmp_path, is_rgb)
    channel = OPTICAL_DENSITY if is_rgb else 0
    dim = 256
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def recorded(fixed: np.ndarray, placed: np.ndarray, sigma: float) -> np.ndarray:
        seen.append((fixed.copy(), placed.copy()))
        return np.zeros((*fixed.shape, 2), np.float32)

    monkeypatch.setattr(fields, "greedy_flow", recorded)
    grid = registration_image(reference, channel, dim)
    region = np.ones(grid.array.shape, bool)
    fields.diffeomorphic_candidate(reference, moving, channel, channel, np.eye(3), dim, grid, region,
                                   edge_sigma(grid.array.shape))
    assert len(seen) == 2
    # the call with the reference as its fixed image is the way there; the other's moving image is the reference
    there = next(call for call in seen if np.array_equal(call[0], grid.array))
    back = next(call for call in seen if call is not there)
    expected_back = registration_image(reference, DARKNESS, dim).array if is_rgb else grid.array
    assert np.array_equal(back[1], expected_back)
    assert np.array_equal(there[0], grid.array)
    assert is_rgb != np.array_equal(back[1], there[0])

"""The copy of each image the valis engine hands VALIS: VALIS sizes its non-rigid step on the tissue's box, so the
copy must hold that box at VALIS' working size, as VALIS would read it from the slide itself (no VALIS needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slimreg.estimate import pair_bytes, valis_copy_dim, working_pixels
from slimreg.io import TiffImage, write_array
from slimreg.register.channel import OPTICAL_DENSITY
from slimreg.register.settings import RegistrationSettings
from slimreg.register.tissue_crop import tissue_share
from slimreg.register.valis_engine import copy_dim, valis_input, valis_source

MEDIUM = RegistrationSettings.from_preset("medium", engine="valis")


def slide(path: Path, side: int, tissue: int, pyramid: bool = True) -> TiffImage:
    """A white RGB slide of ``side`` px with a stained square of ``tissue`` px (nuclei-like texture) in the middle:
    whole-slide scans are mostly glass."""
    rng = np.random.default_rng(3)
    rgb = np.full((side, side, 3), 240, np.uint8)
    texture = rng.integers(60, 200, size=(tissue // 8, tissue // 8, 3), dtype=np.uint8)
    start = (side - tissue) // 2
    rgb[start:start + tissue, start:start + tissue] = np.kron(texture, np.ones((8, 8, 1), np.uint8))
    write_array(rgb, path, is_rgb=True, pyramid=pyramid)
    return TiffImage(path)


def test_valis_finest_size_is_its_non_rigid_size_at_every_preset() -> None:
    for preset, finest in (("low", 1024), ("medium", 2048), ("high", 4096)):
        assert RegistrationSettings.from_preset(preset, engine="valis").valis_finest_dim == finest
    assert RegistrationSettings.from_preset("medium", non_rigid=False).valis_finest_dim == 1024


def test_a_section_on_much_glass_is_handed_over_at_full_resolution(tmp_path: Path) -> None:
    image = slide(tmp_path / "glass.ome.tif", 3000, 960)
    assert abs(tissue_share(image, OPTICAL_DENSITY, MEDIUM.search_dim) - 0.32) < 0.02
    side = copy_dim(image, OPTICAL_DENSITY, MEDIUM)
    assert side == 3000  # the 960 px box needs 2048 / 0.32 = 6400 px: level 0 is all there is
    path, span, long_side = valis_input(image, OPTICAL_DENSITY, side, tmp_path / "copy.ome.tif")
    assert long_side == 3000 and span == (3000.0, 3000.0)
    assert TiffImage(path).info.width == 3000


def test_a_section_that_fills_its_slide_keeps_at_least_valis_size_by_a_whole_block_factor(tmp_path: Path) -> None:
    image = slide(tmp_path / "full.ome.tif", 5000, 4800)
    side = copy_dim(image, OPTICAL_DENSITY, MEDIUM)
    _, span, long_side = valis_input(image, OPTICAL_DENSITY, side, tmp_path / "copy.ome.tif")
    # block factor 2: 2500 px hold the 4800 px box at 2400 px, at least the 2048 VALIS reads; factor 3 (1666 px,
    # what a copy capped at 2048 px gets) would not
    assert long_side == 2500 and span == (5000.0, 5000.0)
    assert long_side * 4800 / 5000 >= MEDIUM.valis_finest_dim


def test_the_estimate_bounds_the_largest_copy(tmp_path: Path) -> None:
    image = slide(tmp_path / "glass.ome.tif", 3000, 960)
    bound = valis_copy_dim(image.info, MEDIUM.valis_finest_dim)  # at the smallest tissue share it allows
    assert bound >= copy_dim(image, OPTICAL_DENSITY, MEDIUM)
    small = slide(tmp_path / "small.ome.tif", 400, 200).info
    assert valis_copy_dim(small, MEDIUM.valis_finest_dim, tissue_share=0.01) == 400
    assert pair_bytes(image.info, image.info, MEDIUM) >= 8 * working_pixels(image.info, bound)


def test_an_rgb_slide_valis_reads_as_it_is_is_handed_over_itself(tmp_path: Path) -> None:
    """VALIS' result hangs on the pixels it reads, so where it can read the user's file, it gets that file."""
    image = slide(tmp_path / "section.ome.tif", 3000, 2400)
    (tmp_path / "src").mkdir()
    path, span, side = valis_source(image, OPTICAL_DENSITY, MEDIUM, tmp_path / "src" / "moving")
    assert path.is_symlink() and path.resolve() == image.path.resolve() and path.name == "moving.ome.tif"
    assert span == (3000.0, 3000.0) and side == 3000


def test_a_channel_of_a_fluorescence_image_is_copied(tmp_path: Path) -> None:
    planes = np.random.default_rng(0).integers(0, 4000, size=(3, 600, 800), dtype=np.uint16)
    image = TiffImage(write_array(planes, tmp_path / "if.ome.tif", channel_names=["DAPI", "CD3", "CD8"]))
    (tmp_path / "src").mkdir()
    path, span, side = valis_source(image, 0, MEDIUM, tmp_path / "src" / "reference")
    assert not path.is_symlink() and path.name == "reference.ome.tif"
    assert TiffImage(path).info.channels == 1 and span == (800.0, 600.0) and side == 800


def test_a_flat_slide_far_larger_than_valis_reads_is_copied_smaller(tmp_path: Path) -> None:
    """Without a pyramid, VALIS would decode the whole level 0 (here three times what it needs)."""
    image = slide(tmp_path / "flat.tif", 7000, 6304, pyramid=False)
    assert len(image.info.levels) == 1
    (tmp_path / "src").mkdir()
    path, _, side = valis_source(image, OPTICAL_DENSITY, MEDIUM, tmp_path / "src" / "moving")
    assert not path.is_symlink() and side < 7000 / 2
    assert side * tissue_share(image, OPTICAL_DENSITY, MEDIUM.search_dim) >= MEDIUM.valis_finest_dim


def test_a_file_named_without_a_tiff_suffix_is_handed_over_under_one(tmp_path: Path) -> None:
    image = slide(tmp_path / "section.ome.tif", 1200, 1000)
    plain = tmp_path / "scan_0001"
    plain.symlink_to(image.path)
    (tmp_path / "src").mkdir()
    path, _, _ = valis_source(TiffImage(plain), OPTICAL_DENSITY, MEDIUM, tmp_path / "src" / "moving")
    assert path.name == "moving.tif" and path.resolve() == image.path.resolve()


def test_a_grey_brightfield_scan_is_handed_over_as_rgb_with_its_glass_white(tmp_path: Path) -> None:
    """A 12-bit camera's grey scan in 16-bit pixels (glass at 3800 of 65535): VALIS reads the copy as brightfield
    RGB, glass white and tissue dark, not as a near-black 8-bit image."""
    rng = np.random.default_rng(4)
    grey = np.full((600, 800), 3800, np.uint16)
    grey[150:450, 200:600] = rng.integers(900, 2600, size=(300, 400))
    image = TiffImage(write_array(grey[None], tmp_path / "grey.ome.tif", channel_names=["grey"]))
    path, _, long_side = valis_input(image, OPTICAL_DENSITY, 800, tmp_path / "copy.ome.tif")
    copy = TiffImage(path)
    assert copy.info.is_rgb and copy.info.dtype == "uint8" and long_side == 800
    pixels = copy.region(0, 0, 800, 600, channel=None)
    assert pixels[10, 10].tolist() == [255, 255, 255]
    assert 50 < float(np.median(pixels[150:450, 200:600])) < 200


def test_an_8_bit_grey_brightfield_scan_is_handed_over_as_it_is(tmp_path: Path) -> None:
    """8-bit grey is copied into R, G and B unchanged, as VALIS used plainly would read it (its result moves with the
    pixels it is given: docs/accuracy.md, "Thirty-third attempt")."""
    rng = np.random.default_rng(6)
    grey = np.full((300, 400), 236, np.uint8)
    grey[80:220, 100:300] = rng.integers(40, 200, size=(140, 200))
    image = TiffImage(write_array(grey[None], tmp_path / "grey8.ome.tif", channel_names=["grey"]))
    path, _, _ = valis_input(image, OPTICAL_DENSITY, 400, tmp_path / "copy.ome.tif")
    pixels = TiffImage(path).region(0, 0, 400, 300, channel=None)
    assert all(np.array_equal(pixels[..., band], grey) for band in range(3))

"""A brightfield scan stored as one grey channel (a monochrome camera, a converted file) is registered onto RGB
sections on its optical density; a fluorescence image beside RGB sections is still refused, with a message that says
which it is (slimreg.register.channel.is_grey_brightfield, slimreg.register.batch.moving_channel_for)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from slimreg.errors import RegistrationError
from slimreg.io import write_array
from slimreg.io.read import TiffImage
from slimreg.register.batch import moving_channel_for
from slimreg.register.channel import OPTICAL_DENSITY, choose_channel, is_grey_brightfield, registration_image
from slimreg.register.settings import RegistrationSettings

SETTINGS = RegistrationSettings.from_preset("low", engine="feature")


def _stained_section(shape: tuple[int, int] = (300, 400)) -> np.ndarray:
    """An H&E-like RGB uint8 image: white glass around a pink section with darker purple nuclei."""
    rng = np.random.default_rng(5)
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width]
    section = ((yy - height / 2) / (0.35 * height)) ** 2 + ((xx - width / 2) / (0.38 * width)) ** 2 < 1
    nuclei = cv2.GaussianBlur((rng.random(shape) > 0.985).astype(np.float32), (0, 0), 1.5) > 0.05
    rgb = np.full((*shape, 3), 238.0)
    rgb[section] = (225, 150, 190)
    rgb[section & nuclei] = (110, 60, 150)
    rgb += rng.normal(0, 3, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _written(folder: Path, name: str, array: np.ndarray, **options: object) -> TiffImage:
    path = write_array(array, folder / f"{name}.ome.tif", **options)
    return TiffImage(path)


@pytest.fixture
def images(tmp_path: Path) -> dict[str, TiffImage]:
    rgb = _stained_section()
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    fluorescence = (255 - grey).astype(np.uint16) * 200  # the same section, glowing on dark glass
    return {"rgb": _written(tmp_path, "rgb", rgb, is_rgb=True),
            "grey": _written(tmp_path, "grey", grey[None], channel_names=["grey"]),
            "grey16": _written(tmp_path, "grey16", grey.astype(np.uint16)[None] * 257, channel_names=["grey"]),
            "fluorescence": _written(tmp_path, "fluorescence", fluorescence[None], channel_names=["DAPI"]),
            "two_channels": _written(tmp_path, "two", np.stack([grey, grey]), channel_names=["a", "b"])}


def test_the_glass_tells_a_grey_brightfield_scan_from_fluorescence(images: dict[str, TiffImage]) -> None:
    assert is_grey_brightfield(images["grey"]) and is_grey_brightfield(images["grey16"])
    assert not is_grey_brightfield(images["fluorescence"])
    assert not is_grey_brightfield(images["rgb"])  # RGB is brightfield by its own rule
    assert not is_grey_brightfield(images["two_channels"])  # several channels: fluorescence


@pytest.mark.parametrize("grey", ["grey", "grey16"])
def test_a_grey_brightfield_scan_is_registered_on_its_optical_density(images: dict[str, TiffImage],
                                                                      grey: str) -> None:
    reference = images["rgb"]
    reference_channel = choose_channel(reference.info, None)
    assert reference_channel == OPTICAL_DENSITY
    channel = moving_channel_for(reference, reference_channel, images[grey], SETTINGS)
    assert channel == OPTICAL_DENSITY
    grey_density = registration_image(images[grey], channel, 256).array
    colour_density = registration_image(reference, reference_channel, 256).array
    # tissue bright on dark glass, like the RGB section's optical density, pixel for pixel nearly the same picture
    height, width = grey_density.shape
    assert grey_density[height // 2, width // 2] > 0.2 > grey_density[2, 2]
    assert np.corrcoef(grey_density.ravel(), colour_density.ravel())[0, 1] > 0.95


def test_fluorescence_beside_rgb_sections_is_refused_and_named(images: dict[str, TiffImage]) -> None:
    reference = images["rgb"]
    with pytest.raises(RegistrationError, match=r"is fluorescence .*separate samples"):
        moving_channel_for(reference, OPTICAL_DENSITY, images["fluorescence"], SETTINGS)


def test_an_rgb_section_onto_a_grey_reference_asks_for_an_rgb_reference(images: dict[str, TiffImage]) -> None:
    reference = images["grey"]
    with pytest.raises(RegistrationError, match="make an RGB section the sample's reference"):
        moving_channel_for(reference, choose_channel(reference.info, None), images["rgb"], SETTINGS)


@pytest.mark.parametrize(("glass", "margin"), [(None, 0), (238.0, 238)])
def test_the_warp_fills_a_grey_brightfield_scans_margins_with_its_glass(images: dict[str, TiffImage], tmp_path: Path,
                                                                       glass: float | None, margin: int) -> None:
    """Beyond the moving image the warp writes what lies around its tissue: 0 for fluorescence, white for RGB, and
    for a grey brightfield scan the glass registration measured (``MOVING_GLASS``), not black, which its optical
    density, QC's and the viewer's, would read as the densest tissue."""
    import tifffile

    from slimreg.transform import MOVING_GLASS, Transform
    from slimreg.warp import warp_file

    moving = images["grey"]
    shape = (moving.info.height, moving.info.width)
    shift = np.array([[1.0, 0, 40.0], [0, 1.0, 0], [0, 0, 1.0]])  # the reference's px x reads moving px x + 40
    metadata = {} if glass is None else {MOVING_GLASS: glass}
    out = warp_file(moving, Transform(shift, None, shape, shape, metadata), tmp_path / "warped.ome.tif",
                    reference_shape=shape, pixel_size_um=None)
    warped = tifffile.imread(out)
    assert np.all(warped[:, -30:] == margin)  # the last 40 columns read beyond the moving image
    assert abs(float(np.median(warped[:, :20])) - 238) < 10  # the image's own glass where it is read

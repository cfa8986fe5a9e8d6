"""An engine is one class and one registry line (slimreg.options.ENGINE_CLASSES), and whatever it returns passes the
one judgement (slimreg.register.judgement) before anything is written: a toy engine shows both."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from slimreg import options
from slimreg.io import write_array
from slimreg.io.read import TiffImage
from slimreg.register.batch import register_images
from slimreg.register.settings import RegistrationSettings
from slimreg.transform import Transform

SHIFT = (12.0, -7.0)  # (x, y) px: where the moving image's content lies relative to the reference's


class ToyEngine:
    """Returns a fixed translation, right or wrong, without looking at the images."""

    name = "toy"
    shift = SHIFT

    def register_pair(self, reference: TiffImage, moving: TiffImage, reference_channel: int | str,
                      moving_channel: int | str, settings: RegistrationSettings) -> Transform:
        pull = np.array([[1.0, 0.0, self.shift[0]], [0.0, 1.0, self.shift[1]], [0.0, 0.0, 1.0]])
        shape = (reference.info.height, reference.info.width)
        return Transform(pull, None, shape, (moving.info.height, moving.info.width),
                         metadata={"engine": self.name, "quality": {}})


class WrongToyEngine(ToyEngine):
    """The same, off by a quarter of the image: a result no engine may keep."""

    shift = (SHIFT[0] + 100.0, SHIFT[1] - 80.0)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """Tissue-like texture in an ellipse on glass, and the same shifted by ``SHIFT``."""
    rng = np.random.default_rng(5)
    height, width = 400, 480
    texture = ndimage.gaussian_filter(rng.random((height, width)), 3.0)
    yy, xx = np.mgrid[0:height, 0:width]
    tissue = ((xx - 240) / 170) ** 2 + ((yy - 200) / 140) ** 2 < 1
    image = np.where(tissue, 2000 + 60000 * (texture - texture.min()) / np.ptp(texture), 300)
    moved = ndimage.shift(image, (SHIFT[1], SHIFT[0]), order=1, cval=300)
    return (write_array(image.astype(np.uint16)[None], tmp_path / "reference.ome.tif", channel_names=["DAPI"]),
            write_array(moved.astype(np.uint16)[None], tmp_path / "moving.ome.tif", channel_names=["DAPI"]))


@pytest.mark.parametrize(("engine_class", "kept"), [("ToyEngine", True), ("WrongToyEngine", False)])
def test_a_registered_engine_is_judged_like_every_other(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                        pair: tuple[Path, Path], engine_class: str,
                                                        kept: bool) -> None:
    monkeypatch.setitem(options.ENGINE_CLASSES, "toy", f"{__name__}:{engine_class}")
    settings = RegistrationSettings.from_preset("low", engine="toy", non_rigid=False, micro=False)
    batch = register_images(pair[0], [pair[1]], tmp_path / "out", settings)
    registered = tmp_path / "out" / "moving.ome.tif"
    if kept:
        assert not batch.failed and registered.is_file()
        assert batch.images[0].quality["judged_significance"] > 5
    else:
        assert batch.failed and not registered.exists()
        assert "moving.ome.tif" in batch.failed[0].error and "refusing to write it" in batch.failed[0].error

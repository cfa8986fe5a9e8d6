"""The judgement weighs a field inside the tissue, away from outlines: a field that does not align the interior
better than its affine alone is dropped (slimreg.register.judgement)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from slimreg.io import write_array
from slimreg.io.read import TiffImage
from slimreg.register.judgement import judge_transform
from slimreg.register.settings import RegistrationSettings
from slimreg.transform import Displacement, Transform

HEIGHT, WIDTH = 400, 480
SPACING = 8.0  # px between the field's grid nodes


def smooth_field(amplitude: float, wavelength: float) -> tuple[np.ndarray, np.ndarray]:
    """A smooth displacement (dx, dy) per reference pixel: waves of ``amplitude`` px and ``wavelength`` px."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    return (amplitude * np.sin(2 * np.pi * yy / wavelength) * np.cos(2 * np.pi * xx / (1.3 * wavelength)),
            amplitude * np.cos(2 * np.pi * xx / wavelength) * np.sin(2 * np.pi * yy / (0.8 * wavelength)))


def on_grid(dx: np.ndarray, dy: np.ndarray) -> Displacement:
    """The per-pixel field sampled at the grid nodes (node centres at (i + 0.5) * SPACING - 0.5)."""
    nodes_y = (np.arange(int(np.ceil(HEIGHT / SPACING))) + 0.5) * SPACING - 0.5
    nodes_x = (np.arange(int(np.ceil(WIDTH / SPACING))) + 0.5) * SPACING - 0.5
    grid = np.meshgrid(nodes_y, nodes_x, indexing="ij")
    return Displacement(ndimage.map_coordinates(dx, grid, order=1, mode="nearest"),
                        ndimage.map_coordinates(dy, grid, order=1, mode="nearest"), SPACING)


@pytest.fixture
def reference(tmp_path: Path) -> np.ndarray:
    rng = np.random.default_rng(8)
    texture = ndimage.gaussian_filter(rng.random((HEIGHT, WIDTH)), 3.0)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    tissue = ((xx - 240) / 190) ** 2 + ((yy - 200) / 160) ** 2 < 1
    return np.where(tissue, 2000 + 60000 * (texture - texture.min()) / np.ptp(texture), 300)


def judged(tmp_path: Path, reference: np.ndarray, moving: np.ndarray, field: Displacement) -> Transform:
    paths = [write_array(image.astype(np.uint16)[None], tmp_path / f"{name}.ome.tif", channel_names=["DAPI"])
             for name, image in (("reference", reference), ("moving", moving))]
    transform = Transform(np.eye(3), field, (HEIGHT, WIDTH), (HEIGHT, WIDTH), metadata={"quality": {}})
    judge_transform(TiffImage(paths[0]), TiffImage(paths[1]), 0, 0, transform,
                    RegistrationSettings.from_preset("low", allow_mirror=True))
    return transform


def test_a_field_that_follows_the_tissue_is_kept(tmp_path: Path, reference: np.ndarray) -> None:
    dx, dy = smooth_field(4.0, 220.0)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    # the moving image such that reference pixel p lies at p + d(p) in it (to first order in the field's slope)
    moving = ndimage.map_coordinates(reference, [yy - dy, xx - dx], order=1, mode="nearest")
    transform = judged(tmp_path, reference, moving, on_grid(dx, dy))
    quality = transform.metadata["quality"]
    assert transform.displacement is not None and "field_dropped" not in quality
    assert quality["interior_edge_correlation_field"] > quality["interior_edge_correlation_affine"]


def test_a_field_that_drags_the_interior_is_dropped(tmp_path: Path, reference: np.ndarray) -> None:
    # the images already agree; the field moves the inside by up to 5 px in waves: no better inside, so dropped
    transform = judged(tmp_path, reference, reference.copy(), on_grid(*smooth_field(5.0, 90.0)))
    quality = transform.metadata["quality"]
    assert transform.displacement is None and "field_dropped" in quality
    assert quality["interior_edge_correlation_field"] < quality["interior_edge_correlation_affine"]


def test_a_result_from_elsewhere_is_judged_against_the_decoy_the_light_engine_searched(
        tmp_path: Path, reference: np.ndarray) -> None:
    """The valis engine hands VALIS' result the mirror decoy the light engine searched for the same pair rather
    than searching it again: the decoy depends on the pair alone, so the verdict and what is recorded are the same,
    and a decoy that fits as well as the result refuses it."""
    from slimreg.errors import RegistrationError
    from slimreg.register.feature import FeatureEngine
    from slimreg.register.mirror import MirrorDecoy

    moving = ndimage.shift(reference, (9.0, -14.0), order=1, mode="nearest")
    paths = [write_array(image.astype(np.uint16)[None], tmp_path / f"{name}.ome.tif", channel_names=["DAPI"])
             for name, image in (("reference", reference), ("moving", moving))]
    ref, mov = TiffImage(paths[0]), TiffImage(paths[1])
    settings = RegistrationSettings.from_preset("low")
    light, decoy = FeatureEngine().register_pair_and_decoy(ref, mov, 0, 0, settings, for_another_result=True)
    assert decoy is not None
    # searched for VALIS' result only: the light engine's own, corroborated by its detectors, is not held against it
    assert "pose_corroborated_by" in light.metadata["quality"]
    assert "mirror_edge_correlation" not in light.metadata["quality"]

    def found_elsewhere() -> Transform:  # the light engine's affine, with none of its quality record
        return Transform(light.affine.copy(), None, light.reference_shape, light.moving_shape,
                         metadata={"quality": {}})

    elsewhere, searched = found_elsewhere(), found_elsewhere()
    judge_transform(ref, mov, 0, 0, elsewhere, settings, decoy)
    judge_transform(ref, mov, 0, 0, searched, settings)
    assert elsewhere.metadata["quality"] == searched.metadata["quality"]
    assert elsewhere.metadata["quality"]["mirror_edge_correlation"] == decoy.value
    as_good = MirrorDecoy(elsewhere.metadata["quality"]["judged_edge_correlation"], decoy.pull)
    with pytest.raises(RegistrationError, match="mirror image"):
        judge_transform(ref, mov, 0, 0, found_elsewhere(), settings, as_good)


def test_a_pose_two_detectors_corroborate_is_not_held_against_a_mirror_decoy(
        tmp_path: Path, reference: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shifted copy: every detector's fit lands on the result's pose, so the light engine searches no decoy for it
    and the judgement searches none either; without that record the judgement searches one (slimreg.register.mirror,
    MIN_CORROBORATING)."""
    import slimreg.register.judgement as judgement
    from slimreg.register.feature import FeatureEngine
    from slimreg.register.mirror import CORROBORATED, MIN_CORROBORATING

    moving = ndimage.shift(reference, (9.0, -14.0), order=1, mode="nearest")
    paths = [write_array(image.astype(np.uint16)[None], tmp_path / f"{name}.ome.tif", channel_names=["DAPI"])
             for name, image in (("reference", reference), ("moving", moving))]
    ref, mov = TiffImage(paths[0]), TiffImage(paths[1])
    settings = RegistrationSettings.from_preset("low")
    light, decoy = FeatureEngine().register_pair_and_decoy(ref, mov, 0, 0, settings)
    quality = light.metadata["quality"]
    assert decoy is None and "mirror_edge_correlation" not in quality
    assert len(quality[CORROBORATED].split(", ")) >= MIN_CORROBORATING
    searched: list[Transform] = []
    monkeypatch.setattr(judgement, "check_against_mirror",
                        lambda *args, **kwargs: searched.append(args[5]) or {"mirror_edge_correlation": 0.0})
    judge_transform(ref, mov, 0, 0, light, settings)
    assert not searched
    del light.metadata["quality"][CORROBORATED]
    judge_transform(ref, mov, 0, 0, light, settings)
    assert searched == [light]


def test_a_refusal_just_below_the_needed_significance_does_not_read_as_reaching_it() -> None:
    """The robustness run's partial kidney pair was refused at 3.96 sd with "4.0 sd above shifted copies; 4 needed":
    the number shown is rounded down, so it is below what is needed whenever the result is."""
    from slimreg.register.similarity import MIN_SIGNIFICANCE, Score, judge

    just_below = Score(value=0.5 + (MIN_SIGNIFICANCE - 0.004) * 0.1, ring_mean=0.5, ring_std=0.1, overlap=0.9,
                       shared=0.9)
    unregistered = Score(value=0.1, ring_mean=0.0, ring_std=0.1, overlap=0.9, shared=0.9)
    problem = judge(just_below, unregistered, moved_px=20.0)
    assert problem is not None and f"{MIN_SIGNIFICANCE - 0.01:.2f} sd above shifted copies" in problem
    reaching = Score(value=0.5 + MIN_SIGNIFICANCE * 0.1 + 1e-9, ring_mean=0.5, ring_std=0.1, overlap=0.9, shared=0.9)
    assert judge(reaching, unregistered, moved_px=20.0) is None

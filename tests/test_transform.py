"""The transform model: pull/push are inverse, files round-trip, the lazy warp matches scipy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pyvips
from scipy import ndimage

from slimreg.io.vips import from_numpy
from slimreg.transform import Displacement, Transform, midway, similarity_matrix
from slimreg.warp import pull_index, warp_plane


def _nonrigid(seed: int = 0) -> Transform:
    rng = np.random.default_rng(seed)
    field = Displacement(rng.normal(size=(8, 10)) * 2.5, rng.normal(size=(8, 10)) * 2.5, spacing=20.0)
    return Transform(similarity_matrix(1.04, 6.0, 4.0, -3.0, (90, 70)), field, (160, 200), (170, 210))


def test_push_inverts_pull() -> None:
    transform = _nonrigid()
    points = np.random.default_rng(3).uniform(0, 150, size=(200, 2))
    assert np.abs(transform.pull(transform.push(points)) - points).max() < 1e-5
    assert np.abs(transform.push(transform.pull(points)) - points).max() < 1e-5


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    transform = _nonrigid()
    transform.metadata["engine"] = "test"
    path = transform.save(tmp_path / "img.transform.json")
    assert (tmp_path / "img.displacement.npz").is_file()
    loaded = Transform.load(path)
    points = np.array([[0.0, 0.0], [33.3, 120.5], [199.0, 159.0]])
    assert np.allclose(loaded.pull(points), transform.pull(points))
    assert loaded.reference_shape == (160, 200) and loaded.metadata["engine"] == "test"



def test_midway_of_two_affines_is_their_mean_affine() -> None:
    first = Transform(similarity_matrix(1.04, 6.0, 4.0, -3.0, (90, 70)), None, (160, 200), (170, 210))
    second = Transform(similarity_matrix(0.98, 4.0, 9.0, 1.0, (90, 70)), None, (160, 200), (170, 210))
    mean = midway(first, second, {"engine": "both"})
    assert mean.displacement is None and mean.metadata == {"engine": "both"}
    points = np.random.default_rng(5).uniform(0, 150, size=(50, 2))
    assert np.allclose(mean.pull(points), (first.pull(points) + second.pull(points)) / 2)


def test_midway_with_fields_pulls_halfway_between_the_two_maps() -> None:
    """On the finer grid's nodes the mean map is exact; between them its field is bilinear, as the fields are."""
    first = _nonrigid(0)
    rows, columns = np.mgrid[0:4, 0:5] * 40.0 + 19.5  # a smooth field (fields are smoothed) on a coarser grid
    second = Transform(similarity_matrix(0.98, 4.0, 9.0, 1.0, (90, 70)),
                       Displacement(3 * np.sin(columns / 60), 2 * np.cos(rows / 50), 40.0), (160, 200), (170, 210))
    mean = midway(first, second, {})
    assert mean.displacement is not None and mean.displacement.spacing == 20.0
    nodes = np.stack(np.meshgrid(np.arange(10) * 20 + 9.5, np.arange(8) * 20 + 9.5), axis=-1).reshape(-1, 2)
    assert np.abs(mean.pull(nodes) - (first.pull(nodes) + second.pull(nodes)) / 2).max() < 1e-4
    points = np.random.default_rng(6).uniform(0, 150, size=(200, 2))
    halfway = (first.pull(points) + second.pull(points)) / 2
    assert np.abs(mean.pull(points) - halfway).max() < 0.5  # the bilinear fields' products are not bilinear
    assert np.abs(mean.pull(points) - first.pull(points)).max() > 2  # and it is not the first map
    with pytest.raises(ValueError, match="one pair"):
        midway(first, Transform(np.eye(3), None, (10, 10), (10, 10)), {})



def test_midway_in_bands_is_midway_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = _nonrigid(0), _nonrigid(1)
    whole = midway(first, second, {})
    monkeypatch.setattr("slimreg.transform.MIDWAY_BAND_NODES", 7)  # a band of one row of 10 nodes at a time
    banded = midway(first, second, {})
    assert np.array_equal(whole.displacement.dx, banded.displacement.dx)
    assert np.array_equal(whole.displacement.dy, banded.displacement.dy)


@pytest.mark.parametrize("transform", [
    _nonrigid(),
    Transform(similarity_matrix(0.97, -8.0, 12.0, 5.0, (90, 70))),  # no field: the index grid's own nodes
    # a field that ends well inside the frame (clamped beyond), on a spacing that is no whole number of pixels
    Transform(similarity_matrix(1.02, 3.0, -6.0, 2.0), Displacement(np.full((3, 5), 1.5), np.linspace(-2, 2, 15)
                                                                      .reshape(3, 5), spacing=7.5)),
], ids=["field", "affine", "small-field"])
def test_lazy_index_equals_point_mapping(transform: Transform) -> None:
    """The lazy index (the pulled node grid, enlarged bilinearly) is ``Transform.pull`` at every pixel, borders and
    the clamped field beyond the nodes included."""
    index = pull_index(transform, 200, 160).numpy()
    yy, xx = np.mgrid[0:160, 0:200]
    expected = transform.pull(np.stack([xx.ravel(), yy.ravel()], axis=1)).reshape(160, 200, 2)
    assert np.abs(index - expected).max() < 2e-3


def test_warp_matches_scipy_map_coordinates() -> None:
    rng = np.random.default_rng(4)
    moving = ndimage.gaussian_filter(rng.random((170, 210)), 2).astype(np.float32)
    transform = _nonrigid()
    warped = warp_plane(from_numpy(moving), transform, 200, 160).numpy()
    yy, xx = np.mgrid[0:160, 0:200]
    src = transform.pull(np.stack([xx.ravel(), yy.ravel()], axis=1))
    expected = ndimage.map_coordinates(moving, [src[:, 1], src[:, 0]], order=1, cval=0.0).reshape(160, 200)
    inside = (src[:, 0] > 1) & (src[:, 0] < 208) & (src[:, 1] > 1) & (src[:, 1] < 168)
    assert np.abs(warped.ravel()[inside] - expected.ravel()[inside]).max() < 1e-4
    assert isinstance(warp_plane(from_numpy(moving), transform, 20, 10), pyvips.Image)

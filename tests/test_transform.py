"""The transform model: pull/push are inverse, files round-trip, the lazy warp matches scipy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pyvips
from scipy import ndimage

from slimreg.io.vips import from_numpy
from slimreg.transform import Displacement, Transform, similarity_matrix
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

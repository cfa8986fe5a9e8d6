"""The warp's blocks, rendered by OpenCV's remap from decoded input tiles, are the libvips pipeline's pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from slimreg.io.read import TiffImage
from slimreg.io.source_tiles import SourceTiles
from slimreg.io.vips import from_numpy
from slimreg.transform import Displacement, Transform, similarity_matrix
from slimreg.warp import WarpedPlane, block_positions, index_nodes, pull_index, warp_file, warp_plane

REFERENCE_SHAPE = (300, 340)  # rows, columns of the output frame


def _textured(shape: tuple[int, ...], dtype: str, seed: int = 1) -> np.ndarray:
    """Texture over the type's whole range, smooth enough (a few px) that OpenCV's placement of each point to 1/32 px
    moves no value by more than one integer step, as on tissue scanned at its optical resolution."""
    smooth = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), (4, 4, 0) if len(shape) == 3 else 4)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    if dtype == "float32":
        return smooth.astype(np.float32)
    return (smooth * np.iinfo(dtype).max).astype(dtype)


def _moving_file(folder: Path, dtype: str, rgb: bool, tile: int = 64) -> Path:
    path = folder / f"moving_{dtype}_{'rgb' if rgb else 'grey'}.tif"
    data = _textured((280, 360, 3) if rgb else (280, 360), dtype)
    tifffile.imwrite(path, data, tile=(tile, tile), photometric="rgb" if rgb else "minisblack", compression="zlib")
    return path


def _bent_and_turned(shift: tuple[float, float] = (-7.0, 5.0)) -> Transform:
    rng = np.random.default_rng(2)
    field = Displacement(rng.normal(size=(9, 11)) * 3.0, rng.normal(size=(9, 11)) * 3.0, spacing=33.0)
    return Transform(similarity_matrix(1.03, 4.0, *shift, (170, 150)), field, REFERENCE_SHAPE, (280, 360))


def _blending_the_edge(transform: Transform) -> np.ndarray:
    """Output pixels that blend the moving image's first or last row or column with the background: a step of the
    type's whole range, which placing a point to 1/32 px moves by up to 1/64 of it."""
    rows, columns = np.mgrid[0:REFERENCE_SHAPE[0], 0:REFERENCE_SHAPE[1]]
    pulled = transform.pull(np.stack([columns.ravel(), rows.ravel()], axis=1)).reshape(*REFERENCE_SHAPE, 2)
    edge = np.zeros(REFERENCE_SHAPE, bool)
    for axis, size in ((0, 360), (1, 280)):
        edge |= ((pulled[..., axis] > -1) & (pulled[..., axis] < 0)) | ((pulled[..., axis] > size - 1)
                                                                       & (pulled[..., axis] < size))
    return edge


def _plane(path: Path, transform: Transform, background: float | list[float]) -> WarpedPlane:
    moving = TiffImage(path)
    height, width = REFERENCE_SHAPE
    nodes, spacing = index_nodes(transform, width, height)
    return WarpedPlane(lambda: moving.plane(0, None if moving.info.is_rgb else 0, 0), moving, transform,
                       (nodes.astype(np.float64), spacing), width, height, interpolation="bilinear",
                       background=background, index=pull_index(transform, width, height))


@pytest.mark.parametrize(("dtype", "rgb", "background"), [("uint8", True, [255.0] * 3), ("uint16", False, 0.0),
                                                          ("float32", False, 0.25)])
def test_every_block_is_the_pipelines_crop(tmp_path: Path, dtype: str, rgb: bool,
                                           background: float | list[float]) -> None:
    """Blocks inside, across and beyond the moving image's edge: libvips' ``mapim`` values within what OpenCV's
    placing of points to 1/32 px allows, the background where the block samples nothing."""
    plane = _plane(_moving_file(tmp_path, dtype, rgb), _bent_and_turned(), background)
    expected = plane().numpy().reshape(*REFERENCE_SHAPE, -1).astype(np.float64)
    edge = _blending_the_edge(plane.transform)
    value_range = 1.0 if dtype == "float32" else float(np.iinfo(dtype).max)
    # 1/32 px of this texture's steepest slope: one step of an 8-bit image, 1/256 of a wider type's range
    tolerance = max(1.0, value_range / 256) if dtype != "float32" else 1 / 256
    for left, top, columns, rows in [(0, 0, 128, 128), (128, 64, 128, 128), (256, 256, 84, 44), (5, 200, 17, 100)]:
        block = plane.render_block(left, top, columns, rows)
        assert block is not None and block.dtype == np.dtype(dtype) and block.shape == (rows, columns, plane.bands)
        difference = np.abs(block.astype(np.float64) - expected[top:top + rows, left:left + columns]).max(axis=2)
        at_edge = edge[top:top + rows, left:left + columns]
        assert difference[~at_edge].max() <= tolerance
        assert difference[at_edge].max(initial=0) <= value_range / 32

    beyond = _plane(_moving_file(tmp_path, dtype, rgb), _bent_and_turned(shift=(900.0, 0.0)), background)
    block = beyond.render_block(0, 0, 64, 64)
    assert block is not None and np.all(block == np.asarray(background, block.dtype))


@pytest.mark.parametrize("spacing", [33.0, 1.0], ids=["few-nodes", "a-node-every-px"])
def test_block_positions_are_the_transforms_pull(spacing: float) -> None:
    """Every pixel's position is ``Transform.pull``'s, by matrix products over a few nodes a block and by gathered
    neighbours over many (the valis engine's fields have a node at every pixel VALIS processed)."""
    rng = np.random.default_rng(5)
    shape = (int(300 / spacing) + 1, int(340 / spacing) + 1)
    field = Displacement(rng.normal(size=shape) * 2.0, rng.normal(size=shape) * 2.0, spacing=spacing)
    transform = Transform(similarity_matrix(1.03, 4.0, -7.0, 5.0, (170, 150)), field, REFERENCE_SHAPE, (280, 360))
    nodes, grid_spacing = index_nodes(transform, REFERENCE_SHAPE[1], REFERENCE_SHAPE[0])
    left, top, columns, rows = 96, 64, 128, 100  # 130 x 102 nodes at 1 px: gathered
    map_x, map_y, origin_x, origin_y = block_positions(nodes.astype(np.float64), grid_spacing, left, top, columns,
                                                       rows)
    assert map_x.dtype == np.float32 and map_x.shape == (rows, columns)
    yy, xx = np.mgrid[top:top + rows, left:left + columns]
    expected = transform.pull(np.stack([xx.ravel(), yy.ravel()], axis=1)).reshape(rows, columns, 2)
    assert np.abs(map_x + origin_x - expected[..., 0]).max() < 2e-3
    assert np.abs(map_y + origin_y - expected[..., 1]).max() < 2e-3


def test_blocks_the_pipeline_must_render(tmp_path: Path) -> None:
    """A pixel type remap lacks, and a source region far larger than the block (a moving image at three times the
    reference's resolution), are left to the libvips pipeline."""
    path = tmp_path / "int32.tif"
    tifffile.imwrite(path, np.arange(280 * 360, dtype=np.int32).reshape(280, 360), tile=(64, 64))
    assert _plane(path, _bent_and_turned(), 0.0).render_block(0, 0, 64, 64) is None

    enlarged = Transform(similarity_matrix(3.0, 0.0, 0.0, 0.0), None, REFERENCE_SHAPE, (280, 360))
    assert _plane(_moving_file(tmp_path, "uint8", True), enlarged, [255.0] * 3).render_block(0, 0, 64, 64) is None
    twice = Transform(similarity_matrix(2.0, 0.0, 0.0, 0.0), None, REFERENCE_SHAPE, (280, 360))
    assert _plane(_moving_file(tmp_path, "uint8", True), twice, [255.0] * 3).render_block(0, 0, 64, 64) is not None


def test_a_plane_of_tiles_larger_than_the_cache_allows_is_the_pipelines(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit (whole tiles of the file) above a quarter of the cache would be decoded again for most blocks."""
    path = _moving_file(tmp_path, "uint8", True)  # one unit: 280 x 360 x 3 bytes, about 0.3 MB
    assert _plane(path, _bent_and_turned(), [255.0] * 3).render_block(0, 0, 64, 64) is not None
    monkeypatch.setattr("slimreg.io.source_tiles.SOURCE_CACHE_BYTES", 280 * 360 * 3 * 2)
    assert _plane(path, _bent_and_turned(), [255.0] * 3).render_block(0, 0, 64, 64) is None


def test_source_tiles_decode_each_unit_once_within_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regions are the plane's pixels, units of whole tiles are decoded once while the cache holds them, and the
    cache holds no more than its budget (or the one unit being read)."""
    data = _textured((200, 300), "uint16")
    image = from_numpy(data)
    whole = SourceTiles(lambda: image, 300, 200, (64, 64), 1, np.dtype("uint16"))
    assert (whole.unit_height, whole.unit_width) == (1024, 1024)  # 16 tiles a side: the whole plane here
    monkeypatch.setattr("slimreg.io.source_tiles.SOURCE_UNIT_PIXELS", 128)
    tiles = SourceTiles(lambda: image, 300, 200, (64, 48), 1, np.dtype("uint16"))
    assert (tiles.unit_height, tiles.unit_width) == (128, 96)
    for left, top, right, bottom in [(0, 0, 300, 200), (10, 70, 150, 190), (127, 95, 129, 97), (299, 199, 300, 200)]:
        assert np.array_equal(tiles.region(left, top, right, bottom)[..., 0], data[top:bottom, left:right])
    assert tiles.decoded == 2 * 4  # every unit of the 2 x 4 grid once

    one_unit = 128 * 96 * 2
    small = SourceTiles(lambda: image, 300, 200, (64, 48), 1, np.dtype("uint16"), budget=2 * one_unit)
    small.region(0, 0, 300, 200)
    assert small._held <= 2 * one_unit
    with pytest.raises(ValueError, match="outside"):
        small.region(0, 0, 301, 10)


def test_warp_file_writes_the_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file warp_file writes is rendered block by block by remap, with the pipeline's pixels."""
    rendered: list[bool] = []
    original = WarpedPlane.render_block

    def counting(self: WarpedPlane, *args: int) -> np.ndarray | None:
        block = original(self, *args)
        rendered.append(block is not None)
        return block

    monkeypatch.setattr(WarpedPlane, "render_block", counting)
    path = _moving_file(tmp_path, "uint8", True)
    transform = _bent_and_turned()
    out = warp_file(TiffImage(path), transform, tmp_path / "warped.ome.tif", reference_shape=REFERENCE_SHAPE,
                    pixel_size_um=None, tile_size=64)
    assert rendered and all(rendered)
    written = tifffile.imread(out).astype(np.int16)
    expected = warp_plane(TiffImage(path).plane(0, None, 0), transform, REFERENCE_SHAPE[1], REFERENCE_SHAPE[0],
                          background=[255.0] * 3).numpy().astype(np.int16)
    difference = np.abs(written - expected).max(axis=2)
    edge = _blending_the_edge(transform)
    assert difference[~edge].max() <= 1 and difference[edge].max() <= 255 / 32


def test_an_rgba_scan_is_warped_as_its_rgb(tmp_path: Path) -> None:
    """An alpha band (a scan converted from PNG) is dropped on reading: the registered copy is the RGB's. Before,
    libvips refused the warp's three-value background for four bands after the registration had run."""
    rgb = _textured((280, 360, 3), "uint8")
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, tile=(64, 64), photometric="rgb")
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, tile=(64, 64), photometric="rgb", extrasamples=["unassalpha"])
    assert TiffImage(tmp_path / "rgba.tif").plane(0, None, 0).bands == 3
    written = [tifffile.imread(warp_file(TiffImage(tmp_path / f"{name}.tif"), _bent_and_turned(),
                                         tmp_path / f"{name}.ome.tif", reference_shape=REFERENCE_SHAPE,
                                         pixel_size_um=None, tile_size=64)) for name in ("rgb", "rgba")]
    assert written[1].shape == (*REFERENCE_SHAPE, 3) and np.array_equal(written[0], written[1])

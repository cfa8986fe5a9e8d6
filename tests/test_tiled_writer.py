"""The tile-at-a-time pyramid writer: exact pyramids at awkward sizes, JPEG colour, blocks, clean failure."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import pyvips
import tifffile

from slimreg.errors import ParameterError
from slimreg.io import OmeMetadata, open_image, probe, write_array, write_planes
from slimreg.io.tiles import RENDER_BLOCK_PIXELS, _halve
from slimreg.io.vips import from_numpy


def halved(array: np.ndarray) -> np.ndarray:
    """Reference 2 x 2 mean (rounded half up for integers; a 1 px axis stays 1 px), written independently."""
    rows, columns = array.shape[:2]
    row_step, column_step = (2 if rows >= 2 else 1), (2 if columns >= 2 else 1)
    out_rows, out_columns = max(1, rows // 2), max(1, columns // 2)
    part = array[: out_rows * row_step, : out_columns * column_step].astype(np.float64)
    mean = part.reshape(out_rows, row_step, out_columns, column_step, *array.shape[2:]).mean(axis=(1, 3))
    return mean.astype(array.dtype) if array.dtype.kind == "f" else np.floor(mean + 0.5).astype(array.dtype)


@pytest.mark.parametrize(("shape", "tile"), [
    ((1000, 1300), 128),            # several pyramid levels, odd level sizes
    ((2 * RENDER_BLOCK_PIXELS + 1, 300), 256),  # one pixel row past a render block
    ((300, 5), 16),                 # narrow: width reaches 1 px before the height fits a tile
    ((1, 700), 16),                 # a single row
])
def test_every_level_is_the_exact_mean_of_the_level_below(tmp_path: Path, shape: tuple[int, int], tile: int) -> None:
    data = np.random.default_rng(sum(shape)).integers(0, 60000, shape).astype(np.uint16)
    path = write_array(data, tmp_path / "p.ome.tif", tile_size=tile)
    with tifffile.TiffFile(path) as tif:
        levels = [level.asarray() for level in tif.series[0].levels]
    assert np.array_equal(levels[0], data)
    assert max(levels[-1].shape) <= tile and len(levels) > 1
    expected = data
    for level in levels[1:]:
        expected = halved(expected)
        assert level.shape == expected.shape and np.array_equal(level, expected)
    assert probe(path).levels == tuple(level.shape for level in levels)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float32])
@pytest.mark.parametrize("samples", [1, 3, 5])
@pytest.mark.parametrize("shape", [(2, 2), (9, 14), (1, 9), (7, 1), (64, 64)])
@pytest.mark.parametrize("opencv_loaded", [True, False])
def test_halving_a_tile_is_the_exact_mean(dtype: type, samples: int, shape: tuple[int, int], opencv_loaded: bool,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pyramid tile's halving, whichever way it is computed (OpenCV's area resize where the process has it
    loaded and it gives the same integers, summed views elsewhere), equals the reference mean: half-way values round
    up, none overflows."""
    if opencv_loaded:
        import cv2  # noqa: F401  (loaded, as in a register task)
    else:
        monkeypatch.delitem(sys.modules, "cv2", raising=False)  # as in a task that only writes
    rng = np.random.default_rng(samples * 100 + shape[0])
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    low, high = (info.min, info.max) if info else (-1e3, 1e3)
    array = rng.uniform(low, high, (*shape, samples)).astype(dtype)
    array[0, 0] = high  # the largest values summed: an accumulator too narrow would wrap
    expected = halved(array)
    out = _halve(array, *expected.shape[:2])
    assert out.dtype == array.dtype and out.shape == expected.shape
    if array.dtype.kind == "f":
        assert np.allclose(out, expected, rtol=1e-6)
    else:
        assert np.array_equal(out, expected)


def test_float_pyramid_keeps_fractions(tmp_path: Path) -> None:
    data = np.random.default_rng(3).random((2, 333, 517)).astype(np.float32)
    path = write_array(data, tmp_path / "f.ome.tif", tile_size=64)
    with tifffile.TiffFile(path) as tif:
        level1 = tif.series[0].levels[1].asarray()
    assert np.allclose(level1[1], halved(data[1]), atol=1e-6)


def test_jpeg_rgb_reads_back_alike_in_libvips_and_tifffile(tmp_path: Path) -> None:
    y, x = np.mgrid[0:700, 0:900]
    rgb = np.dstack([128 + 100 * np.sin(x / 40), 128 + 100 * np.cos(y / 30), (x + y) / 8 % 200]).astype(np.uint8)
    path = write_array(rgb, tmp_path / "he.ome.tif", is_rgb=True, compression="jpeg", tile_size=256)
    info = probe(path)
    assert info.is_rgb and info.compression == "jpeg" and info.channels == 3
    with tifffile.TiffFile(path) as tif:
        by_tifffile = tif.series[0].asarray()
    by_libvips = open_image(path).plane(0, None).numpy()
    assert np.array_equal(by_tifffile, by_libvips)
    assert np.abs(by_libvips.astype(int) - rgb).mean() < 2.0  # lossy, but the colours are right


def test_a_plane_recipe_is_rebuilt_for_every_render_block(tmp_path: Path) -> None:
    """Blocks of at most RENDER_BLOCK_PIXELS a side: the count of pipeline builds proves the image is never whole."""
    height, width = RENDER_BLOCK_PIXELS + 100, 2 * RENDER_BLOCK_PIXELS + 1
    data = np.random.default_rng(4).integers(0, 255, (height, width)).astype(np.uint8)
    image = from_numpy(data)
    builds = []

    def recipe() -> pyvips.Image:
        builds.append(1)
        return image

    path = write_planes([recipe], tmp_path / "r.ome.tif", OmeMetadata(width, height, "uint8", ("a",)),
                        tile_size=256)
    blocks = 2 * 3  # ceil(height / block) x ceil(width / block)
    assert len(builds) == 2 + blocks  # + one build to check the shape, + one for the renderer's band format
    assert np.array_equal(open_image(path).region(0, 0, width, height), data)


def test_a_failing_plane_leaves_no_output_and_no_scratch(tmp_path: Path) -> None:
    height = width = 3 * RENDER_BLOCK_PIXELS // 2
    image = from_numpy(np.zeros((height, width), np.uint16))
    calls = []

    def recipe() -> pyvips.Image:
        calls.append(1)
        if len(calls) > 4:
            raise RuntimeError("source went away")
        return image

    with pytest.raises(RuntimeError, match="source went away"):
        write_planes([recipe], tmp_path / "x.ome.tif", OmeMetadata(width, height, "uint16", ("a",)), tile_size=256)
    assert list(tmp_path.iterdir()) == []


def test_planes_are_built_in_turn_and_a_wrong_late_plane_leaves_nothing(tmp_path: Path) -> None:
    """A recording's planes are made as the writer reaches them (slimreg.recording corrects frames then): no plane
    but the first is built before its turn, and a plane of the wrong size at the end fails the write, naming it,
    with nothing left behind."""
    planes_made: list[int] = []

    def plane_at(index: int, size: int = 32):
        def build() -> pyvips.Image:
            if not planes_made or planes_made[-1] != index:
                planes_made.append(index)
            return from_numpy(np.full((size, size), index, np.uint16))
        return build

    meta = OmeMetadata(32, 32, "uint16", ("a",), size_t=5)
    path = write_planes([plane_at(i) for i in range(5)], tmp_path / "ok.ome.tif", meta, tile_size=32)
    assert planes_made == [0, 1, 2, 3, 4]  # plane 0 checked at once and then written; each later one in its turn
    assert [int(page.asarray()[0, 0]) for page in tifffile.TiffFile(path).pages] == [0, 1, 2, 3, 4]
    wrong = [plane_at(i) for i in range(4)] + [plane_at(4, size=16)]
    with pytest.raises(ParameterError, match="plane 4 is 16x16x1, expected 32x32x1"):
        write_planes(wrong, tmp_path / "bad.ome.tif", meta, tile_size=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.ome.tif"]


def test_every_image_gets_a_pyramid_and_its_own_name(tmp_path: Path) -> None:
    """Viewers show an overview level and list images by name: a 1024 px image written in 1024 px tiles still
    gets a pyramid down to an overview, and the OME Image Name is the file's stem, not 'image'."""
    from slimreg.io import write_array
    from slimreg.io.tiles import OVERVIEW_PX

    path = write_array(np.zeros((1, 1024, 1024), np.uint8), tmp_path / "round2.ome.tif", channel_names=["DAPI"],
                       tile_size=1024, name="round2")
    levels = probe(path).levels
    assert len(levels) > 1 and max(levels[-1]) <= OVERVIEW_PX
    with tifffile.TiffFile(path) as tif:
        assert 'Name="round2"' in tif.pages[0].description


@pytest.mark.parametrize(("shape", "tile", "rgb"), [
    ((787, 1164), 1024, True),   # the shared kidney section registered at the default tile: levels of 291 and 145 px
    ((1000, 1300), 512, False),
])
def test_every_level_opens_in_libvips(tmp_path: Path, shape: tuple[int, int], tile: int, rgb: bool) -> None:
    """libvips (and VALIS, which reads through it) refuses a level whose tile is larger than twice its long side
    rounded up to 256 px: the levels smaller than one tile are written in tiles that hold them, and read back in
    libvips as in tifffile."""
    rng = np.random.default_rng(5)
    data = rng.integers(0, 255, (*shape, 3) if rgb else shape).astype(np.uint8)
    path = write_array(data, tmp_path / "levels.ome.tif", is_rgb=rgb, tile_size=tile)
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        assert len(levels) > 2
        for index, level in enumerate(levels):
            page = level.pages[0]
            long_side = max(page.imagewidth, page.imagelength)
            assert page.tilewidth <= -(-2 * long_side // 256) * 256 and page.tilewidth % 16 == 0
            by_libvips = pyvips.Image.new_from_file(str(path), subifd=index - 1, n=1).numpy()
            assert np.array_equal(by_libvips.reshape(level.shape), level.asarray())

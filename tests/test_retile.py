"""Images stored in strips: written block by block from a tiled copy of each page, with the same pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pyvips
import tifffile

from slimreg.atomic import remove_partials
from slimreg.estimate import tiled_copy_disk_bytes, warp_bytes
from slimreg.io import probe, read_downsampled
from slimreg.io.convert import rewrite_image
from slimreg.io.merge import merge_channels
from slimreg.io.read import WHOLE_PLANE_BYTES, TiffImage
from slimreg.io.retile import TiledPages, copy_buffer_bytes, needs_tiled_copy
from slimreg.memory import MemoryTracker
from slimreg.transform import Transform, similarity_matrix
from slimreg.warp import warp_file


def textured(shape: tuple[int, ...], seed: int, dtype: type = np.uint8) -> np.ndarray:
    """Smooth structure plus noise: compressible like tissue, and every block differs."""
    rng = np.random.default_rng(seed)
    rows, columns = shape[:2]
    y, x = np.mgrid[:rows, :columns]
    base = 0.5 + 0.25 * np.sin(x / 37.0) * np.cos(y / 53.0)
    if len(shape) == 3:
        base = base[..., None] * np.linspace(0.6, 1.0, shape[2])
    top = np.iinfo(dtype).max
    return np.clip(base * top + rng.normal(0, top / 50, shape), 0, top).astype(dtype)


def stripped_and_tiled(folder: Path, data: np.ndarray, **kwargs: object) -> tuple[Path, Path]:
    """The same pixels as a deflate strip TIFF (64 rows a strip, no pyramid) and as a tiled one."""
    strips, tiles = folder / "strips.tif", folder / "tiles.tif"
    tifffile.imwrite(strips, data, rowsperstrip=64, compression="zlib", **kwargs)
    tifffile.imwrite(tiles, data, tile=(256, 256), compression="zlib", **kwargs)
    return strips, tiles


def copies_made(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the page of every tiled copy ``TiledPages`` makes."""
    pages: list[int] = []
    replace = TiledPages._replace

    def recording(self: TiledPages, page: int, channel: int | None, frame: int) -> None:
        pages.append(page)
        replace(self, page, channel, frame)
    monkeypatch.setattr(TiledPages, "_replace", recording)
    return pages


def test_a_stripped_image_is_warped_from_one_tiled_copy_with_the_same_pixels(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = textured((2600, 2500, 3), seed=1)  # 19.5 MB: past what is decoded whole
    strips, tiles = stripped_and_tiled(tmp_path, data, photometric="rgb")
    assert needs_tiled_copy(probe(strips)) and not needs_tiled_copy(probe(tiles))
    pages = copies_made(monkeypatch)
    transform = Transform(similarity_matrix(rotation_deg=2.0, tx=-31.5, ty=17.25, centre=(1250, 1300)),
                          reference_shape=(2600, 2500), moving_shape=(2600, 2500))
    outputs = []
    for source in (strips, tiles):
        out = tmp_path / "out" / f"{source.stem}.ome.tif"
        warp_file(TiffImage(source), transform, out, reference_shape=(2600, 2500), pixel_size_um=None,
                  tile_size=256)
        outputs.append(tifffile.imread(out))
    assert np.array_equal(outputs[0], outputs[1]) and outputs[0].std() > 10
    # one copy, though the writer builds the plane once per block, and it is gone afterwards
    assert pages == [0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["strips.ome.tif", "tiles.ome.tif"]


def test_a_stripped_stack_is_rewritten_one_page_copy_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    data = np.stack([textured((2100, 2200), seed=2, dtype=np.uint16),
                     textured((2100, 2200), seed=3, dtype=np.uint16)])  # two pages of 9.2 MB... each
    assert data[0].nbytes <= WHOLE_PLANE_BYTES < 2 * data[0].nbytes
    data = np.concatenate([data, data[::-1]], axis=2)  # ... widened to 18.5 MB a page
    strips, _ = stripped_and_tiled(tmp_path, data, photometric="minisblack", metadata={"axes": "CYX"})
    info = probe(strips)
    assert info.channels == 2 and needs_tiled_copy(info)
    pages = copies_made(monkeypatch)
    out = rewrite_image(strips, tmp_path / "out" / "copy.ome.tif", image_format="ome-tiff", tile_size=512,
                        compression="deflate")
    assert np.array_equal(tifffile.imread(out), data)
    assert pages == [0, 1]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["copy.ome.tif"]


def test_a_stripped_reference_round_is_merged_from_its_tiled_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    reference, other = textured((3000, 3100), seed=5, dtype=np.uint16), textured((3000, 3100), seed=6, dtype=np.uint16)
    strips, _ = stripped_and_tiled(tmp_path, reference, photometric="minisblack")
    tifffile.imwrite(tmp_path / "round2.tif", other, tile=(256, 256), compression="zlib")
    pages = copies_made(monkeypatch)
    out = merge_channels([strips, tmp_path / "round2.tif"], [(0, 0, "R1_DAPI"), (1, 0, "R2_DAPI")],
                         tmp_path / "out" / "merged.ome.tif", tile_size=512, compression="deflate")
    assert np.array_equal(tifffile.imread(out), np.stack([reference, other]))
    assert pages == [0]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["merged.ome.tif"]


def test_a_copy_left_by_a_killed_task_is_removed_by_the_next_run_and_a_failed_copy_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    strips, _ = stripped_and_tiled(tmp_path, textured((2600, 2500, 3), seed=7), photometric="rgb")
    out = tmp_path / "out"
    tiled = TiledPages(TiffImage(strips), out)
    tiled.plane(None, 0)  # the copy exists; a task killed now never closes it
    [left] = list(out.iterdir())
    assert remove_partials(out) == [left] and not left.exists()

    def full_disk(*args: object, **kwargs: object) -> None:
        raise pyvips.Error("unable to call tiffsave", "wbuffer_write: write failed\nNo space left on device")
    threads = pyvips.concurrency_get()
    monkeypatch.setattr(pyvips.Image, "tiffsave", full_disk)
    with pytest.raises(pyvips.Error, match="No space left"), TiledPages(TiffImage(strips), out) as failing:
        failing.plane(None, 0)  # not blamed on the input: the task's handler tells a damaged strip from a full disk
    assert list(out.iterdir()) == [] and pyvips.concurrency_get() == threads


def test_the_estimates_count_the_copy(tmp_path: Path) -> None:
    data = textured((2600, 2500, 3), seed=4)
    strips, tiles = stripped_and_tiled(tmp_path, data, photometric="rgb")
    stripped, tiled = probe(strips), probe(tiles)
    assert tiled_copy_disk_bytes(stripped) == data.nbytes and tiled_copy_disk_bytes(tiled) == 0
    assert warp_bytes(stripped, 1024) - warp_bytes(tiled, 1024) == copy_buffer_bytes(stripped)


def test_a_downsampled_copy_of_compressed_strips_is_read_top_to_bottom(tmp_path: Path) -> None:
    """libvips' random access to a shrunk stripped plane held the whole decoded plane (866 MB at 20000 px)."""
    path = tmp_path / "big.tif"
    column = (pyvips.Image.xyz(16000, 10000)[0] % 251).cast("uchar")
    column.bandjoin([column, column]).copy(interpretation="srgb").tiffsave(str(path), compression="deflate",
                                                                          bigtiff=True)  # 480 MB decoded, strips
    assert probe(path).tile is None
    tracker = MemoryTracker(interval=0.005)
    try:
        with tracker.step("downsample"):
            result = read_downsampled(path, 1000, channel=None)
    finally:
        tracker.close()
    assert max(result.array.shape) <= 1000
    assert tracker.steps[0].peak_above_baseline_bytes < 200e6  # 514 MB read at random

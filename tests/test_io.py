"""Header probing, lazy reading and streamed writing, against numpy truth."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest
import tifffile

from slimreg.errors import InputError, ParameterError
from slimreg.io import open_image, probe, read_downsampled, read_region, write_array
from slimreg.io.write import compression_supported
from tests.conftest import DEMO_SIZE


def test_probe_demo_multiplex_round(demo_dir: Path) -> None:
    info = probe(demo_dir / "mif_round1.ome.tif")
    assert (info.width, info.height, info.channels, info.frames) == (DEMO_SIZE, DEMO_SIZE, 3, 1)
    assert info.channel_names == ("DAPI", "CD8", "CD20")
    assert info.pixel_size_um == pytest.approx((0.5, 0.5))
    assert info.dtype == "uint16" and info.is_ome and info.is_bigtiff and not info.is_rgb
    assert info.tile == (256, 256)
    assert info.levels[0] == (DEMO_SIZE, DEMO_SIZE) and len(info.levels) >= 2
    assert info.bytes_level0 == DEMO_SIZE * DEMO_SIZE * 3 * 2


def test_probe_rgb_and_stack(demo_dir: Path) -> None:
    rgb = probe(demo_dir / "he_section1.ome.tif")
    assert rgb.is_rgb and rgb.channels == 3 and rgb.dtype == "uint8" and rgb.compression == "jpeg"
    assert rgb.pixel_size_um == pytest.approx((0.25, 0.25))
    stack = probe(demo_dir / "calcium_s1.ome.tif")
    assert (stack.frames, stack.size_t, stack.channels, stack.channel_names) == (12, 12, 1, ("GCaMP",))


def test_probe_plain_layouts(tmp_path: Path) -> None:
    data = (np.arange(4 * 50 * 60) % 65535).astype(np.uint16).reshape(4, 50, 60)
    stripped = tmp_path / "stripped.tif"
    tifffile.imwrite(stripped, data[0], resolution=(20000.0, 20000.0), resolutionunit="CENTIMETER")
    info = probe(stripped)
    assert info.tile is None and info.channels == 1 and not info.is_bigtiff
    assert info.pixel_size_um == pytest.approx((0.5, 0.5))

    pages = tmp_path / "imagej.tif"
    tifffile.imwrite(pages, data, imagej=True, metadata={"axes": "CYX", "Labels": list("abcd")})
    info = probe(pages)
    assert info.channels == 4 and info.channel_names == ("a", "b", "c", "d")
    assert np.array_equal(read_region(pages, 0, 0, 60, 50, channel=2), data[2])

    samples = tmp_path / "samples.tif"
    tifffile.imwrite(samples, np.moveaxis(data, 0, -1), photometric="minisblack", planarconfig="contig",
                     bigtiff=True, tile=(32, 32))
    info = probe(samples)
    assert info.channels == 4 and info.channels_in_samples and info.is_bigtiff and info.tile == (32, 32)
    assert np.array_equal(read_region(samples, 0, 0, 60, 50, channel=3), data[3])

    frames = tmp_path / "frames.ome.tif"
    stack = np.repeat(data[:1], 20, axis=0)
    stack[7] += 3
    tifffile.imwrite(frames, stack, metadata={"axes": "TYX"})
    info = probe(frames)
    assert (info.frames, info.channels) == (20, 1)
    assert np.array_equal(read_region(frames, 0, 0, 60, 50, frame=7), stack[7])


def test_probe_subifd_pyramid_written_by_tifffile(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 255, (2, 256, 320), dtype=np.uint8)
    path = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(data, subifds=1, tile=(64, 64), metadata={"axes": "CYX", "Channel": {"Name": ["x", "y"]}})
        tif.write(data[:, ::2, ::2], subfiletype=1, tile=(64, 64))
    info = probe(path)
    assert info.levels == ((256, 320), (128, 160)) and info.subifd_pyramid
    image = open_image(path)
    assert np.array_equal(image.region(0, 0, 160, 128, level=1, channel=1), data[1, ::2, ::2])


def test_a_coarser_level_is_read_where_it_keeps_the_share_asked_of_the_largest_copy(tmp_path: Path) -> None:
    """100 px from a 2300 px scan is a factor of 23, which divides no pyramid level: the largest copy (100 px) decodes
    the whole scan. A level eight times coarser gives 96 px (a factor of 3 on 288 px), and is read where 0.9 of the
    largest copy is enough."""
    rng = np.random.default_rng(4)
    levels = [rng.integers(0, 255, (1150, 2300), dtype=np.uint8)]
    for _ in range(3):
        levels.append(levels[-1][::2, ::2].copy())
    path = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(levels[0], subifds=3, tile=(64, 64), metadata={"axes": "YX"})
        for level in levels[1:]:
            tif.write(level, subfiletype=1, tile=(64, 64))
    image = open_image(path)
    assert image.downsampled(100).scale == 23
    coarse = image.downsampled(100, level_share=0.9)
    assert coarse.scale == 24 and coarse.array.shape == (48, 96)
    expected = levels[3].reshape(48, 3, 96, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(coarse.array.astype(float) - expected).max() <= 2.0  # integer roundings; level 0 is noise here
    assert image.downsampled(100, level_share=0.97).scale == 23  # 96 px is under 0.97 of 100


def test_probe_is_fast_and_small_on_a_huge_file(tmp_path: Path) -> None:
    path = tmp_path / "huge.tif"
    tifffile.memmap(path, shape=(25000, 30000), dtype="uint8", bigtiff=True)  # sparse file, 750 MB
    process = psutil.Process()
    before = process.memory_info().rss
    start = time.perf_counter()
    info = probe(path)
    elapsed = time.perf_counter() - start
    assert (info.width, info.height) == (30000, 25000)
    assert elapsed < 1.0
    assert process.memory_info().rss - before < 20e6


def test_read_downsampled_is_exact_block_mean(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 4000, (2, 600, 900)).astype(np.uint16)
    path = write_array(data, tmp_path / "a.ome.tif", channel_names=["a", "b"], tile_size=128)
    result = read_downsampled(path, 256, channel=1)
    assert max(result.array.shape) <= 256
    factor = int(result.scale)
    assert result.scale == factor
    h, w = result.array.shape
    expected = data[1, : h * factor, : w * factor].reshape(h, factor, w, factor).astype(float).mean(axis=(1, 3))
    assert np.abs(result.array.astype(float) - expected).max() <= 2.0  # two integer roundings
    assert np.allclose(result.to_level0(result.from_level0(np.array([[10.0, 20.0]]))), [[10.0, 20.0]])


def test_a_downsampled_region_maps_back_to_where_it_was_read(tmp_path: Path) -> None:
    """Registration reads only the tissue's box: its pixels and its coordinate mapping must both be exact."""
    rng = np.random.default_rng(2)
    data = rng.integers(0, 4000, (1000, 1500)).astype(np.uint16)
    path = write_array(data, tmp_path / "a.ome.tif", channel_names=["a"], tile_size=128)
    image = open_image(path)
    box = image.downsampled(100, channel=0, region=(703, 401, 300, 200))
    assert box.scale == 3 and box.origin == (703.0, 401.0)
    h, w = box.array.shape
    expected = data[401: 401 + 3 * h, 703: 703 + 3 * w].reshape(h, 3, w, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(box.array.astype(float) - expected).max() <= 1.0
    # box pixel (0, 0) averages level-0 pixels 703..705 x 401..403: its centre is (704, 402)
    assert np.allclose(box.to_level0(np.array([[0.0, 0.0]])), [[704.0, 402.0]])
    assert np.allclose(box.level0_matrix() @ [5.0, 7.0, 1.0], [*box.to_level0(np.array([[5.0, 7.0]]))[0], 1.0])
    assert np.allclose(box.from_level0(box.to_level0(np.array([[10.0, 20.0]]))), [[10.0, 20.0]])


def test_read_downsampled_streams_a_stripped_level0(tmp_path: Path) -> None:
    path = tmp_path / "big.tif"
    tifffile.memmap(path, shape=(12000, 20000), dtype="uint8")  # 240 MB, stripped, no pyramid
    process = psutil.Process()
    before = process.memory_info().rss
    result = read_downsampled(path, 1000)
    assert max(result.array.shape) <= 1000
    assert process.memory_info().rss - before < 120e6


def test_writer_round_trip_and_options(tmp_path: Path) -> None:
    data = np.random.default_rng(2).integers(0, 60000, (3, 300, 400)).astype(np.uint16)
    for compression in [c for c in ("deflate", "zstd", "lzw", "none") if compression_supported(c)]:
        path = write_array(data, tmp_path / f"{compression}.ome.tif", channel_names=["DAPI", "CD3", "x y"],
                           pixel_size_um=(0.325, 0.325), compression=compression, tile_size=128)
        info = probe(path)
        assert info.channel_names == ("DAPI", "CD3", "x y") and info.pixel_size_um == pytest.approx((0.325, 0.325))
        assert np.array_equal(read_region(path, 0, 0, 400, 300, channel=1), data[1])
    large = np.zeros((600, 700), np.uint16)
    assert probe(write_array(large, tmp_path / "default.ome.tif")).tile == (512, 512)
    assert probe(write_array(data[0], tmp_path / "small.ome.tif")).tile == (400, 400)  # clamped to the image
    floats = data.astype(np.float32) / 7
    path = write_array(floats, tmp_path / "float.ome.tif")
    assert probe(path).dtype == "float32"
    assert np.array_equal(read_region(path, 0, 0, 400, 300, channel=2), floats[2])
    if not compression_supported("zstd"):
        with pytest.raises(ParameterError, match="cannot write zstd"):
            write_array(data, tmp_path / "bad.ome.tif", compression="zstd")
    with pytest.raises(ParameterError, match="jpeg"):
        write_array(data, tmp_path / "bad.ome.tif", compression="jpeg")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("bad") or ".partial-" in p.name) == []


def test_bad_inputs_name_the_file(tmp_path: Path, demo_dir: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        probe(tmp_path / "missing.tif")
    text = tmp_path / "notes.tif"
    text.write_text("this is not an image\n")
    with pytest.raises(InputError, match=r"notes\.tif.*not a readable TIFF"):
        probe(text)
    truncated = tmp_path / "truncated.ome.tif"
    truncated.write_bytes((demo_dir / "mif_round0.ome.tif").read_bytes()[:200_000])
    with pytest.raises(InputError, match="truncated"):
        probe(truncated)
    complex_path = tmp_path / "complex.tif"
    tifffile.imwrite(complex_path, np.zeros((10, 10), dtype=np.complex64))
    with pytest.raises(InputError, match="not supported"):
        probe(complex_path)


@pytest.mark.parametrize(("suffix", "name"), [(".jpg", "JPEG"), (".png", "PNG")])
def test_a_jpeg_or_png_is_named_with_a_conversion_line_that_works(tmp_path: Path, suffix: str, name: str) -> None:
    """Such a file used to be 'not a readable TIFF' with tifffile's raw header bytes, and a `vips` command that
    is not installed with slimreg. The message must name the format and give a line that runs as printed."""
    picture = tmp_path / f"slide{suffix}"
    rng = np.random.default_rng(0)
    assert cv2.imwrite(str(picture), (rng.random((96, 128, 3)) * 255).astype(np.uint8))
    with pytest.raises(InputError) as caught:
        probe(picture)
    message = str(caught.value)
    assert f"is a {name} file, not a TIFF" in message and "\\x" not in message and "vips tiffsave" not in message
    command = message[message.index("python -c "):]
    # run as printed, with this environment's Python in place of the first word
    subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=tmp_path, check=True, timeout=120)
    info = probe(tmp_path / "slide.tif")
    assert (info.width, info.height) == (128, 96) and info.tile is not None


def test_multichannel_pyramid_written_plane_by_plane(tmp_path: Path) -> None:
    """Each channel keeps its own SubIFD pyramid after the tile copy; no scratch file is left behind."""
    rng = np.random.default_rng(5)
    data = rng.integers(0, 60000, (4, 520, 650)).astype(np.uint16)
    path = write_array(data, tmp_path / "pyramid.ome.tif", channel_names=list("abcd"), pixel_size_um=(0.4, 0.4),
                       tile_size=128)
    info = probe(path)
    assert info.channel_names == tuple("abcd") and info.subifd_pyramid and len(info.levels) >= 3
    assert info.pixel_size_um == pytest.approx((0.4, 0.4))
    image = open_image(path)
    for channel in range(4):
        assert np.array_equal(image.region(0, 0, 650, 520, channel=channel), data[channel])
        h, w = info.levels[1]
        level1 = image.region(0, 0, w, h, level=1, channel=channel).astype(float)
        expected = data[channel, : 2 * h, : 2 * w].reshape(h, 2, w, 2).astype(float).mean(axis=(1, 3))
        assert np.abs(level1 - expected).max() <= 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pyramid.ome.tif"]


def test_frames_of_a_many_page_file_are_read_as_libvips_reads_them(tmp_path: Path) -> None:
    """A recording's frames are read through tifffile (libvips counts every page of the file on each open): the
    planes must be the ones libvips gives, for channels in pages and in samples, and a damaged page must be named."""
    import pyvips

    from slimreg.io.read import MANY_PAGES, TiffImage

    rng = np.random.default_rng(5)
    frames = MANY_PAGES + 6
    grey = rng.integers(0, 60000, (frames, 2, 48, 40), dtype=np.uint16)
    rgb = rng.integers(0, 255, (frames, 48, 40, 3), dtype=np.uint8)
    grey_path, rgb_path = tmp_path / "grey.ome.tif", tmp_path / "rgb.ome.tif"
    tifffile.imwrite(grey_path, grey, ome=True, metadata={"axes": "TCYX"}, compression="zlib", tile=(16, 16))
    tifffile.imwrite(rgb_path, rgb, ome=True, photometric="rgb", metadata={"axes": "TYXS"}, compression="zlib")
    image = TiffImage(grey_path)
    for frame, channel in ((0, 0), (frames - 1, 1), (37, 1)):
        page = frame * 2 + channel
        by_libvips = pyvips.Image.tiffload(str(grey_path), page=page, n=1).numpy()
        np.testing.assert_array_equal(image.plane_array(channel, frame), by_libvips)
        np.testing.assert_array_equal(image.plane(0, channel, frame).numpy(), grey[frame, channel])
    colour = TiffImage(rgb_path)
    np.testing.assert_array_equal(colour.plane_array(None, frames - 2), rgb[frames - 2])
    np.testing.assert_array_equal(colour.plane_array(1, 3), rgb[3, :, :, 1])
    # labelled as libvips labels them: a 16-bit RGB plane taken for 8-bit would be clipped by a colour conversion
    deep_path, white_path = tmp_path / "rgb16.ome.tif", tmp_path / "miniswhite.tif"
    tifffile.imwrite(deep_path, rgb.astype(np.uint16) * 257, ome=True, photometric="rgb",
                     metadata={"axes": "TYXS"})
    deep, by_libvips = TiffImage(deep_path).plane(0, None, 7), pyvips.Image.tiffload(str(deep_path), page=7, n=1)
    assert deep.interpretation == by_libvips.interpretation == "rgb16"
    assert deep.colourspace("b-w").avg() == pytest.approx(by_libvips.colourspace("b-w").avg())
    # colours libvips translates (min-is-white is inverted) stay with libvips
    tifffile.imwrite(white_path, grey[:, 0], photometric="miniswhite")
    np.testing.assert_array_equal(TiffImage(white_path).plane_array(0, 9),
                                  pyvips.Image.tiffload(str(white_path), page=9, n=1).numpy())
    with pytest.raises(InputError, match="has no frame"):
        image.plane_array(0, frames)

    damaged = tmp_path / "damaged.ome.tif"
    data = bytearray(grey_path.read_bytes())
    with tifffile.TiffFile(grey_path) as tif:
        offset = tif.pages[2 * 50].dataoffsets[0]
    data[offset:offset + 64] = bytes(64)  # the first tile of frame 50's channel 0: no longer a deflate stream
    damaged.write_bytes(bytes(data))
    with TiffImage(damaged) as reader:
        np.testing.assert_array_equal(reader.plane_array(0, 49), grey[49, 0])
        with pytest.raises(InputError, match=r"frame 50, channel 0.*could not be decoded") as error:
            reader.plane_array(0, 50)
    assert "damaged.ome.tif" in str(error.value)

"""--format ome-zarr and the reference in registered/<sample>/: OME-Zarr (NGFF 0.4) written tile by tile, read back
by ome-zarr (values of every level, channel names, scales); the reference rewritten beside its registered images;
outputs that are folders written and replaced atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from slimreg.atomic import atomic_output, remove_partials
from slimreg.completion import output_fingerprint
from slimreg.errors import ParameterError
from slimreg.io import probe, write_array
from slimreg.io.convert import rewrite_image
from slimreg.io.ngff import write_planes_zarr
from slimreg.io.read import TiffImage
from slimreg.io.vips import from_numpy
from slimreg.io.write import OmeMetadata
from slimreg.plan import PlanSettings, build_plan
from slimreg.register.settings import RegistrationSettings
from slimreg.samplesheet import read_samplesheet
from slimreg.tasks import execute

ome_zarr_reader = pytest.importorskip("ome_zarr.reader", reason="ome-zarr (the test extra) reads the OME-Zarr back")
ome_zarr_io = pytest.importorskip("ome_zarr.io")


def read_ome_zarr(path: Path) -> tuple[list[np.ndarray], dict]:
    """Every level as numpy, and the image node's metadata, as ome-zarr reads them."""
    node = next(iter(ome_zarr_reader.Reader(ome_zarr_io.parse_url(str(path)))()))
    return [np.asarray(level) for level in node.data], node.metadata


def tiff_levels(path: Path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as tif:
        return [level.asarray() for level in tif.series[0].levels]


def test_ome_zarr_reads_back_with_the_values_names_and_scales_of_the_ome_tiff(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 60000, (3, 700, 1100), dtype=np.uint16)  # not a multiple of the tile either way
    names = ("DAPI", "CD8", "CD4")
    tiff = write_array(planes, tmp_path / "r2.ome.tif", channel_names=names, pixel_size_um=(0.5, 0.5), tile_size=256)
    meta = OmeMetadata(1100, 700, "uint16", names, pixel_size_um=(0.5, 0.5), name="r2")
    zarr = write_planes_zarr([from_numpy(p) for p in planes], tmp_path / "r2.ome.zarr", meta, tile_size=256)
    levels, metadata = read_ome_zarr(zarr)
    assert metadata["channel_names"] == list(names) and metadata["name"] == "r2"
    assert np.array_equal(levels[0], planes)
    # the same pyramid as the OME-TIFF's (2 x 2 box mean), level by level, down to a 256 px overview
    expected = tiff_levels(tiff)
    assert len(levels) == len(expected) == 4 and max(levels[-1].shape[1:]) <= 256
    for level, (ours, theirs) in enumerate(zip(levels, expected, strict=True)):
        assert np.array_equal(ours, theirs), level
    scales = [t[0]["scale"] for t in metadata["coordinateTransformations"]]
    assert scales == [[1.0, 0.5 * 2**n, 0.5 * 2**n] for n in range(4)]
    attributes = json.loads((zarr / ".zattrs").read_text())["multiscales"][0]
    assert attributes["version"] == "0.4"
    assert [a["name"] for a in attributes["axes"]] == ["c", "y", "x"]
    assert attributes["axes"][2]["unit"] == "micrometer"
    # chunks are the tiles: one file per tile per channel, nothing else read or buffered
    assert json.loads((zarr / "0" / ".zarray").read_text())["chunks"] == [1, 256, 256]


def test_rgb_becomes_three_channels_and_frames_a_time_axis(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (300, 500, 3), dtype=np.uint8)
    meta = OmeMetadata(500, 300, "uint8", ("RGB",), is_rgb=True, name="he")
    levels, metadata = read_ome_zarr(write_planes_zarr([from_numpy(rgb)], tmp_path / "he.ome.zarr", meta,
                                                       tile_size=128, compression="zstd"))
    assert metadata["channel_names"] == ["R", "G", "B"]
    assert np.array_equal(levels[0], np.moveaxis(rgb, 2, 0))
    frames = rng.integers(0, 4000, (4, 2, 64, 96), dtype=np.uint16)  # t, c, y, x
    meta = OmeMetadata(96, 64, "uint16", ("GCaMP", "tdTom"), size_t=4, name="rec")
    planes = [from_numpy(frames[t, c]) for t in range(4) for c in range(2)]  # channels fastest, then time
    zarr = write_planes_zarr(planes, tmp_path / "rec.ome.zarr", meta, tile_size=64, compression="none")
    levels, metadata = read_ome_zarr(zarr)
    assert [a["name"] for a in metadata["axes"]] == ["t", "c", "y", "x"]
    assert np.array_equal(levels[0], frames)


def test_compressions_ome_zarr_readers_cannot_decode_are_refused(tmp_path: Path) -> None:
    meta = OmeMetadata(32, 32, "uint8", ("C0",))
    with pytest.raises(ParameterError, match="with --format ome-zarr"):
        write_planes_zarr([from_numpy(np.zeros((32, 32), np.uint8))], tmp_path / "x.ome.zarr", meta,
                          compression="lzw")
    assert not list(tmp_path.iterdir())


def test_a_zarr_is_replaced_whole_and_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    source = write_array(np.full((1, 64, 64), 7, np.uint8), tmp_path / "a.ome.tif", channel_names=["DAPI"])
    out = tmp_path / "out" / "a.ome.zarr"
    rewrite_image(source, out, image_format="ome-zarr", tile_size=64, compression="deflate")
    before = output_fingerprint(out)
    source = write_array(np.full((1, 64, 64), 9, np.uint8), tmp_path / "a.ome.tif", channel_names=["DAPI"])
    rewrite_image(source, out, image_format="ome-zarr", tile_size=64, compression="deflate")
    assert output_fingerprint(out) != before  # the chunks changed, so does the record --resume checks
    assert np.all(read_ome_zarr(out)[0][0] == 9)
    assert [p.name for p in out.parent.iterdir()] == ["a.ome.zarr"]  # the old one is gone, no partial left
    with pytest.raises(RuntimeError, match="boom"), atomic_output(out) as tmp:
        tmp.mkdir()
        (tmp / ".zgroup").write_text("{}")
        raise RuntimeError("boom")
    assert [p.name for p in out.parent.iterdir()] == ["a.ome.zarr"] and np.all(read_ome_zarr(out)[0][0] == 9)
    # a partial folder left by a killed writer is removed at the next run's start; a finished one is kept
    (out.parent / ".a.ome.partial-123-abcdef12.zarr" / "0").mkdir(parents=True)
    assert [p.name for p in remove_partials(out.parent)] == [".a.ome.partial-123-abcdef12.zarr"]
    assert out.is_dir()


def test_the_reference_is_planned_into_registered_in_the_runs_format(demo_sheet: Path, tmp_path: Path) -> None:
    sheet = read_samplesheet(demo_sheet)
    tiff = build_plan(sheet, tmp_path, RegistrationSettings.from_preset("low"), PlanSettings(merge_channels=True))
    references = {t.sample: t for t in tiff.tasks if t.kind == "publish"}
    assert sorted(references) == ["calcium", "he", "mif"]
    assert references["mif"].outputs == ["registered/mif/mif_round0.ome.tif"]
    assert references["mif"].inputs[0].endswith("mif_round0.ome.tif") and not references["mif"].depends_on
    assert references["mif"].peak_memory_bytes > 0
    zarr = build_plan(sheet, tmp_path, RegistrationSettings.from_preset("low"),
                      PlanSettings(merge_channels=True, output_format="ome-zarr"))
    publish = {t.outputs[0]: t for t in zarr.tasks if t.kind == "publish"}
    assert "registered/mif/mif_round0.ome.zarr" in publish and "merged/mif.ome.zarr" in publish
    # each registered image: REGISTER writes the OME-TIFF under work/ (QC reads it), a publish task converts it
    converted = publish["registered/mif/mif_round1.ome.zarr"]
    assert converted.inputs == ["work/mif/registered/mif_round1.ome.tif"]
    assert converted.depends_on == ["register-mif-b1"]
    qc = next(t for t in zarr.tasks if t.id == "qc-mif-mif_round1")
    assert "work/mif/registered/mif_round1.ome.tif" in qc.inputs
    assert publish["merged/mif.ome.zarr"].inputs == ["work/mif/merged/mif.ome.tif"]
    assert not [o for t in zarr.tasks for o in t.outputs if o.startswith("registered/") and o.endswith(".ome.tif")]
    with pytest.raises(ParameterError, match="ome-zarr"):
        build_plan(sheet, tmp_path, RegistrationSettings.from_preset("low", compression="lzw"),
                   PlanSettings(output_format="ome-zarr"))


@pytest.mark.parametrize("image_format", ["ome-tiff", "ome-zarr"])
def test_the_reference_task_writes_the_reference_beside_its_registered_images(demo_sheet: Path, tmp_path: Path,
                                                                               image_format: str) -> None:
    sheet = read_samplesheet(demo_sheet)
    plan = build_plan(sheet, tmp_path, RegistrationSettings.from_preset("low"),
                      PlanSettings(output_format=image_format))
    task = next(t for t in plan.tasks if t.kind == "publish" and t.sample == "he" and "reference" in t.id)
    execute(plan, task, tmp_path)
    source = TiffImage(task.inputs[0])
    out = tmp_path / task.outputs[0]
    if image_format == "ome-tiff":
        info = probe(out)
        assert info.is_rgb and (info.width, info.height) == (source.info.width, source.info.height)
        assert len(info.levels) > 1 and max(info.levels[-1]) <= 256  # a pyramid whatever the size
        assert np.array_equal(TiffImage(out).plane(0, None).numpy(), source.plane(0, None).numpy())
        with tifffile.TiffFile(out) as tif:
            assert 'Name="he_section0"' in tif.pages[0].description
    else:
        levels, metadata = read_ome_zarr(out)
        assert metadata["channel_names"] == ["R", "G", "B"] and metadata["name"] == "he_section0"
        assert np.array_equal(levels[0], np.moveaxis(source.plane(0, None).numpy(), 2, 0))

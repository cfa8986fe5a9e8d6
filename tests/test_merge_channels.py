"""--merge-channels: one multi-channel OME-TIFF per sample of fluorescence rounds, the reference round first, each
channel named by its round, streamed plane by plane (memory per plane: benchmarks/merge_channels.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slimreg.errors import InputError
from slimreg.io import probe, write_array
from slimreg.io.merge import merge_channels
from slimreg.io.read import TiffImage
from slimreg.kinds.channels import merged_planes
from slimreg.plan import PlanSettings, build_plan
from slimreg.register.settings import RegistrationSettings
from slimreg.samplesheet import read_samplesheet


def test_planes_are_named_by_round_and_the_nuclear_channel_kept_once() -> None:
    rounds = [("DAPI", "CD3"), ("CD8", "dapi"), ("DAPI", "CD20", "CD8")]
    assert [name for _, _, name in merged_planes(rounds, "DAPI", nuclear_once=False)] == \
        ["R1_DAPI", "R1_CD3", "R2_CD8", "R2_dapi", "R3_DAPI", "R3_CD20", "R3_CD8"]
    kept = merged_planes(rounds, "DAPI", nuclear_once=True)
    assert kept == [(0, 0, "R1_DAPI"), (0, 1, "R1_CD3"), (1, 0, "R2_CD8"), (2, 1, "R3_CD20"), (2, 2, "R3_CD8")]


def test_merged_image_holds_each_rounds_planes_in_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    first = rng.integers(0, 255, (2, 96, 80), dtype=np.uint8)
    second = rng.integers(0, 60000, (3, 96, 80), dtype=np.uint16)
    paths = [write_array(first, tmp_path / "r1.ome.tif", channel_names=["DAPI", "CD3"], pixel_size_um=(0.65, 0.65)),
             write_array(second, tmp_path / "r2.ome.tif", channel_names=["DAPI", "CD8", "CD20"])]
    planes = merged_planes([("DAPI", "CD3"), ("DAPI", "CD8", "CD20")], "DAPI", nuclear_once=True)
    out = merge_channels(paths, planes, tmp_path / "merged.ome.tif", tile_size=64, compression="deflate")
    info = probe(out)
    assert info.channel_names == ("R1_DAPI", "R1_CD3", "R2_CD8", "R2_CD20")
    assert info.dtype == "uint16" and info.pixel_size_um == (0.65, 0.65)  # uint8 and uint16 rounds: uint16
    merged = TiffImage(out)
    expected = [first[0], first[1], second[1], second[2]]
    for channel, plane in enumerate(expected):
        assert np.array_equal(merged.plane(0, channel).numpy(), plane.astype(np.uint16)), channel


def test_images_of_another_frame_or_modality_are_refused(tmp_path: Path) -> None:
    grey = write_array(np.zeros((1, 64, 64), np.uint8), tmp_path / "a.ome.tif", channel_names=["DAPI"])
    other = write_array(np.zeros((1, 64, 80), np.uint8), tmp_path / "b.ome.tif", channel_names=["DAPI"])
    rgb = write_array(np.zeros((64, 64, 3), np.uint8), tmp_path / "c.ome.tif", is_rgb=True)
    with pytest.raises(InputError, match="only images registered onto one reference"):
        merge_channels([grey, other], [(0, 0, "R1_DAPI"), (1, 0, "R2_DAPI")], tmp_path / "m.ome.tif", tile_size=64,
                       compression="deflate")
    with pytest.raises(InputError, match="only single-frame fluorescence rounds"):
        merge_channels([grey, rgb], [(0, 0, "R1_DAPI"), (1, 0, "R2_RGB")], tmp_path / "m.ome.tif", tile_size=64,
                       compression="deflate")
    assert not (tmp_path / "m.ome.tif").exists()


def test_the_plan_merges_fluorescence_rounds_and_says_why_it_does_not_merge_the_rest(demo_sheet: Path,
                                                                                    tmp_path: Path) -> None:
    plan = build_plan(read_samplesheet(demo_sheet), tmp_path, RegistrationSettings.from_preset("low"),
                      PlanSettings(merge_channels=True, merge_nuclear_once=True))
    merges = [task for task in plan.tasks if task.kind == "channels"]
    assert [task.sample for task in merges] == ["mif"]
    task = merges[0]
    assert task.outputs == ["merged/mif.ome.tif"]
    assert task.inputs[0].endswith("mif_round0.ome.tif") and task.inputs[1:] == [
        f"registered/mif/mif_round{n}.ome.tif" for n in (1, 2, 3)]
    assert task.depends_on == ["register-mif-b1"]
    names = [name for _, _, name in task.params["planes"]]
    assert names[0] == "R1_DAPI" and not [n for n in names[1:] if n.endswith("_DAPI")]
    assert any("sample he: not merged" in note and "brightfield" in note for note in plan.notes)
    assert any("sample calcium: not merged" in note and "recordings" in note for note in plan.notes)
    # memory is that of one plane, whatever the number of rounds
    assert task.peak_memory_bytes < next(t for t in plan.tasks if t.kind == "register").peak_memory_bytes

"""Plan: reference-plus-N batching, session chunking, and their bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from slimreg.chunking import plan_pieces, split_stack
from slimreg.errors import InputError, ParameterError
from slimreg.io import probe, read_region
from slimreg.plan import PlanSettings, build_plan
from slimreg.register.settings import RegistrationSettings
from slimreg.samplesheet import read_samplesheet

FEATURE = RegistrationSettings.from_preset("low", engine="feature")


def _sheet(folder: Path, rows: list[str]) -> Path:
    path = folder / "sheet.csv"
    path.write_text("sample,image,reference,session,landmarks\n" + "\n".join(rows) + "\n")
    return path


def _copies(demo_dir: Path, folder: Path, count: int, prefix: str = "img") -> list[str]:
    names = []
    for index in range(count):
        name = f"{prefix}{index}.ome.tif"
        shutil.copy(demo_dir / f"mif_round{index % 4}.ome.tif", folder / name)
        names.append(name)
    return names


def test_seven_moving_images_make_three_batches_with_the_reference(demo_dir: Path, tmp_path: Path) -> None:
    names = _copies(demo_dir, tmp_path, 8)
    sheet = _sheet(tmp_path, [f"s,{n},{str(i == 0).lower()},," for i, n in enumerate(names)])
    plan = build_plan(read_samplesheet(sheet), tmp_path / "out", FEATURE, PlanSettings(batch_size=3))
    registers = [t for t in plan.tasks if t.kind == "register"]
    assert [len(t.params["units"]) for t in registers] == [3, 3, 1]
    assert all(t.params["reference"] == str(tmp_path / "img0.ome.tif") for t in registers)
    assert [u["name"] for t in registers for u in t.params["units"]] == [f"img{i}" for i in range(1, 8)]
    assert len([t for t in plan.tasks if t.kind == "qc"]) == 7 and plan.tasks[-1].kind == "report"
    again = build_plan(read_samplesheet(sheet), tmp_path / "out", FEATURE, PlanSettings(batch_size=3))
    assert json.dumps(again.to_json(), sort_keys=True) == json.dumps(plan.to_json(), sort_keys=True)
    assert all(t.peak_memory_bytes > 0 for t in plan.tasks)


def test_several_samples_and_a_single_session_sample(demo_dir: Path, tmp_path: Path) -> None:
    names = _copies(demo_dir, tmp_path, 5)
    sheet = _sheet(tmp_path, [f"a,{names[0]},true,,", f"a,{names[1]},false,,", f"b,{names[2]},true,,",
                              f"b,{names[3]},false,,", f"b,{names[4]},false,,", "c,extra.ome.tif,true,,"])
    shutil.copy(demo_dir / "mif_round0.ome.tif", tmp_path / "extra.ome.tif")
    plan = build_plan(read_samplesheet(sheet), tmp_path / "out", FEATURE)
    assert {t.sample for t in plan.tasks if t.kind == "register"} == {"a", "b"}
    assert any("sample c" in note and "nothing to register" in note for note in plan.notes)
    json_path, csv_path = plan.write(tmp_path / "out")
    assert json.loads(json_path.read_text())["tasks"][0]["id"] == "register-a-b1"
    assert csv_path.read_text().splitlines()[0].startswith("id,kind,sample,peak_memory_bytes")


def test_long_stack_is_split_into_pieces_of_one_session(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 4000, (1000, 24, 32), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "long.ome.tif", frames, metadata={"axes": "TYX"})
    tifffile.imwrite(tmp_path / "other.ome.tif", frames[:50], metadata={"axes": "TYX"})
    sheet = _sheet(tmp_path, ["rec,other.ome.tif,true,s1,", "rec,long.ome.tif,false,s2,"])
    plan = build_plan(read_samplesheet(sheet), tmp_path / "out", FEATURE,
                      PlanSettings(max_frames=300, motion_correction="off"))
    assert not [t for t in plan.tasks if t.kind in ("template", "motion")]
    split = [t for t in plan.tasks if t.kind == "split"]
    assert len(split) == 1 and len(split[0].outputs) == 4
    assert [(p["start"], p["stop"]) for p in split[0].params["pieces"]] == [(0, 300), (300, 600), (600, 900),
                                                                             (900, 1000)]
    register = next(t for t in plan.tasks if t.kind == "register")
    (unit,) = register.params["units"]
    assert unit["name"] == "s2" and unit["apply_to"] == split[0].outputs  # one transform for all four pieces
    assert register.params["reference"].endswith("s1.projection.ome.tif")
    assert sorted(register.depends_on) == sorted(["project-rec-s1", "project-rec-s2", split[0].id])


def test_recordings_are_corrected_for_motion_in_pieces_against_one_template(tmp_path: Path) -> None:
    """--motion-correction (on by default): one template task per session, one motion task per piece of each
    recording (the reference's too, though it is never warped), and the corrected pieces are what the projection,
    REGISTER and the reference's publish tasks read; an RGB section or a single-frame image gets none."""
    frames = np.random.default_rng(0).integers(0, 4000, (1000, 24, 32), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "long.ome.tif", frames, metadata={"axes": "TYX"})
    tifffile.imwrite(tmp_path / "other.ome.tif", frames[:500], metadata={"axes": "TYX"})
    tifffile.imwrite(tmp_path / "still.ome.tif", frames[0], metadata={"axes": "YX"})
    sheet = _sheet(tmp_path, ["rec,other.ome.tif,true,s1,", "rec,long.ome.tif,false,s2,",
                              "rec,still.ome.tif,false,s2,"])
    plan = build_plan(read_samplesheet(sheet), tmp_path / "out", FEATURE,
                      PlanSettings(max_frames=300, motion_correction="piecewise"))
    by_id = {t.id: t for t in plan.tasks}
    assert [t.id for t in plan.tasks if t.kind == "template"] == ["template-rec-s1", "template-rec-s2"]
    assert by_id["template-rec-s2"].inputs == [str(tmp_path / "long.ome.tif")]  # the recording, not the still
    motion = [t for t in plan.tasks if t.kind == "motion"]
    assert [(t.id, t.params["start"], t.params["stop"]) for t in motion] == [
        ("motion-rec-other_b1", 0, 300), ("motion-rec-other_b2", 300, 500), ("motion-rec-long_b1", 0, 300),
        ("motion-rec-long_b2", 300, 600), ("motion-rec-long_b3", 600, 900), ("motion-rec-long_b4", 900, 1000)]
    assert all(t.params["mode"] == "piecewise" for t in motion)
    assert all(t.depends_on == ["template-rec-s1" if "-other_" in t.id else "template-rec-s2"] for t in motion)
    assert not [t for t in plan.tasks if t.kind == "split"]
    corrected = [t.outputs[0] for t in motion[2:]]
    assert by_id["project-rec-s2"].inputs == [*corrected, str(tmp_path / "still.ome.tif")]
    (unit,) = by_id["register-rec-b1"].params["units"]
    assert unit["apply_to"] == [*corrected, str(tmp_path / "still.ome.tif")]
    # each corrected piece's shifts go into the session's transform file: the register task reads them
    shifts = [t.outputs[1] for t in motion[2:]]
    assert all(path.endswith(".shifts.csv") for path in shifts)
    assert unit["frame_shifts"] == [*shifts, ""]
    assert unit["frame_sources"] == ["long.ome.tif"] * 4 + ["still.ome.tif"]
    assert unit["frame_starts"] == [0, 300, 600, 900, 0]
    assert set(shifts) <= set(by_id["register-rec-b1"].inputs)
    assert [by_id[f"publish-rec-reference-other_b{k}"].inputs for k in (1, 2)] == [[motion[0].outputs[0]],
                                                                                [motion[1].outputs[0]]]
    assert not [t for t in plan.tasks if t.kind == "merge"]  # without --merge-chunks the pieces stay pieces
    assert set(by_id["report"].inputs) >= {t.outputs[2] for t in motion}  # the report reads each motion record
    assert all(t.peak_memory_bytes > 0 and t.disk_bytes > 0 for t in motion)


def test_float32_corrected_frames_are_planned_and_estimated_at_their_size(demo_dir: Path, tmp_path: Path) -> None:
    """--motion-dtype float32 (the default): each motion task writes float32 frames, so its disk is the corrected
    piece at four bytes a pixel (no credit for compression: float32 is written without a predictor) and its pyramid,
    with no scratch copy of the recording beside it, and what reads the piece later is estimated from float32 frames
    too; --motion-dtype input plans the recording's own type."""
    sheet = read_samplesheet(_sheet(tmp_path, [f"rec,{demo_dir / 'calcium_s1.ome.tif'},true,,",
                                               f"rec,{demo_dir / 'calcium_s2_part1.ome.tif'},false,,"]))
    as_input = build_plan(sheet, tmp_path / "a", FEATURE, PlanSettings(motion_dtype="input"))
    as_float = build_plan(sheet, tmp_path / "b", FEATURE)
    motion_input = [t for t in as_input.tasks if t.kind == "motion"]
    motion_float = [t for t in as_float.tasks if t.kind == "motion"]
    assert {t.params["dtype"] for t in motion_input} == {"input"}
    assert {t.params["dtype"] for t in motion_float} == {"float32"}
    for narrow, wide in zip(motion_input, motion_float, strict=True):
        info = probe(narrow.inputs[0])
        float_bytes = (narrow.params["stop"] - narrow.params["start"]) * info.width * info.height * 4
        assert 2 * float_bytes > wide.disk_bytes >= float_bytes > narrow.disk_bytes
        assert wide.peak_memory_bytes >= narrow.peak_memory_bytes
    register = [(t for t in plan.tasks if t.kind == "register") for plan in (as_input, as_float)]
    assert next(register[1]).disk_bytes > next(register[0]).disk_bytes
    with pytest.raises(ParameterError, match="motion-dtype"):
        PlanSettings(motion_dtype="float64").validate()


def test_a_single_recording_is_corrected_and_published(demo_dir: Path, tmp_path: Path) -> None:
    """A sample of one recording has nothing to register, but its frames are still corrected and the corrected
    copy published (the commonest calcium-imaging case); with --motion-correction off it passes through."""
    sheet = _sheet(tmp_path, [f"rec,{demo_dir / 'calcium_s1.ome.tif'},true,,"])
    kinds = [t.kind for t in build_plan(read_samplesheet(sheet), tmp_path / "out", FEATURE).tasks]
    assert kinds == ["template", "motion", "publish", "report"]
    off = build_plan(read_samplesheet(sheet), tmp_path / "out", FEATURE, PlanSettings(motion_correction="off"))
    assert [t.kind for t in off.tasks] == ["report"] and "nothing to register" in off.notes[0]
    with pytest.raises(ParameterError, match="motion-correction"):
        PlanSettings(motion_correction="elastic").validate()
    # a long one: its pieces corrected as parallel tasks against the one template, written back as one stack with
    # --merge-chunks
    split = build_plan(read_samplesheet(sheet), tmp_path / "out", FEATURE, PlanSettings(max_frames=3,
                                                                                        merge_chunks=True))
    motion = [t for t in split.tasks if t.kind == "motion"]
    frames = probe(demo_dir / "calcium_s1.ome.tif").frames
    assert [(t.params["start"], t.params["stop"]) for t in motion] == [(k, min(k + 3, frames))
                                                                      for k in range(0, frames, 3)]
    assert len(motion) > 1 and all(t.depends_on == ["template-rec-calcium_s1"] for t in motion)
    (merge,) = [t for t in split.tasks if t.kind == "merge"]
    assert merge.inputs == [t.outputs[0] for t in motion]
    assert merge.outputs == ["registered/rec/calcium_s1.ome.tif"]


def test_split_is_lossless(tmp_path: Path) -> None:
    frames = np.random.default_rng(1).integers(0, 4000, (25, 20, 30), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.ome.tif", frames, metadata={"axes": "TYX"})
    pieces = plan_pieces(probe(tmp_path / "stack.ome.tif"), 10, tmp_path, "stack")
    split_stack(tmp_path / "stack.ome.tif", pieces)
    assert [probe(p.path).frames for p in pieces] == [10, 10, 5]
    assert np.array_equal(read_region(pieces[2].path, 0, 0, 30, 20, frame=4), frames[24])


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent (pytest, which has just made the stack)
SPLIT_PEAK = """
import sys
from pathlib import Path
from slimreg.chunking import plan_pieces, split_stack
from slimreg.io import probe
from slimreg.memory import process_high_water_bytes
info = probe(sys.argv[1])
split_stack(sys.argv[1], plan_pieces(info, 50, Path(sys.argv[2]), "s"))
print(process_high_water_bytes())
"""


@pytest.mark.slow
def test_split_memory_does_not_grow_with_frames(tmp_path: Path) -> None:
    peaks = {}
    for count in (100, 500):  # 2 pieces of 50 frames, then 10
        stack = np.random.default_rng(2).integers(0, 4000, (count, 256, 256), dtype=np.uint16)
        path = tmp_path / f"stack{count}.ome.tif"
        tifffile.imwrite(path, stack, metadata={"axes": "TYX"})
        del stack
        out = tmp_path / f"out{count}"
        out.mkdir()
        result = subprocess.run([sys.executable, "-c", SPLIT_PEAK, str(path), str(out)], capture_output=True,
                                text=True, check=True)
        peaks[count] = int(result.stdout.strip().splitlines()[-1])
    extra_data = 400 * 256 * 256 * 2  # 52 MB more frames: holding them would show
    assert peaks[500] - peaks[100] < extra_data / 4, peaks


def test_bad_plan_inputs(demo_dir: Path, tmp_path: Path) -> None:
    names = _copies(demo_dir, tmp_path, 2)
    sheet = read_samplesheet(_sheet(tmp_path, [f"s,{names[0]},true,,", f"s,{names[1]},false,,"]))
    with pytest.raises(ParameterError, match="--batch-size must be at least 1"):
        build_plan(sheet, tmp_path, FEATURE, PlanSettings(batch_size=0))
    with pytest.raises(ParameterError, match="--max-frames must be at least 1"):
        build_plan(sheet, tmp_path, FEATURE, PlanSettings(max_frames=0))
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((3, 20, 30), np.uint16), photometric="minisblack",
                     metadata={"axes": "TYX"})
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((3, 22, 30), np.uint16), photometric="minisblack",
                     metadata={"axes": "TYX"})
    shapes = read_samplesheet(_sheet(tmp_path, [f"s,{names[0]},true,,", "s,a.tif,false,x,", "s,b.tif,false,x,"]))
    with pytest.raises(InputError, match="same session"):
        build_plan(shapes, tmp_path, FEATURE)
    # a session name is each sample's own (two animals may each have a 'day1'): distinct tasks, distinct outputs
    for name in names[:2]:
        shutil.copy(tmp_path / name, tmp_path / f"t_{name}")
    shared = read_samplesheet(_sheet(tmp_path, [f"s,{names[0]},true,,", f"s,{names[1]},false,x,",
                                                f"t,t_{names[0]},true,,", f"t,t_{names[1]},false,x,"]))
    shared_plan = build_plan(shared, tmp_path, FEATURE)
    ids = [task.id for task in shared_plan.tasks]
    outputs = [output for task in shared_plan.tasks for output in task.outputs]
    assert len(ids) == len(set(ids)) and len(outputs) == len(set(outputs))
    assert {"qc-s-x", "qc-t-x"} <= set(ids)


def test_a_long_recordings_write_estimate_grows_by_what_the_writer_keeps_per_plane(tmp_path: Path) -> None:
    """The writer keeps about 1 KB per plane it has written (its pages' entries; docs/memory-model.md, "Many
    planes"): a 100 000-frame recording's estimate is its 1 000-frame estimate plus that, not half a megabyte a
    frame (50 GB, which the pre-flight refused)."""
    from dataclasses import replace

    from slimreg.estimate import write_bytes

    path = tmp_path / "rec.ome.tif"
    tifffile.imwrite(path, np.zeros((3, 512, 512), np.uint16), metadata={"axes": "TYX"})
    info = probe(path)
    short, long = (write_bytes(replace(info, frames=n, size_t=n), 1024) for n in (1_000, 100_000))
    assert 0 < (long - short) / 99_000 < 2048, (short, long)
    assert long < 200 * 1024**2


def test_a_merged_stack_named_like_an_image_of_its_session_is_refused(tmp_path: Path) -> None:
    """A session named like one of its (unsplit) recordings: its merged stack and that recording's corrected copy
    would both be registered/<sample>/<name>.ome.tif. One clear error naming the sheet, before anything runs; a
    still is never stacked onto the recordings."""
    frames = np.random.default_rng(0).integers(0, 4000, (8, 24, 32), dtype=np.uint16)
    for name in ("cal", "more"):
        tifffile.imwrite(tmp_path / f"{name}.ome.tif", frames, metadata={"axes": "TYX"})
    tifffile.imwrite(tmp_path / "still.ome.tif", frames[0], metadata={"axes": "YX"})
    clash = _sheet(tmp_path, ["rec,cal.ome.tif,true,cal,", "rec,more.ome.tif,false,cal,"])
    with pytest.raises(InputError, match=r"would both write registered/rec/cal\.ome\.tif") as refused:
        build_plan(read_samplesheet(clash), tmp_path / "out", FEATURE, PlanSettings(merge_chunks=True))
    assert refused.value.path == str(clash) and "session" in refused.value.fix
    stills = _sheet(tmp_path, ["rec,cal.ome.tif,true,s,", "rec,still.ome.tif,false,s,"])
    plan = build_plan(read_samplesheet(stills), tmp_path / "out", FEATURE, PlanSettings(merge_chunks=True))
    assert not [t for t in plan.tasks if t.kind == "merge"]

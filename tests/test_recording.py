"""A recording corrected for motion through the plan's tasks (slimreg.recording, kinds template and motion): pieces
corrected as separate tasks equal one task over the whole recording, every channel moves with the registration
channel, the demo's known shifts are found, and a single recording is corrected end to end by `slimreg run`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from slimreg.demo import demo_recording_shifts
from slimreg.errors import InputError
from slimreg.io import probe
from slimreg.recording import MotionOutputs, StackFrames, correct_recording, read_template, session_template
from slimreg.runner import run_job

DEMO_FRAMES = 12  # tests/conftest.py's demo


def _frames(path: Path) -> np.ndarray:
    """Every plane of an OME-TIFF's full-resolution series, (T, C, Y, X) or (T, Y, X)."""
    with tifffile.TiffFile(path) as tif:
        return tif.series[0].levels[0].asarray()


def _correct(path: Path, template: np.ndarray, start: int, stop: int, folder: Path, mode: str = "rigid",
             channel: int = 0) -> tuple[np.ndarray, list]:
    frames = StackFrames(path, channel, start, stop)
    outputs = MotionOutputs.in_folder(folder, f"f{start}-{stop}")
    result = correct_recording(frames, template, mode, outputs, name="piece", tile_size=128)
    return _frames(outputs.corrected), result.shifts


@pytest.mark.parametrize("mode", ["rigid", "piecewise"])
def test_pieces_corrected_apart_equal_the_recording_corrected_whole(demo_dir: Path, tmp_path: Path,
                                                                    mode: str) -> None:
    recording = demo_dir / "calcium_s1.ome.tif"
    template = session_template([StackFrames(recording, 0)])
    whole, whole_shifts = _correct(recording, template, 0, DEMO_FRAMES, tmp_path, mode)
    first, first_shifts = _correct(recording, template, 0, 5, tmp_path, mode)
    rest, rest_shifts = _correct(recording, template, 5, DEMO_FRAMES, tmp_path, mode)
    assert np.array_equal(np.concatenate([first, rest]), whole)
    assert [(s.dy, s.dx) for s in [*first_shifts, *rest_shifts]] == [(s.dy, s.dx) for s in whole_shifts]
    assert not np.array_equal(whole, _frames(recording))  # it did move them


def test_the_demo_recordings_known_shifts_are_found(demo_dir: Path, tmp_path: Path) -> None:
    recording = demo_dir / "calcium_s1.ome.tif"
    template = session_template([StackFrames(recording, 0)])
    _, shifts = _correct(recording, template, 0, DEMO_FRAMES, tmp_path)
    truth = demo_recording_shifts("calcium_s1", frames=DEMO_FRAMES)
    error = np.abs(np.array([[s.dy, s.dx] for s in shifts]) - truth)
    assert np.median(error) < 0.1 and error.max() < 0.3, error


def test_every_channel_moves_with_the_registration_channel(demo_dir: Path, tmp_path: Path) -> None:
    """A two-channel recording whose second channel is the first one inverted: corrected on channel 0, the second
    channel must stay the inverse of the corrected first (the same shift applied to both)."""
    grey = _frames(demo_dir / "calcium_s1.ome.tif").astype(np.uint16)
    both = np.stack([grey, (65535 - grey).astype(np.uint16)], axis=1)  # (T, C, Y, X)
    path = tmp_path / "two.ome.tif"
    tifffile.imwrite(path, both, metadata={"axes": "TCYX", "Channel": {"Name": ["GCaMP", "inverse"]}})
    template = session_template([StackFrames(path, 0)])
    corrected, _ = _correct(path, template, 0, DEMO_FRAMES, tmp_path, channel=0)
    assert corrected.shape == both.shape and probe(tmp_path / f"f0-{DEMO_FRAMES}.corrected.ome.tif").channel_names \
        == ("GCaMP", "inverse")
    inverse = 65535 - corrected[:, 0].astype(np.int64)
    assert np.abs(inverse - corrected[:, 1]).max() <= 1  # rounding of the interpolated values only


def test_the_qc_reads_back_the_registration_channel_of_what_was_written(demo_dir: Path, tmp_path: Path) -> None:
    """Corrected on channel 1 of two, in chunks that do not divide the recording: each frame's correlation with the
    corrected mean (CaImAn's QC, read back from the file written) must be that of the written channel-1 frame,
    not of channel 0 (noise here), and the one before of the raw channel-1 frame."""
    grey = _frames(demo_dir / "calcium_s1.ome.tif").astype(np.uint16)
    noise = np.random.default_rng(9).integers(0, 4000, grey.shape).astype(np.uint16)
    path = tmp_path / "two.ome.tif"
    tifffile.imwrite(path, np.stack([noise, grey], axis=1), metadata={"axes": "TCYX"})
    frames = StackFrames(path, 1)
    outputs = MotionOutputs.in_folder(tmp_path, "qc")
    result = correct_recording(frames, session_template([frames]), "rigid", outputs, name="qc", chunk_frames=5)
    written = _frames(outputs.corrected)[:, 1].astype(np.float64)

    def correlations(stack: np.ndarray) -> np.ndarray:
        mean = stack.mean(axis=0).ravel()
        return np.array([np.corrcoef(frame.ravel(), mean)[0, 1] for frame in stack])

    np.testing.assert_allclose(result.shifts.correlation_after, correlations(written), atol=1e-5)
    np.testing.assert_allclose(result.shifts.correlation_before, correlations(grey.astype(np.float64)), atol=1e-5)
    assert result.qc["mean_correlation_after"] > result.qc["mean_correlation_before"]


def test_a_template_of_another_size_and_frames_out_of_range_are_refused(demo_dir: Path, tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "t.tif", np.zeros((10, 10), np.float32))
    with pytest.raises(InputError, match="belongs to another session"):
        read_template(tmp_path / "t.tif", (128, 128))
    with pytest.raises(InputError, match="frames 0-99 asked for"):
        StackFrames(demo_dir / "calcium_s1.ome.tif", 0, 0, 99)


@pytest.mark.slow
def test_slimreg_run_corrects_a_single_recording(demo_dir: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(f"sample,image,reference\nrec,{demo_dir / 'calcium_s1.ome.tif'},true\n")
    out = tmp_path / "out"
    summary = run_job(sheet, out, engine="feature", preset="low")
    assert summary.ok
    published = out / "registered" / "rec" / "calcium_s1.ome.tif"
    assert _frames(published).shape == _frames(demo_dir / "calcium_s1.ome.tif").shape
    assert not np.array_equal(_frames(published), _frames(demo_dir / "calcium_s1.ome.tif"))
    with open(out / "transforms" / "rec" / "calcium_s1.shifts.csv") as handle:
        rows = list(csv.DictReader(handle))
    estimated = np.array([[float(r["dy"]), float(r["dx"])] for r in rows])
    assert np.median(np.abs(estimated - demo_recording_shifts("calcium_s1", frames=DEMO_FRAMES))) < 0.1
    record = json.loads((out / "qc" / "rec" / "calcium_s1.motion.json").read_text())
    assert record["qc"]["mean_correlation_after"] > record["qc"]["mean_correlation_before"]
    assert record["qc"]["crispness_after"] > record["qc"]["crispness_before"]
    page = (out / "report" / "report.html").read_text()
    assert "Motion correction" in page and "calcium_s1" in page[page.index('id="motion"'):]

    # long enough to be split: its pieces are corrected as parallel tasks against the one template, and with
    # --merge-chunks written back as one stack, the same frames as corrected in one task
    pieces = tmp_path / "pieces"
    assert run_job(sheet, pieces, engine="feature", preset="low", max_frames=5, merge_chunks=True).ok
    assert len(list((pieces / "transforms" / "rec").glob("calcium_s1_b*.shifts.csv"))) == -(-DEMO_FRAMES // 5)
    np.testing.assert_array_equal(_frames(pieces / "registered" / "rec" / "calcium_s1.ome.tif"), _frames(published))


def test_a_float32_corrected_recording_and_a_16_bit_still_of_one_session_project_and_merge(tmp_path: Path) -> None:
    """--motion-dtype float32 makes a session's corrected recording float32 while a still of the session keeps the
    samplesheet's type: the session's projection reads both, and its merged stack is float32, each frame as given."""
    from slimreg.chunking import merge_pieces, project_session

    rng = np.random.default_rng(0)
    frames = rng.normal(100, 30, (4, 32, 24)).astype(np.float32)
    frames[0, 0, 0] = -5.5  # an overshoot below zero that only a float file keeps
    still = rng.integers(0, 4000, (32, 24), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "rec.ome.tif", frames, metadata={"axes": "TYX"})
    tifffile.imwrite(tmp_path / "still.ome.tif", still, metadata={"axes": "YX"})
    pieces = [tmp_path / "rec.ome.tif", tmp_path / "still.ome.tif"]
    projection = tifffile.imread(project_session(pieces, tmp_path / "projection.ome.tif", channel=0, factor=1))
    expected = np.concatenate([frames, still[None].astype(np.float32)]).astype(np.float64)
    assert np.allclose(projection[0], expected.mean(0), atol=1e-3)
    assert np.allclose(projection[1], expected.max(0))
    merged = tifffile.imread(merge_pieces(pieces, tmp_path / "merged.ome.tif"))
    assert merged.dtype == np.float32 and merged.shape == (5, 32, 24)
    assert np.array_equal(merged[:4], frames) and np.array_equal(merged[4], still.astype(np.float32))

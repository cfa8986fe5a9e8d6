"""Per-frame motion correction (slimreg.motion, `slimreg motion-correct`) on real two-photon frames."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from scipy import ndimage

from slimreg.cli import main
from slimreg.errors import InputError, ParameterError
from slimreg.motion import PatchGrid, apply_shift, correlations_with
from slimreg.recording import correct_motion

MOVIE = Path(__file__).resolve().parents[2] / "shared" / "data" / "calcium-movie" / "sima_example.tif"
if not MOVIE.exists():
    MOVIE = Path("/work/shared/data/calcium-movie/sima_example.tif")
pytestmark = pytest.mark.skipif(not MOVIE.exists(), reason=f"real movie not found at {MOVIE}")


def real_frame(index: int = 5) -> np.ndarray:
    """One real frame of the two-photon movie (its own noise and cells), as float32."""
    with tifffile.TiffFile(MOVIE) as tif:
        return tif.pages[index].asarray().astype(np.float32)


def write_stack(path: Path, frames: list[np.ndarray], dtype=np.uint16) -> Path:
    """A one-frame-per-page TIFF; integer frames rounded and clipped."""
    with tifffile.TiffWriter(path) as writer:
        for frame in frames:
            out = np.clip(np.rint(frame), 0, 65535).astype(dtype) if np.dtype(dtype).kind == "u" else \
                frame.astype(dtype)
            writer.write(out, contiguous=False)
    return path


def centred_error(estimated: np.ndarray, true: np.ndarray) -> np.ndarray:
    """|estimate - truth| after removing the template's own offset (the template is built from the frames)."""
    diff = estimated - true
    return np.abs(diff - np.median(diff, axis=0))


def test_subpixel_moves_keep_the_frames_noise_and_integer_moves_are_exact():
    """A frame moved back by half a pixel keeps its noise (a bicubic warp leaves 72 % of white noise's standard
    deviation); a whole-pixel move is the frame's own pixels, the strip moved in from outside the frame's edge."""
    noise = np.random.default_rng(0).standard_normal((128, 256)).astype(np.float32)
    inside = (slice(20, -20), slice(20, -20))
    assert apply_shift(noise, 0.5, -0.5)[inside].std() / noise[inside].std() > 0.97
    frame = real_frame()
    moved = apply_shift(frame, 2, -3)
    expected = cv2.warpAffine(frame, np.float32([[1, 0, 3], [0, 1, -2]]), frame.shape[::-1],
                              flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
    np.testing.assert_allclose(moved, expected, atol=1e-2)


def test_a_fourier_move_neither_rings_from_the_frames_edges_nor_spreads_a_nan():
    """A brightness gradient across the frame (its opposite edges 200 counts apart) moved by half a pixel is the
    gradient moved (plain mirror padding left stripes of 1.5 counts near the edges); a NaN in a plane stays local."""
    gradient = np.tile(np.linspace(100, 300, 512, dtype=np.float32)[:, None], (1, 512))
    moved = apply_shift(gradient, 0.5, 0)
    assert np.abs(moved - (gradient + 0.5 * 200 / 511))[2:-4].max() < 0.1
    frame = real_frame()
    frame[10, 10] = np.nan
    assert np.isnan(apply_shift(frame, 0.5, 0.5)).sum() <= 16


def test_correlations_with_the_mean_are_pearsons_and_nan_for_flat_or_nan_frames():
    for frames in (np.stack([real_frame(i) for i in range(6)]), np.stack([real_frame(i) for i in range(6)]).astype(
            np.uint16)):
        mean = frames.mean(axis=0)
        expected = [np.corrcoef(f.ravel().astype(np.float64), mean.ravel().astype(np.float64))[0, 1]
                    for f in frames]
        np.testing.assert_allclose(correlations_with(mean, frames), expected, rtol=1e-9)
    odd = np.stack([np.full(mean.shape, 7.0), np.where(np.eye(*mean.shape, dtype=bool), np.nan, mean)])
    assert np.isnan(correlations_with(mean, odd)).all()


def test_rigid_recovers_known_subpixel_shifts(tmp_path):
    rng = np.random.default_rng(1)
    base = real_frame()
    truth = rng.uniform(-4, 4, size=(24, 2))
    frames = [ndimage.shift(base, d, order=3, mode="nearest") for d in truth]
    stack = write_stack(tmp_path / "rigid.tif", frames)
    result = correct_motion(stack, tmp_path / "out", mode="rigid", chunk_frames=5)
    estimated = np.array([[s.dy, s.dx] for s in result.shifts])
    error = centred_error(estimated, truth)
    assert np.median(error) < 0.1, error
    assert result.qc["mean_correlation_after"] > result.qc["mean_correlation_before"]
    assert result.qc["crispness_after"] > result.qc["crispness_before"]


def smooth_field(shape, amplitude, phase):
    """A smoothly varying displacement: a rigid part plus a half-sine across the frame."""
    rows, cols = np.indices(shape, dtype=np.float32)
    dy = amplitude[0] + 1.5 * np.sin(np.pi * cols / shape[1] + phase)
    dx = amplitude[1] + 1.5 * np.cos(np.pi * rows / shape[0] + phase)
    return dy.astype(np.float32), dx.astype(np.float32)


def test_piecewise_follows_smoothly_varying_shifts(tmp_path):
    rng = np.random.default_rng(2)
    base = real_frame()
    rows, cols = np.indices(base.shape, dtype=np.float32)
    fields = [smooth_field(base.shape, rng.uniform(-3, 3, 2), rng.uniform(0, np.pi)) for _ in range(16)]
    # content moved by (dy, dx): output(p) = base(p - d)
    frames = [cv2.remap(base, cols - dx, rows - dy, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
              for dy, dx in fields]
    stack = write_stack(tmp_path / "warped.tif", frames)
    result = correct_motion(stack, tmp_path / "out", mode="piecewise", chunk_frames=4)
    grid = PatchGrid.for_shape(base.shape)
    centres = [(y + grid.size // 2, x + grid.size // 2) for y in grid.starts_y for x in grid.starts_x]
    estimated = np.array([[[s.dy + s.patch_dy.ravel()[k], s.dx + s.patch_dx.ravel()[k]] for k in range(len(centres))]
                          for s in result.shifts])
    truth = np.array([[[dy[c], dx[c]] for c in centres] for dy, dx in fields])
    error = centred_error(estimated, truth)
    assert np.median(error) < 0.3, np.median(error)
    with open(tmp_path / "out" / "warped.shifts.csv") as handle:  # every patch's residual, one row per frame
        rows = list(csv.DictReader(handle))
    written = np.array([[float(r[f"patch_dy_{k}"]) for k in range(len(centres))] for r in rows])
    assert np.allclose(written, [s.patch_dy for s in result.shifts], atol=1e-4)
    rigid = correct_motion(stack, tmp_path / "rigid", mode="rigid")
    assert result.qc["mean_correlation_after"] > rigid.qc["mean_correlation_after"]


def test_cli_writes_readable_outputs_with_every_frame(tmp_path):
    """The real movie through the CLI's defaults: float32 frames, whose mean is crisper than the uncorrected one
    (written as the movie's uint16 it was less crisp: the clipped overshoots; docs/motion.md)."""
    code = main(["motion-correct", "--input", str(MOVIE), "--outdir", str(tmp_path), "--chunk-frames", "6"])
    assert code == 0
    with tifffile.TiffFile(tmp_path / "sima_example.corrected.ome.tif") as tif:
        data = tif.series[0].asarray()
    assert data.shape == (20, 128, 256) and data.dtype == np.float32
    with open(tmp_path / "sima_example.shifts.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["frame"]) for r in rows] == list(range(20))
    assert all(-1 <= float(r["correlation_after"]) <= 1 for r in rows)
    payload = json.loads((tmp_path / "sima_example.motion.json").read_text())
    assert payload["frames"] == 20 and payload["mode"] == "rigid" and payload["per_frame"] == "sima_example.shifts.csv"
    largest = max(np.hypot(float(r["dy"]), float(r["dx"])) for r in rows)
    assert payload["largest_shift_px"] == pytest.approx(largest, abs=1e-3)
    assert payload["qc"]["crispness_after"] > payload["qc"]["crispness_before"]
    assert payload["qc"]["mean_correlation_after"] > payload["qc"]["mean_correlation_before"]
    assert cv2.imread(str(tmp_path / "sima_example.motion.png")) is not None


def test_float32_output_keeps_what_the_recordings_own_type_clips(tmp_path):
    """float32 (the default): the moves written unrounded; with --dtype input the 16-bit file is that output rounded
    and clipped, and the clipped overshoots (below zero beside the movie's bright specks) make its mean less crisp."""
    as_input = correct_motion(MOVIE, tmp_path / "input", chunk_frames=8, dtype="input")
    as_float = correct_motion(MOVIE, tmp_path / "float", chunk_frames=8)
    assert as_float.dtype == "float32" and as_input.dtype == "uint16"
    assert [(s.dy, s.dx) for s in as_float.shifts] == [(s.dy, s.dx) for s in as_input.shifts]
    with tifffile.TiffFile(as_float.outputs["corrected"]) as tif:
        floats = tif.series[0].asarray()
    with tifffile.TiffFile(as_input.outputs["corrected"]) as tif:
        integers = tif.series[0].asarray()
    assert floats.dtype == np.float32 and floats.shape == integers.shape
    assert np.array_equal(np.clip(np.rint(floats), 0, 65535).astype(np.uint16), integers)
    assert (floats < -0.5).mean() > 0.01  # overshoots the 16-bit file sets to 0
    assert as_float.qc["crispness_after"] > as_input.qc["crispness_after"]
    assert json.loads(Path(as_float.outputs["json"]).read_text())["dtype"] == "float32"
    with pytest.raises(ParameterError, match="--dtype"):
        correct_motion(MOVIE, tmp_path / "bad", dtype="int8")


def test_blank_and_nan_frames_reported_and_not_moved(tmp_path):
    base = real_frame()
    frames = [ndimage.shift(base, (1.5 * (i % 3), -1.0), order=3, mode="nearest") for i in range(10)]
    frames[3] = np.zeros_like(base)
    frames[7] = np.full_like(base, np.nan)
    stack = write_stack(tmp_path / "gaps.tif", frames, dtype=np.float32)
    result = correct_motion(stack, tmp_path / "out", chunk_frames=4)
    assert result.blank_frames == [3] and result.nan_frames == [7]
    assert (result.shifts[3].dy, result.shifts[3].dx) == (0.0, 0.0)
    assert (result.shifts[7].dy, result.shifts[7].dx) == (0.0, 0.0)
    corrected = tifffile.imread(tmp_path / "out" / "gaps.corrected.ome.tif")
    assert not corrected[3].any()
    assert np.isnan(corrected[7]).all()
    assert np.isfinite(result.qc["mean_correlation_after"])


def test_size_change_mid_file_refused_naming_the_frame(tmp_path):
    base = real_frame()
    frames = [base, base, base[:100], base]
    stack = write_stack(tmp_path / "resized.tif", frames)
    with pytest.raises(InputError, match="frame 2 "):
        correct_motion(stack, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True
    assert main(["motion-correct", "--input", str(stack), "--outdir", str(tmp_path / "cli")]) == 2
    assert not (tmp_path / "cli").exists()

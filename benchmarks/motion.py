"""Motion correction benchmark (issue 40 items 1 and 5): `slimreg motion-correct` beside suite2p's registration.

Cases: the real two-photon movie (20 frames, 128 x 256), long recordings built from its real frames with known
shifts (rigid drift + jitter; smoothly varying across the frame), and 512 x 512 recordings of two lengths for
memory against length. Every run is a fresh process (benchmarks/_measure.py: peak RSS from VmHWM). suite2p runs in
its own venv (``--suite2p-python``; never a project dependency) on the same frames, on the CPU. A last table moves
the real movie's frames by slimreg's own shifts in several ways, to show how much of CaImAn's two numbers the
interpolation alone decides (docs/motion.md, "Interpolation").

    .venv/bin/python benchmarks/motion.py --frames 2000 --memory-frames 1000,4000 \
        --suite2p-python /tmp/s2p/bin/python
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._measure import HWM, measure_cli
from slimreg.motion import PatchGrid, apply_shift, build_template, crispness, frame_shifts, template_spectrum
from slimreg.options import DEFAULT_MOTION_DTYPE

MOVIE = Path(__file__).resolve().parents[2] / "shared" / "data" / "calcium-movie" / "sima_example.tif"
# largest known shift: within NoRMCorre's and suite2p's default search ranges (suite2p: 10 % of the frame)
MAX_SHIFT = 4.0

SUITE2P_SNIPPET = r"""
import json, sys, time, numpy as np, tifffile, torch
from suite2p.registration import register
frames = np.clip(tifffile.imread(sys.argv[1]), 0, 32767).astype(np.int16)
settings = dict(register.default_settings()); settings['torch_device'] = 'cpu'
reg = dict(settings['registration']); reg['nonrigid'] = sys.argv[2] == 'piecewise'
reg['nimg_init'] = min(400, len(frames))
reg['block_size'] = (64, 64) if min(frames.shape[1:]) < 256 else (128, 128)
settings['registration'] = reg; settings.update(reg)
torch.set_num_threads(2)
start = time.perf_counter()
out = register.registration_wrapper(frames, settings=settings, device=torch.device('cpu'))
seconds = time.perf_counter() - start
mean = frames.astype(np.float64).mean(0)
flat = mean.ravel() - mean.mean()
corr = [float(np.dot(f.ravel() - f.mean(), flat) / (np.linalg.norm(f.ravel() - f.mean()) * np.linalg.norm(flat)))
        for f in frames.astype(np.float64)]
gy, gx = np.gradient(mean)
print('S2P', json.dumps({'seconds': seconds, 'dy': np.asarray(out['yoff']).tolist(),
      'dx': np.asarray(out['xoff']).tolist(), 'corr': float(np.mean(corr)),
      'crisp': float(np.linalg.norm(np.hypot(gy, gx)))}), flush=True)
"""


def real_frames() -> np.ndarray:
    return tifffile.imread(MOVIE).astype(np.float32)


def moved(frame: np.ndarray, dy: np.ndarray | float, dx: np.ndarray | float) -> np.ndarray:
    """The frame's content moved by (dy, dx) (scalars or per-pixel fields), bicubic, borders replicated."""
    rows, cols = np.indices(frame.shape, dtype=np.float32)
    return cv2.remap(frame, (cols - dx).astype(np.float32), (rows - dy).astype(np.float32), cv2.INTER_CUBIC,
                     borderMode=cv2.BORDER_REPLICATE)


def rigid_path(count: int, rng: np.random.Generator) -> np.ndarray:
    """Slow drift plus frame-to-frame jitter, as in a head-fixed recording, within +/- MAX_SHIFT."""
    drift = np.cumsum(rng.normal(0, 0.15, (count, 2)), axis=0)
    drift = drift - drift.mean(0)
    drift = drift / max(np.abs(drift).max() / (MAX_SHIFT - 1), 1.0)
    return drift + rng.uniform(-1, 1, (count, 2))


def smooth_field(shape: tuple[int, int], offset: np.ndarray, phase: float) -> tuple[np.ndarray, np.ndarray]:
    """A rigid offset plus a 1.5 px half-sine across the frame (what a slow scan through a moving brain does)."""
    rows, cols = np.indices(shape, dtype=np.float32)
    return (offset[0] + 1.5 * np.sin(np.pi * cols / shape[1] + phase),
            offset[1] + 1.5 * np.cos(np.pi * rows / shape[0] + phase))


def build(path: Path, count: int, kind: str, size: tuple[int, int] | None = None, seed: int = 0) -> dict:
    """Write a recording of real frames (cycled; tiled to ``size``) moved by known amounts; return the truth."""
    rng = np.random.default_rng(seed)
    source = real_frames()
    if size:
        source = np.tile(source, (1, -(-size[0] // source.shape[1]), -(-size[1] // source.shape[2])))
        source = source[:, :size[0], :size[1]]
    path_shifts = rigid_path(count, rng)
    phases = rng.uniform(0, np.pi, count)
    truth: dict = {"rigid": path_shifts.tolist()} if kind == "rigid" else {"offsets": path_shifts.tolist(),
                                                                           "phases": phases.tolist()}
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        for i in range(count):
            frame = source[i % len(source)]
            if kind == "rigid":
                out = moved(frame, *path_shifts[i])
            else:
                out = moved(frame, *smooth_field(frame.shape, path_shifts[i], phases[i]))
            writer.write(np.clip(np.rint(out), 0, 65535).astype(np.uint16), contiguous=True)
    return truth


# the real frames are cycled: each carries its own real motion (up to 7 px in frame 0), the same in every copy
SOURCE_FRAMES = 20


def centred_median_error(estimated: np.ndarray, true: np.ndarray) -> float:
    """Median |estimate - truth| (per axis) after removing, per source frame, the offset that frame had in the
    real movie (constant over its copies; this also removes the template's own offset)."""
    diff = estimated - true
    for k in range(SOURCE_FRAMES):
        diff[k::SOURCE_FRAMES] -= np.median(diff[k::SOURCE_FRAMES], axis=0)
    return float(np.median(np.abs(diff)))


def read_shifts(csv_path: Path) -> list[dict]:
    """The per-frame rows of a shifts CSV: dy, dx and, in piecewise mode, every patch's residual."""
    import csv

    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    patches = sum(1 for column in (rows[0] if rows else {}) if column.startswith("patch_dy_"))
    return [{"dy": float(r["dy"]), "dx": float(r["dx"]),
             "patch_dy": [float(r[f"patch_dy_{k}"]) for k in range(patches)],
             "patch_dx": [float(r[f"patch_dx_{k}"]) for k in range(patches)]} for r in rows]


def slimreg_error(shifts: list[dict], truth: dict, shape: tuple[int, int], mode: str) -> float:
    """Rigid: frame shifts vs truth. Piecewise: rigid + patch shift at each patch centre vs the field there."""
    if "rigid" in truth:
        return centred_median_error(np.array([[s["dy"], s["dx"]] for s in shifts]), np.array(truth["rigid"]))
    if mode != "piecewise":
        return float("nan")
    grid = PatchGrid.for_shape(shape)
    centres = [(y + grid.size // 2, x + grid.size // 2) for y in grid.starts_y for x in grid.starts_x]
    est, true = [], []
    for s, offset, phase in zip(shifts, truth["offsets"], truth["phases"], strict=True):
        dy, dx = smooth_field(shape, np.array(offset), phase)
        pdy, pdx = np.ravel(s["patch_dy"]), np.ravel(s["patch_dx"])
        est.append([[s["dy"] + pdy[k], s["dx"] + pdx[k]] for k in range(len(centres))])
        true.append([[dy[c], dx[c]] for c in centres])
    return centred_median_error(np.array(est), np.array(true))


def run_slimreg(stack: Path, outdir: Path, mode: str, truth: dict | None, chunk: int,
                dtype: str = DEFAULT_MOTION_DTYPE) -> dict:
    result = measure_cli(["motion-correct", "--input", str(stack), "--outdir", str(outdir), "--mode", mode,
                          "--chunk-frames", str(chunk), "--dtype", dtype])
    if result["status"] != "ok":
        return {"status": result["status"]}
    stem = stack.name.split(".")[0]
    payload = json.loads((outdir / f"{stem}.motion.json").read_text())
    with tifffile.TiffFile(stack) as tif:
        shape = tif.pages[0].shape
    shifts = read_shifts(outdir / f"{stem}.shifts.csv")
    return {"status": "ok", "error": slimreg_error(shifts, truth, shape, mode) if truth else float("nan"),
            "corr_before": payload["qc"]["mean_correlation_before"], "corr": payload["qc"]["mean_correlation_after"],
            "crisp_before": payload["qc"]["crispness_before"], "crisp": payload["qc"]["crispness_after"],
            "fps": payload["frames"] / result["seconds"], "peak_mb": result["peak_mb"], "frames": payload["frames"]}


def _run_s2p_capture(python: str, stack: Path, mode: str, truth: dict | None, frames: int) -> dict:
    """suite2p in a fresh process: its shifts, CaImAn metrics of its output, seconds, peak RSS."""
    import subprocess
    import time

    start = time.perf_counter()
    proc = subprocess.run([python, "-c", SUITE2P_SNIPPET + "\n" + HWM, str(stack), mode], capture_output=True,
                          text=True, check=False, timeout=3600)
    seconds = time.perf_counter() - start
    s2p = [line for line in proc.stdout.splitlines() if line.startswith("S2P ")]
    hwm = [line for line in proc.stdout.splitlines() if line.startswith("MAXRSS_KB")]
    if proc.returncode != 0 or not s2p:
        return {"status": f"suite2p failed: {(proc.stderr.strip().splitlines() or [''])[-1][:120]}"}
    data = json.loads(s2p[-1][4:])
    # suite2p's yoff/xoff is how far the content moved (checked: content moved by +3 px in y gives yoff 3)
    est = np.stack([np.asarray(data["dy"]), np.asarray(data["dx"])], axis=1)
    error = centred_median_error(est, np.array(truth["rigid"])) if truth and "rigid" in truth else float("nan")
    return {"status": "ok", "error": error, "corr": data["corr"], "crisp": data["crisp"],
            "fps": frames / seconds, "fps_register_only": frames / data["seconds"],
            "peak_mb": int(hwm[-1].split()[1]) / 1024 if hwm else float("nan"), "frames": frames}


def row(name: str, tool: str, mode: str, r: dict) -> str:
    if r.get("status") != "ok":
        return f"| {name} | {tool} | {mode} | {r.get('status')} | | | | |"
    return (f"| {name} | {tool} | {mode} | {r['error']:.3f} | {r['corr']:.4f} | {r['crisp']:.0f} | "
            f"{r['fps']:.1f} | {r['peak_mb']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000, help="length of the known-shift recordings")
    parser.add_argument("--memory-frames", default="1000,10000", help="lengths of the memory runs")
    parser.add_argument("--memory-side", type=int, default=512,
                        help="frame side of the memory runs (64: 100 000 frames fit in 0.8 GB of disk)")
    parser.add_argument("--chunk-frames", type=int, default=100)
    parser.add_argument("--suite2p-python", default="", help="python of a venv with suite2p (optional)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="slimreg-motion-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    lines = ["| recording | tool | mode | median shift error px | mean corr. with mean | crispness | frames/s | "
             "peak RSS MB |", "|---|---|---|---|---|---|---|---|"]
    cases = [("real movie (20 x 128x256)", MOVIE, None)]
    for kind in ("rigid", "smooth"):
        stack = work / f"{kind}_{args.frames}.tif"
        truth = build(stack, args.frames, kind, seed=1 if kind == "rigid" else 2)
        cases.append((f"{kind} known shifts ({args.frames} x 128x256)", stack, truth))
    for name, stack, truth in cases:
        frames = len(tifffile.TiffFile(stack).pages)
        raw = real_frames() if truth is None else None
        if raw is not None:
            lines.append(f"| {name} | uncorrected | - | - | {_raw_corr(raw):.4f} | {crispness(raw.mean(0)):.0f} "
                         "| | |")
        for mode in ("rigid", "piecewise"):
            lines.append(row(name, f"slimreg ({DEFAULT_MOTION_DTYPE}, the default)", mode, run_slimreg(
                stack, work / f"out_{stack.stem}_{mode}", mode, truth, args.chunk_frames)))
            if raw is not None:  # the real movie: also as its own uint16 (--dtype input), which clips overshoots
                lines.append(row(name, "slimreg --dtype input", mode, run_slimreg(
                    stack, work / f"out_{stack.stem}_{mode}_input", mode, truth, args.chunk_frames, "input")))
            if args.suite2p_python:
                lines.append(row(name, "suite2p 1.1.0 (CPU)", mode,
                                 _run_s2p_capture(args.suite2p_python, stack, mode, truth, frames)))
            print("\n".join(lines[-3:]), flush=True)
    lines += ["", *interpolation_rows(real_frames())]
    print("\n".join(lines[-9:]), flush=True)
    side = args.memory_side
    lines += ["", f"| {side}x{side} frames | mode | peak RSS MB | frames/s | seconds |", "|---|---|---|---|---|"]
    for count in (int(c) for c in args.memory_frames.split(",")):
        stack = work / f"mem_{count}.tif"
        build(stack, count, "rigid", size=(side, side), seed=3)
        out = work / f"out_mem_{count}"
        result = measure_cli(["motion-correct", "--input", str(stack), "--outdir", str(out), "--chunk-frames",
                              str(args.chunk_frames)])
        lines.append(f"| {count} | rigid | {result['peak_mb']:.0f} | {count / result['seconds']:.1f} | "
                     f"{result['seconds']:.0f} |")
        print(lines[-1], flush=True)
        stack.unlink()
    print("\n".join(lines))


def interpolation_rows(frames: np.ndarray) -> list[str]:
    """The real movie moved back by slimreg's own shifts (rigid, and piecewise for the last row) through several
    interpolations: each frame's correlation with the mean and the mean's crispness, whole frame, on the float frames
    and on the frames as a uint16 file holds them (negative overshoots clipped to 0)."""
    template = build_template(lambda index: frames[index], len(frames), MOVIE)
    grid = PatchGrid.for_shape(frames.shape[1:])
    shifts = frame_shifts(frames, 0, template_spectrum(template), template, grid)

    def warp(frame: np.ndarray, dy: float, dx: float, flag: int) -> np.ndarray:
        return cv2.warpAffine(frame, np.float32([[1, 0, -dx], [0, 1, -dy]]), frame.shape[::-1], flags=flag,
                              borderMode=cv2.BORDER_REPLICATE)

    def piecewise_bilinear(frame: np.ndarray, shift) -> np.ndarray:
        rows, cols = np.indices(frame.shape, dtype=np.float32)
        return cv2.remap(frame, cols + shift.dx + grid.field(shift.patch_dx), rows + shift.dy +
                         grid.field(shift.patch_dy), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    ways = {"not moved": lambda f, s: f,
            "whole pixels (shifts rounded)": lambda f, s: warp(f, round(s.dy), round(s.dx), cv2.INTER_NEAREST),
            "bilinear": lambda f, s: warp(f, s.dy, s.dx, cv2.INTER_LINEAR),
            "bicubic": lambda f, s: warp(f, s.dy, s.dx, cv2.INTER_CUBIC),
            "Lanczos": lambda f, s: warp(f, s.dy, s.dx, cv2.INTER_LANCZOS4),
            "Fourier phase ramp (slimreg)": lambda f, s: apply_shift(f, s.dy, s.dx),
            "piecewise field, bilinear": piecewise_bilinear}
    rows = ["| frames moved by | corr. with mean, float | crispness, float | corr. with mean, as written (uint16) | "
            "crispness, as written |", "|---|---|---|---|---|"]
    for name, move in ways.items():
        out = np.stack([move(frame, shift) for frame, shift in zip(frames, shifts, strict=True)])
        written = np.clip(np.rint(out), 0, 65535)  # what the corrected file holds (the movie is uint16)
        rows.append(f"| {name} | {_raw_corr(out):.4f} | {crispness(out.mean(0)):.0f} | {_raw_corr(written):.4f} | "
                    f"{crispness(written.mean(0)):.0f} |")
    return rows


def _raw_corr(frames: np.ndarray) -> float:
    mean = frames.mean(0).ravel()
    return float(np.mean([np.corrcoef(f.ravel(), mean)[0, 1] for f in frames]))


if __name__ == "__main__":
    main()

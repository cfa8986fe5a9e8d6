"""Motion correction against recording length at full frame size (issue 40's memory target: the peak at 100 000
frames of 512 x 512 within 10 % of the peak at 1000), `slimreg motion-correct` in a fresh process (peak VmHWM).

A 100 000-frame recording of 512 x 512 uint16 is 52 GB, more than a work machine's free disk beside its output. The
input is therefore a BigTIFF whose pages share their pixel data: ``--pool`` distinct frames (the real movie's frames
resized to 512 px, each moved by a known rigid shift) are stored once, and page ``i`` points at frame ``i % pool``.
Every page is a complete, ordinary TIFF page (uncompressed, one strip); a reader cannot tell that pages repeat, so
slimreg reads, corrects and writes every frame. The output is written for real (deflate), so the disk must hold it.

    .venv/bin/python benchmarks/motion_length.py --workdir /tmp/motion_length --frames 1000 100000 --dtype input

(``--dtype input`` writes the recording's uint16: 43 GB at 100 000 frames; the default float32 needs about 94 GB.)
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._measure import measure_cli
from benchmarks.motion import centred_median_error, moved, read_shifts, real_frames, rigid_path
from slimreg.options import DEFAULT_MOTION_DTYPE, MOTION_DTYPES

# (tag, TIFF type, value) of every page; StripOffsets (273) and StripByteCounts (279) are filled in per page
SHORT, LONG, LONG8 = 3, 4, 16


def pool_frames(count: int, side: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` real frames (cycled, resized to ``side``) moved by known rigid shifts: (frames uint16, shifts).
    Resized, not tiled: a tiled frame repeats every 128 px, and phase correlation cannot tell a shift from one
    period more (a first run of this script, tiled, had a median error of 64 px)."""
    source = np.stack([cv2.resize(frame, (side, side), interpolation=cv2.INTER_CUBIC) for frame in real_frames()])
    shifts = rigid_path(count, np.random.default_rng(seed))
    frames = np.stack([np.clip(np.rint(moved(source[i % len(source)], *shifts[i])), 0, 65535).astype(np.uint16)
                       for i in range(count)])
    return frames, shifts


def write_repeating_tiff(path: Path, pool: np.ndarray, pages: int) -> None:
    """A little-endian BigTIFF of ``pages`` grey uint16 pages; page ``i`` holds ``pool[i % len(pool)]``."""
    count, height, width = pool.shape
    frame_bytes = height * width * 2
    entries = 10
    ifd_bytes = 8 + entries * 20 + 8
    data_start = 16
    first_ifd = data_start + count * frame_bytes
    with open(path, "wb") as handle:
        handle.write(b"II" + struct.pack("<HHHQ", 43, 8, 0, first_ifd))
        handle.write(np.ascontiguousarray(pool, "<u2").tobytes())
        for page in range(pages):
            offset = first_ifd + page * ifd_bytes
            following = offset + ifd_bytes if page + 1 < pages else 0
            tags = [(256, LONG, width), (257, LONG, height), (258, SHORT, 16), (259, SHORT, 1), (262, SHORT, 1),
                    (273, LONG8, data_start + (page % count) * frame_bytes), (277, SHORT, 1), (278, LONG, height),
                    (279, LONG8, frame_bytes), (339, SHORT, 1)]
            block = struct.pack("<Q", entries)
            for tag, kind, value in tags:
                packed = struct.pack({SHORT: "<H", LONG: "<I", LONG8: "<Q"}[kind], value).ljust(8, b"\0")
                block += struct.pack("<HHQ", tag, kind, 1) + packed
            handle.write(block + struct.pack("<Q", following))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--frames", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--pool", type=int, default=1000, help="distinct frames the pages repeat (a multiple of 20)")
    parser.add_argument("--chunk-frames", type=int, default=100)
    parser.add_argument("--dtype", choices=MOTION_DTYPES, default=DEFAULT_MOTION_DTYPE,
                        help="the corrected frames' type (motion-correct --dtype)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    pool, shifts = pool_frames(args.pool, args.side, seed=3)
    print(f"| frames ({args.side} x {args.side}, written as {args.dtype}) | peak RSS MB | seconds | frames/s | "
          "output GB | median shift error px | status |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for frames in args.frames:
        stack = args.workdir / f"repeating_{frames}.tif"
        write_repeating_tiff(stack, pool, frames)
        out = args.workdir / f"out_{frames}"
        started = time.time()
        result = measure_cli(["motion-correct", "--input", str(stack), "--outdir", str(out), "--chunk-frames",
                              str(args.chunk_frames), "--dtype", args.dtype])
        if result["status"] == "ok":
            corrected = out / f"{stack.name.split('.')[0]}.corrected.ome.tif"
            estimated = np.array([[s["dy"], s["dx"]] for s in read_shifts(out / f"{stack.stem}.shifts.csv")])
            truth = shifts[np.arange(frames) % args.pool]
            error = centred_median_error(estimated, truth)
            size = corrected.stat().st_size / 1e9
            corrected.unlink()
        else:
            error = size = float("nan")
        print(f"| {frames} | {result['peak_mb']:.1f} | {result['seconds']:.0f} | {frames / result['seconds']:.1f} | "
              f"{size:.2f} | {error:.3f} | {result['status']} (started {time.ctime(started)}) |", flush=True)
        stack.unlink()


if __name__ == "__main__":
    main()

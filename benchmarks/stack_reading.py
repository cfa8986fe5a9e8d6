"""Reading a recording's frames one at a time, against its length: libvips' tiffload (which walks every page of the
file to count them, each time a page is opened) beside ``TiffImage.plane_array`` (one tifffile handle, page offsets
kept once seen), on OME-TIFF stacks of random 64 x 64 uint16 frames (deflate). Small frames show the per-open cost
alone; the decode of a frame is the same either way.

    .venv/bin/python benchmarks/stack_reading.py --workdir /tmp/stack_reading --frames 1000 20000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyvips
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from slimreg.io.read import TiffImage

SAMPLES = 20  # frames read, spread over the recording


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--frames", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument("--side", type=int, default=64)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"| frames ({args.side} px) | libvips tiffload, ms a frame | TiffImage.plane_array, ms a frame "
          "| same pixels |")
    print("|---|---|---|---|", flush=True)
    rng = np.random.default_rng(0)
    for count in args.frames:
        path = args.workdir / f"stack_{count}.ome.tif"
        stack = rng.integers(0, 4000, (count, args.side, args.side), dtype=np.uint16)
        tifffile.imwrite(path, stack, ome=True, metadata={"axes": "TYX"}, compression="zlib")
        picks = list(range(0, count, max(1, count // SAMPLES)))[:SAMPLES]
        started = time.perf_counter()
        by_libvips = [pyvips.Image.tiffload(str(path), page=i, n=1).numpy() for i in picks]
        libvips_ms = (time.perf_counter() - started) / len(picks) * 1e3
        image = TiffImage(path)  # probed before the clock starts, as a task does once
        started = time.perf_counter()
        by_slimreg = [image.plane_array(0, i) for i in picks]
        slimreg_ms = (time.perf_counter() - started) / len(picks) * 1e3
        same = all(np.array_equal(a, b) for a, b in zip(by_libvips, by_slimreg, strict=True))
        print(f"| {count} | {libvips_ms:.1f} | {slimreg_ms:.2f} | {same} |", flush=True)
        image.close()
        path.unlink()


if __name__ == "__main__":
    main()

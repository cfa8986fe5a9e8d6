"""Peak memory and time of --merge-channels' merge as the number of rounds grows (issue: memory must not grow with
the number of rounds or channels).

Makes N rounds of 4 uint16 channels at SIZE px (smooth, compressible content; the rounds are already in one frame,
as registered rounds are), then merges them into one OME-TIFF in a fresh process and reads that process's peak
RSS (benchmarks/_measure.py). Prints one table row per round count.

    .venv/bin/python benchmarks/merge_channels.py --rounds 3 10 30 --size 2048
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks._measure import measure_snippet
from slimreg.io import write_array

CHANNELS = ("DAPI", "M1", "M2", "M3")


def make_round(folder: Path, number: int, size: int) -> Path:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    planes = [(30000 * (1 + np.sin(7 * xx * (c + 1) + number) * np.cos(5 * yy + c))).astype(np.uint16)
              for c in range(len(CHANNELS))]
    return write_array(np.stack(planes), folder / f"round{number}.ome.tif", channel_names=list(CHANNELS),
                       tile_size=512)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, nargs="+", default=[3, 10, 30])
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="slimreg-merge-bench-") as work:
        folder = Path(work)
        paths = [make_round(folder, number, args.size) for number in range(max(args.rounds))]
        print(f"{args.size} x {args.size} px, {len(CHANNELS)} uint16 channels per round, tile 1024, deflate")
        print("| rounds | planes written | peak RSS (MB) | seconds | output (MB) |")
        print("|---|---|---|---|---|")
        for rounds in args.rounds:
            out = folder / f"merged{rounds}.ome.tif"
            code = (
                "from pathlib import Path\n"
                "from slimreg.io.merge import merge_channels\n"
                "from slimreg.kinds.channels import merged_planes\n"
                f"paths = [Path(p) for p in {[str(p) for p in paths[:rounds]]!r}]\n"
                f"planes = merged_planes([{CHANNELS!r}] * {rounds}, 'DAPI', nuclear_once=False)\n"
                f"merge_channels(paths, planes, Path({str(out)!r}), tile_size=1024, compression='deflate')\n")
            result = measure_snippet(code)
            size = out.stat().st_size / 1024**2 if out.exists() else float("nan")
            print(f"| {rounds} | {rounds * len(CHANNELS)} | {result['peak_mb']:.0f} | {result['seconds']:.1f} | "
                  f"{size:.0f} |" + ("" if result["status"] == "ok" else f" {result['status']}"))


if __name__ == "__main__":
    main()

"""Peak memory and time of writing one large image as OME-TIFF and as OME-Zarr (--format), at several sizes.

The image is a lazy libvips pipeline (a uint16 pattern computed from pixel coordinates, so nothing is read from
disk and no source file is needed); each writer renders it block by block into its pyramid, in a fresh process
whose peak RSS is read (benchmarks/_measure.py). The writers' memory should be set by the tile size, not by the
image's size, and the same for both formats. Prints one table row per size and format.

    .venv/bin/python -m benchmarks.output_formats --sizes 5000 20000 --channels 1
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks._measure import measure_snippet

WRITERS = {"ome-tiff": ("slimreg.io.write", "write_planes", ".ome.tif"),
           "ome-zarr": ("slimreg.io.ngff", "write_planes_zarr", ".ome.zarr")}


def snippet(image_format: str, size: int, channels: int, out: Path) -> str:
    module, function, _ = WRITERS[image_format]
    return (
        "import pyvips\n"
        f"from {module} import {function} as write\n"
        "from slimreg.io.write import OmeMetadata\n"
        "def plane(c):\n"
        f"    def build():\n"
        f"        xy = pyvips.Image.xyz({size}, {size})\n"
        "        x, y = xy[0], xy[1]\n"
        "        return ((x * (3 + c) + y * 5) % 4093 + (x ^ y) % 61).cast('ushort')\n"
        "    return build\n"
        f"meta = OmeMetadata({size}, {size}, 'uint16', tuple(f'C{{c}}' for c in range({channels})),"
        " pixel_size_um=(0.5, 0.5), name='bench')\n"
        f"write([plane(c) for c in range({channels})], {str(out)!r}, meta, compression='deflate', tile_size=1024)\n")


def disk_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 1024**2
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1024**2 if path.exists() else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--formats", nargs="+", default=list(WRITERS), choices=list(WRITERS))
    args = parser.parse_args()
    print(f"uint16, {args.channels} channel(s), tile (chunk) 1024, deflate (zlib), pyramid to a 256 px overview")
    print("| size (px) | format | peak RSS (MB) | seconds | on disk (MB) |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        for image_format in args.formats:
            with tempfile.TemporaryDirectory(prefix="slimreg-format-bench-") as work:
                out = Path(work) / f"bench{WRITERS[image_format][2]}"
                result = measure_snippet(snippet(image_format, size, args.channels, out))
                status = "" if result["status"] == "ok" else f" {result['status']}"
                print(f"| {size} | {image_format} | {result['peak_mb']:.0f} | {result['seconds']:.1f} | "
                      f"{disk_mb(out):.0f} |{status}", flush=True)


if __name__ == "__main__":
    main()

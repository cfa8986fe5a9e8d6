#!/usr/bin/env python3
"""REGISTER memory and speed (issue: REGISTER benchmark). Every number is one fresh process's peak RSS.

1. Feature engine on a 4-channel uint16 image pair series (reference + 3) and an RGB pair: peak of the whole
   batch (`slimreg register`) and of the warp step alone (a saved transform applied with the streamed warp).
2. The valis engine next to VALIS used plainly (its defaults, a pyvips reader, its own warp_and_save_slides) on
   the same pair, in the same run: peak RSS and wall time of both.
3. Warp throughput (megapixels per second over all channels) next to a plain libvips re-encode of the same file
   (one pyramidal ``tiffsave`` of all its pages: the I/O floor, with libvips' own memory use for comparison).
4. Flatness: warp-step peak RSS as an RGB image grows from 5000 to 30000 px a side.

    .venv/bin/python benchmarks/register.py --workdir /tmp/bench-register            # all of it (long)
    .venv/bin/python benchmarks/register.py --sizes 4000 --rgb-size 5000 --flat 2000 4000 --skip-valis
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import measure_cli, measure_snippet

from slimreg.demo import make_pair
from slimreg.io import probe

WARP_SNIPPET = """
from slimreg.io.read import TiffImage
from slimreg.transform import Transform
from slimreg.warp import warp_file
moving = TiffImage({moving!r})
transform = Transform.load({transform!r})
warp_file(moving, transform, {out!r}, reference_shape=transform.reference_shape, pixel_size_um=None,
          tile_size={tile}, compression={compression!r})
"""
REENCODE_SNIPPET = """
import pyvips
pyvips.cache_set_max(0)
image = pyvips.Image.new_from_file({moving!r}, n=-1, access="sequential")
image.tiffsave({out!r}, tile=True, tile_width={tile}, tile_height={tile}, pyramid=True, subifd=True, bigtiff=True,
               compression={compression!r}, predictor="horizontal")
"""
VALIS_PLAIN_SNIPPET = """
import warnings; warnings.filterwarnings("ignore")
from slimreg.register.valis_offline import import_valis
registration = import_valis()
from valis import feature_detectors, feature_matcher, slide_io
registrar = registration.Valis({src!r}, {dst!r}, img_list=[{reference!r}, {moving!r}], reference_img_f={reference!r},
    align_to_reference=True, feature_detector_cls=None,
    matcher=feature_matcher.Matcher(feature_detector=feature_detectors.VggFD()),
    matcher_for_sorting=feature_matcher.Matcher(feature_detector=feature_detectors.VggFD()))
rigid, non_rigid, error = registrar.register(reader_cls=slide_io.VipsSlideReader)
assert rigid is not None, "VALIS register() failed"
registrar.warp_and_save_slides({dst!r} + "/registered", crop="reference")
"""


def pair(folder: Path, size: int, *, moving_count: int, rgb: bool = False, width: int | None = None,
         channels: int = 4) -> tuple[Path, list[Path]]:
    """Generated inputs, reused when a previous run left them (30000 px images take minutes to make)."""
    stem = f"{'rgb' if rgb else 'mif'}{size}"
    existing = [folder / f"{stem}_{i}.ome.tif" for i in range(moving_count + 1)]
    if all(p.is_file() for p in existing):
        return existing[0], existing[1:]
    # low noise keeps 20000-30000 px inputs compressible (the demo's noise makes a 20000 px 4-channel file 3.7 GB)
    return make_pair(folder, size, channels=channels, rgb=rgb, width=width, moving_count=moving_count, noise=40)


def megapixels(path: Path) -> float:
    info = probe(path)
    return info.width * info.height * (1 if info.is_rgb else info.channels) / 1e6


def feature_case(label: str, reference: Path, moving: list[Path], out: Path, args: argparse.Namespace) -> list[str]:
    lines = []
    batch = measure_cli(["register", "--engine", "feature", "--preset", args.preset, "--reference", str(reference),
                         "--moving", *map(str, moving), "--outdir", str(out / "feature"), "--tile-size",
                         str(args.tile), "--compression", args.compression], timeout=args.timeout)
    lines.append(f"| {label} | feature: reference + {len(moving)} batch | {batch['peak_mb']:.0f} | "
                 f"{batch['seconds']:.0f} | {batch['status']} |")
    transform = out / "feature" / f"{moving[0].name.removesuffix('.ome.tif')}.transform.json"
    if transform.is_file():
        warp = measure_snippet(WARP_SNIPPET.format(moving=str(moving[0]), transform=str(transform),
                                                   out=str(out / "warp.ome.tif"), tile=args.tile,
                                                   compression=args.compression), timeout=args.timeout)
        floor = measure_snippet(REENCODE_SNIPPET.format(moving=str(moving[0]), out=str(out / "reencode.ome.tif"),
                                                        tile=args.tile, compression=args.compression),
                                timeout=args.timeout)
        mp = megapixels(moving[0])
        lines.append(f"| {label} | warp step (one image) | {warp['peak_mb']:.0f} | {warp['seconds']:.0f} | "
                     f"{mp / warp['seconds']:.1f} MP/s |")
        lines.append(f"| {label} | plain libvips re-encode (I/O floor) | {floor['peak_mb']:.0f} | "
                     f"{floor['seconds']:.0f} | {mp / floor['seconds']:.1f} MP/s |")
        for leftover in (out / "warp.ome.tif", out / "reencode.ome.tif"):
            leftover.unlink(missing_ok=True)
    shutil.rmtree(out / "feature", ignore_errors=True)  # outputs are measured, not kept: disk is finite
    return lines


def valis_case(label: str, reference: Path, moving: Path, out: Path, args: argparse.Namespace) -> list[str]:
    ours = measure_cli(["register", "--engine", "valis", "--preset", args.preset, "--reference", str(reference),
                        "--moving", str(moving), "--outdir", str(out / "valis"), "--tile-size", str(args.tile)],
                       timeout=args.timeout)
    plain = measure_snippet(VALIS_PLAIN_SNIPPET.format(src=str(reference.parent), dst=str(out / "valis_plain"),
                                                       reference=str(reference), moving=str(moving)),
                            timeout=args.timeout)
    shutil.rmtree(out / "valis", ignore_errors=True)
    shutil.rmtree(out / "valis_plain", ignore_errors=True)
    return [f"| {label} | slimreg valis engine (pair) | {ours['peak_mb']:.0f} | {ours['seconds']:.0f} | "
            f"{ours['status']} |",
            f"| {label} | VALIS used plainly (pair, own warp_and_save_slides) | {plain['peak_mb']:.0f} | "
            f"{plain['seconds']:.0f} | {plain['status']} |"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/slimreg-bench-register"))
    parser.add_argument("--sizes", type=int, nargs="*", default=[20000], help="4-channel uint16 image sides")
    parser.add_argument("--rgb-size", type=int, nargs=2, default=[25000, 30000], metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--flat", type=int, nargs="+", default=[5000, 10000, 20000, 30000])
    parser.add_argument("--preset", default="medium")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--compression", default="deflate")
    parser.add_argument("--skip-valis", action="store_true")
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    table = ["| image | step | peak RSS MB | wall s | note |", "|---|---|---|---|---|"]
    for size in args.sizes:
        folder = args.workdir / f"mif{size}"
        reference, moving = pair(folder, size, moving_count=3)
        table += feature_case(f"{size}x{size} 4ch uint16", reference, moving, folder, args)
        if not args.skip_valis:
            table += valis_case(f"{size}x{size} 4ch uint16", reference, moving[0], folder, args)
        print("\n".join(table), file=sys.stderr, flush=True)
    height, width = args.rgb_size
    folder = args.workdir / f"rgb{width}x{height}"
    reference, moving = pair(folder, height, width=width, rgb=True, moving_count=1)
    table += feature_case(f"{width}x{height} RGB", reference, moving, folder, args)
    flat = []
    for side in args.flat:
        folder = args.workdir / f"flat{side}"
        reference, (moving,) = pair(folder, side, moving_count=1, rgb=True)
        result = measure_cli(["register", "--engine", "feature", "--preset", "low", "--reference", str(reference),
                              "--moving", str(moving), "--outdir", str(folder / "out"), "--tile-size", str(args.tile)],
                             timeout=args.timeout)
        transform = folder / "out" / f"{moving.name.removesuffix('.ome.tif')}.transform.json"
        warp = measure_snippet(WARP_SNIPPET.format(moving=str(moving), transform=str(transform),
                                                   out=str(folder / "warp.ome.tif"), tile=args.tile,
                                                   compression=args.compression), timeout=args.timeout)
        floor = measure_snippet(REENCODE_SNIPPET.format(moving=str(moving), out=str(folder / "reencode.ome.tif"),
                                                        tile=args.tile, compression=args.compression),
                                timeout=args.timeout)
        flat.append((side, warp["peak_mb"], warp["seconds"], floor["peak_mb"], floor["seconds"],
                     megapixels(moving), result["status"]))
        shutil.rmtree(folder, ignore_errors=True)
    table += ["", "| side px (RGB) | warp-step peak RSS MB | wall s | MP/s | libvips re-encode peak MB | MP/s |",
              "|---|---|---|---|---|---|"]
    table += [f"| {side} | {peak:.0f} | {seconds:.0f} | {mp / seconds:.1f} | {floor_peak:.0f} | "
              f"{mp / floor_seconds:.1f} |" for side, peak, seconds, floor_peak, floor_seconds, mp, _ in flat]
    peaks = [row[1] for row in flat]
    table.append(f"\nwarp peak grows {max(peaks) / min(peaks):.2f}x from {args.flat[0]} to {args.flat[-1]} px "
                 "(target: within 1.25x)")
    print("\n".join(table))
    (args.workdir / "register_benchmark.json").write_text(json.dumps({"table": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Estimated vs measured peak RSS per step and image size (issue: pre-flight accuracy).

For each size, generates a 4-channel uint16 reference + moving pair and a 24-frame stack, plans a run, then
executes every task of the plan in a fresh process (`slimreg run-task`) and compares its measured peak RSS
(ru_maxrss) with the plan's estimate. Target: 1.0 <= estimate / measured <= 1.5.

    .venv/bin/python benchmarks/preflight_accuracy.py --sizes 2000 8000 20000 --workdir /tmp/bench
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import measure_cli

from slimreg.demo import make_pair
from slimreg.io.vips import from_numpy
from slimreg.io.write import OmeMetadata, write_planes
from slimreg.plan import Plan, PlanSettings, build_plan
from slimreg.register.settings import RegistrationSettings
from slimreg.samplesheet import read_samplesheet


def make_stack(path: Path, side: int, frames: int) -> Path:
    rng = np.random.default_rng(0)
    base = from_numpy(rng.random((64, 64)).astype(np.float32)).resize(side / 64, kernel="cubic")
    planes = [((base * 40000) + 2000 + i * 50).cast("ushort") for i in range(frames)]
    return write_planes(planes, path, OmeMetadata(side, side, "uint16", ("GCaMP",), (1.0, 1.0), size_t=frames),
                        tile_size=512)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 20000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/slimreg-bench-preflight"))
    parser.add_argument("--engine", default="feature", choices=("feature", "valis"))
    parser.add_argument("--preset", default="medium")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        folder = args.workdir / str(size)
        reference, moving = folder / f"mif{size}_0.ome.tif", folder / f"mif{size}_1.ome.tif"
        if not (reference.is_file() and moving.is_file()):  # generating 20000 px inputs takes minutes: reuse
            reference, (moving,) = make_pair(folder, size, channels=4)
        side = min(size // 4, 2048)
        for name in ("stack_a.ome.tif", "stack_b.ome.tif"):
            if not (folder / name).is_file():
                make_stack(folder / name, side, 24)
        sheet = folder / "samplesheet.csv"
        sheet.write_text("sample,image,reference,session,landmarks\n"
                         f"slide,{reference.name},true,,\nslide,{moving.name},false,,\n"
                         "rec,stack_a.ome.tif,true,a,\nrec,stack_b.ome.tif,false,b,\n")
        settings = RegistrationSettings.from_preset(args.preset, engine=args.engine)
        out = folder / "out"
        plan = build_plan(read_samplesheet(sheet), out, settings, PlanSettings(max_frames=10))
        (out / "pipeline_info").mkdir(parents=True, exist_ok=True)
        plan_path, _ = plan.write(out / "pipeline_info")
        plan = Plan.load(plan_path)
        for task in plan.tasks:
            result = measure_cli(["run-task", "--plan", str(plan_path), "--task", task.id])
            estimate_mb = task.peak_memory_bytes / 1024**2
            measured = result["peak_mb"]
            ratio = estimate_mb / measured if result["status"] == "ok" else float("nan")
            rows.append((task.kind, task.id, size, estimate_mb, measured, ratio, result["seconds"], result["status"]))
            print(f"  {task.id} ({size} px): estimate {estimate_mb:.0f} MB, measured {measured:.0f} MB, "
                  f"{result['status']}", file=sys.stderr, flush=True)
    print(f"\nengine {args.engine}, preset {args.preset}; estimate / measured should lie in [1.0, 1.5]\n")
    print("| step | task | size px | estimated MB | measured MB | ratio | s | in band |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, task_id, size, estimate, measured, ratio, seconds, status in rows:
        band = "yes" if 1.0 <= ratio <= 1.5 else ("-" if status != "ok" else "NO")
        print(f"| {kind} | {task_id} | {size} | {estimate:.0f} | {measured:.0f} | {ratio:.2f} | {seconds:.1f} | "
              f"{band} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

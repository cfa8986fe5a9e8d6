"""Motion correction's memory, estimated against measured (issue 40): the template and motion tasks of a recording
run as `slimreg run` runs them (`slimreg run-task` on the written plan, each in a fresh process, peak from VmHWM),
beside the plan's estimate; frame size and length varied. Recordings are random texture moved by a few px.

    .venv/bin/python benchmarks/motion_memory.py --workdir /tmp/motion_memory --sizes 512 1024 2048 --frames 60 \
        --long 512:2000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._measure import measure_cli
from slimreg.plan import PlanSettings, build_plan
from slimreg.register.settings import RegistrationSettings
from slimreg.samplesheet import read_samplesheet


def recording(path: Path, frames: int, size: int) -> Path:
    rng = np.random.default_rng(size)
    base = (rng.random((size, size)) * 4000).astype(np.uint16)
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as writer:
        writer.write((np.roll(base, (i % 3, i % 5), (0, 1)) for i in range(frames)), shape=(frames, size, size),
                     dtype=np.uint16, metadata={"axes": "TYX"})
    return path


def measure(workdir: Path, frames: int, size: int, mode: str) -> list[str]:
    case = workdir / f"{size}px_{frames}f_{mode}"
    case.mkdir(parents=True, exist_ok=True)
    image = recording(case / "rec.ome.tif", frames, size)
    sheet = case / "samples.csv"
    sheet.write_text(f"sample,image,reference\nrec,{image},true\n")
    root = case / "out"
    plan = build_plan(read_samplesheet(sheet), root, RegistrationSettings.from_preset("medium"),
                      PlanSettings(motion_correction=mode))
    plan_path, _ = plan.write(root / "pipeline_info")
    rows = []
    for task in plan.tasks:
        if task.kind not in ("template", "motion"):
            continue
        result = measure_cli(["run-task", "--plan", str(plan_path), "--task", task.id, "--root", str(root)])
        estimate = task.peak_memory_bytes / 1024**2
        rows.append(f"| {size} x {size} | {frames} | {mode} | {task.kind} | {estimate:.0f} | {result['peak_mb']:.0f} | "
                    f"{estimate / result['peak_mb']:.2f} | {result['seconds']:.0f} | {result['status']} |")
        print(rows[-1], flush=True)
    image.unlink()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--modes", nargs="+", default=["rigid", "piecewise"])
    parser.add_argument("--long", nargs="*", default=[], help="SIZE:FRAMES cases, rigid only (memory against length)")
    args = parser.parse_args()
    print("| frame | frames | mode | task | estimated MB | measured MB | ratio | seconds | status |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for size in args.sizes:
        for mode in args.modes:
            measure(args.workdir, args.frames, size, mode)
    for case in args.long:
        size, frames = (int(part) for part in case.split(":"))
        measure(args.workdir, frames, size, "rigid")


if __name__ == "__main__":
    main()

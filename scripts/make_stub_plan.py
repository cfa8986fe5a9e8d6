#!/usr/bin/env python3
"""Write assets/stub/plan.csv and samplesheet.csv: the plan of the pipeline's test profile, for the stubs.

`nextflow run . -profile test -stub` (and the nf-test stub test) must reach every process. PLAN's stub cannot
plan (stubs write no images), so it writes this committed plan instead: the real plan of the test profile's demo
data, made as the pipeline makes it (each file's header read by `slimreg probe`, then `slimreg plan --headers`),
so its files are named by the samplesheet's text. DEMO_DATA's stub writes the demo samplesheet and an empty file
for each name in it, so that PROBE runs and every task's sources are found. tests/test_stub_plan.py rebuilds both
and fails when they go stale:

    .venv/bin/python scripts/make_stub_plan.py            # rewrite the fixtures
    .venv/bin/python scripts/make_stub_plan.py --check    # exit 1 if they differ from a fresh plan
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "assets" / "stub" / "plan.csv"
SHEET_FIXTURE = ROOT / "assets" / "stub" / "samplesheet.csv"
# the test profile (conf/test.config) over the pipeline's defaults (nextflow.config)
TEST_PROFILE_ARGS = ["--engine", "feature", "--preset", "low", "--max-frames", "5", "--merge-chunks",
                     "--merge-channels", "--batch-size", "3", "--tile-size", "1024", "--compression", "deflate",
                     "--qc-max-dim", "2048"]
DEMO_SIZE, DEMO_FRAMES = 512, 12  # DEMO_DATA's arguments under the test profile


def stub_fixtures() -> tuple[str, str]:
    """The test profile's plan.csv (as the pipeline plans it, from headers) and its demo samplesheet."""
    sys.path.insert(0, str(ROOT))
    from slimreg.cli import main
    from slimreg.samplesheet import read_samplesheet

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        quiet = io.StringIO()
        sheet = work / "demo" / "samplesheet.csv"
        with redirect_stdout(quiet), redirect_stderr(quiet):
            status = main(["demo-data", str(work / "demo"), "--size", str(DEMO_SIZE), "--frames", str(DEMO_FRAMES)])
            rows = read_samplesheet(sheet, probe_images=False).rows
            given = sorted({r.image.name for r in rows} | {r.landmarks.name for r in rows if r.landmarks})
            for index, name in enumerate(given, start=1):
                status = status or main(["probe", "--file", str(work / "demo" / name), "--given", name, "--out",
                                         str(work / "headers" / str(index) / "header.json")])
            status = status or main(["plan", "--input", str(sheet), "--headers", str(work / "headers"), "--outdir",
                                     str(work / "plan"), *TEST_PROFILE_ARGS])
        if status:
            raise SystemExit(f"planning the demo failed:\n{quiet.getvalue()[-2000:]}")
        return (work / "plan" / "plan.csv").read_text(), sheet.read_text()


DISK_TOLERANCE = 0.01  # disk estimates follow the demo files' compressed sizes, which zlib versions change by bytes


def same_plan(committed: str, fresh: str) -> bool:
    """The same tasks, inputs, outputs and memory estimates; disk estimates within DISK_TOLERANCE."""
    old, new = list(csv.DictReader(io.StringIO(committed))), list(csv.DictReader(io.StringIO(fresh)))
    if len(old) != len(new) or (old and old[0].keys() != new[0].keys()):
        return False
    for before, after in zip(old, new, strict=True):
        if "disk_bytes" in before:
            disk_before, disk_after = int(before.pop("disk_bytes")), int(after.pop("disk_bytes"))
            if abs(disk_before - disk_after) > DISK_TOLERANCE * max(disk_before, disk_after, 1):
                return False
        if before != after:
            return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed fixture is stale")
    args = parser.parse_args()
    fresh = dict(zip((FIXTURE, SHEET_FIXTURE), stub_fixtures(), strict=True))
    if args.check:
        stale = [path for path, text in fresh.items() if not path.is_file() or not same_plan(path.read_text(), text)]
        for path in stale:
            print(f"{path} is stale: run scripts/make_stub_plan.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in fresh.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

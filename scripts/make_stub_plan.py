#!/usr/bin/env python3
"""Write assets/stub/plan.csv: the plan of the pipeline's test profile, for PLAN's stub.

`nextflow run . -profile test -stub` (and the nf-test stub test) must reach every process. PLAN's stub cannot
plan (the demo data's stub writes no images), so it writes this committed plan instead: the real plan of the
test profile's demo data, with each input reduced to its file name (stubs read nothing, and a bare name is not
staged). tests/test_stub_plan.py rebuilds it and fails when it goes stale:

    .venv/bin/python scripts/make_stub_plan.py            # rewrite the fixture
    .venv/bin/python scripts/make_stub_plan.py --check    # exit 1 if it differs from a fresh plan
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
# the test profile (conf/test.config) over the pipeline's defaults (nextflow.config)
TEST_PROFILE_ARGS = ["--engine", "feature", "--preset", "low", "--max-frames", "5", "--merge-chunks",
                     "--batch-size", "3", "--tile-size", "1024", "--compression", "deflate", "--qc-max-dim", "2048"]
DEMO_SIZE, DEMO_FRAMES = 512, 12  # DEMO_DATA's arguments under the test profile


def stub_plan_csv() -> str:
    """The test profile's plan.csv, inputs reduced to file names."""
    sys.path.insert(0, str(ROOT))
    from slimreg.cli import main

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        quiet = io.StringIO()
        with redirect_stdout(quiet), redirect_stderr(quiet):
            demo_status = main(["demo-data", str(work / "demo"), "--size", str(DEMO_SIZE),
                                "--frames", str(DEMO_FRAMES)])
            plan_status = main(["plan", "--input", str(work / "demo" / "samplesheet.csv"), "--outdir",
                                str(work / "plan"), *TEST_PROFILE_ARGS])
        if demo_status or plan_status:
            raise SystemExit(f"planning the demo failed:\n{quiet.getvalue()[-2000:]}")
        rows = list(csv.DictReader((work / "plan" / "plan.csv").open()))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        row["inputs"] = ";".join(Path(item).name if item.startswith("/") else item
                                 for item in row["inputs"].split(";") if item)
        writer.writerow(row)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed fixture is stale")
    args = parser.parse_args()
    fresh = stub_plan_csv()
    if args.check:
        if not FIXTURE.is_file() or FIXTURE.read_text() != fresh:
            print(f"{FIXTURE} is stale: run scripts/make_stub_plan.py", file=sys.stderr)
            return 1
        return 0
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(fresh)
    print(f"wrote {FIXTURE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

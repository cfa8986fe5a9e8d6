"""Run the Nextflow pipeline as a user would, under a real Nextflow (scripts/nextflow), and check what it writes.

Each check is one run of `nextflow run` on this machine's local executor, with the project's environment on PATH
(no container), then a look at the published results:

- stub: the test profile with -stub reaches every process of the plan;
- test: the test profile for real writes every output the README promises, and every QC passes;
- resume: the same again with -resume re-runs nothing (every task CACHED in the trace);
- failure: a sample with an image that cannot register (a blank slide) beside a good one, and a second sample
  whose session has the same name: the run ends non-zero, the good image is registered and checked, the report
  lists the failure first and shows each sample its own QC picture;
- singles: a sheet of single-image samples: nothing to register, the report is still written;
- http: a samplesheet served over HTTP from a loopback server, naming its images relative to its own folder
  (through `..`): the code path cloud storage takes (a Path resolved on the sheet's file system), for real.

Usage: python scripts/check_pipeline.py [--workdir DIR] [--only NAME ...]. Prints one line per check and a closing
'N passed, N failed' line; exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
NEXTFLOW = ROOT / "scripts" / "nextflow"
RUN_LIMIT_SECONDS = 900  # a run of the test profile takes about 3 minutes on 2 cores


class CheckFailed(AssertionError):
    """A promise of the pipeline that a run did not keep."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def nextflow(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """One `nextflow run` of this checkout, its output kept in cwd/nextflow.out for a reader of a failure."""
    environment = {**os.environ, **(env or {})}
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    done = subprocess.run([str(NEXTFLOW), "run", str(ROOT), "-ansi-log", "false", *args], cwd=cwd, text=True,
                          capture_output=True, env=environment, timeout=RUN_LIMIT_SECONDS)
    (cwd / "nextflow.out").write_text(done.stdout + done.stderr)
    return done


def trace(results: Path) -> list[dict[str, str]]:
    """The newest execution trace of a results folder, one row per task attempt."""
    newest = max((results / "pipeline_info").glob("execution_trace_*.txt"), key=lambda p: p.stat().st_mtime)
    with newest.open() as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def process_names(rows: list[dict[str, str]]) -> set[str]:
    return {row["name"].split(" ")[0].split(":")[-1] for row in rows}


def metrics(results: Path) -> list[dict[str, str]]:
    with (results / "report" / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def demo_data(folder: Path, size: int = 256) -> Path:
    """The demo series at a small size (real files, so every process does real work)."""
    if not (folder / "samplesheet.csv").is_file():
        subprocess.run([str(Path(sys.executable).parent / "slimreg"), "demo-data", str(folder), "--size", str(size),
                        "--frames", "4"], check=True, capture_output=True)
    return folder


def blank_slide(path: Path, size: int = 256) -> Path:
    """An empty glass slide: nothing to register it by."""
    tifffile.imwrite(path, np.full((size, size, 3), 242, np.uint8), photometric="rgb")
    return path


def write_sheet(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["sample", "image", "reference", "session", "landmarks"])
        writer.writeheader()
        writer.writerows(rows)
    return path


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Requests are not news."""


@contextlib.contextmanager
def loopback_server(folder: Path) -> Iterator[str]:
    """A static HTTP server on 127.0.0.1 serving ``folder``; stopped when the block ends."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------------- the checks


def check_stub(work: Path) -> str:
    done = nextflow(["-profile", "test", "-stub", "--outdir", "results"], work)
    expect(done.returncode == 0, f"stub run exited {done.returncode}")
    plan = (ROOT / "assets" / "stub" / "plan.csv").read_text().splitlines()[1:]
    from slimreg.kinds import KINDS

    kinds = {name: kind.process for name, kind in KINDS.items()}
    wanted = {kinds[line.split(",")[1]] for line in plan} | {"DEMO_DATA", "PROBE", "PLAN"}
    rows = trace(work / "results")
    ran = process_names(rows)
    expect(wanted <= ran, f"processes that did not run: {sorted(wanted - ran)}")
    return f"{len(rows)} tasks, every process of the plan"


def published(path: Path) -> bool:
    """A file, or an OME-Zarr folder with its metadata (dot files, which Nextflow skips unless told)."""
    return path.is_file() or (path.suffix == ".zarr" and (path / ".zattrs").is_file()
                              and any((path / "0").rglob("*")))


def check_test_profile(work: Path) -> str:
    done = nextflow(["-profile", "test", "--outdir", "results"], work)
    expect(done.returncode == 0, f"test profile exited {done.returncode}: {done.stdout[-2000:]}")
    results = work / "results"
    with (results / "pipeline_info" / "plan.csv").open() as handle:
        plan = list(csv.DictReader(handle))
    # every output but the intermediates (split pieces, motion templates, recordings corrected for motion and
    # unregistered projections stay in Nextflow's work folders: publishing them would double a long recording's
    # disk use; REGISTER and PUBLISH_IMAGE publish them in the reference frame), the report and the tasks' own logs
    promised = [output for row in plan if row["kind"] not in ("split", "template", "project")
                for output in row["outputs"].split(";") if output
                and not (row["kind"] == "motion" and output.startswith("work/"))
                and not output.endswith(".memory.json") and not output.startswith("report/")]
    missing = [output for output in promised if not published(results / output)]
    expect(not missing, f"outputs the plan promises but the run did not publish: {missing}")
    for name in ("report/report.html", "report/metrics.csv", "report/slimreg_mqc.tsv",
                 "pipeline_info/preflight.json", "pipeline_info/plan.json", "pipeline_info/software_versions.yml"):
        expect((results / name).is_file(), f"{name} missing")
    expect(len(list((results / "pipeline_info" / "task_specs").glob("*.json"))) == len(plan),
           "pipeline_info/task_specs/ should hold one spec per task")
    corrected = [row["id"] for row in plan if row["kind"] == "motion"]
    page = (results / "report" / "report.html").read_text()
    expect(corrected and 'id="motion"' in page and page.count("<tr><td>calcium</td>") == len(corrected),
           f"the report should list each of the {len(corrected)} recordings corrected for motion")
    rows = metrics(results)
    qc_tasks = [row for row in plan if row["kind"] == "qc"]
    expect(len(rows) == len(qc_tasks), f"{len(rows)} report rows for {len(qc_tasks)} QC tasks")
    expect(all(row["status"] == "pass" for row in rows), f"QC verdicts: {[(r['image'], r['status']) for r in rows]}")
    registered = sorted(p.relative_to(results).as_posix() for p in (results / "registered").rglob("*.ome.tif"))
    return f"{len(promised)} outputs published, {len(rows)} QC pass ({', '.join(registered[:3])}, ...)"


def check_resume(work: Path) -> str:
    expect((work / "results" / "report" / "report.html").is_file(), "needs the test profile's run first")
    done = nextflow(["-profile", "test", "--outdir", "results", "-resume"], work)
    expect(done.returncode == 0, f"-resume exited {done.returncode}")
    rows = trace(work / "results")
    rerun = [row["name"] for row in rows if row["status"] != "CACHED"]
    expect(not rerun, f"re-run on -resume: {rerun}")
    return f"{len(rows)} tasks, all CACHED"


def check_failure(work: Path) -> str:
    data = demo_data(work / "data")
    blank_slide(data / "blank.tif")
    sheet = write_sheet(work / "failure.csv", [
        {"sample": "he", "image": "data/he_section0.ome.tif", "reference": "true", "session": "",
         "landmarks": "data/he_section0.landmarks.csv"},
        {"sample": "he", "image": "data/blank.tif", "reference": "false", "session": "s1", "landmarks": ""},
        {"sample": "he", "image": "data/he_section1.ome.tif", "reference": "false", "session": "s2",
         "landmarks": "data/he_section1.landmarks.csv"},
        {"sample": "mif", "image": "data/mif_round0.ome.tif", "reference": "true", "session": "", "landmarks": ""},
        {"sample": "mif", "image": "data/mif_round1.ome.tif", "reference": "false", "session": "s2",
         "landmarks": ""},
    ])
    # in OME-Zarr: its conversion tasks (publish) run under Nextflow, the failed image's skipped
    done = nextflow(["--input", str(sheet), "--outdir", "results", "--preset", "low", "--max_cpus", "2",
                     "--format", "ome-zarr"], work)
    results = work / "results"
    expect(done.returncode != 0, "a run in which an image could not register must exit non-zero")
    expect("could not be registered" in done.stdout + done.stderr, "the run's message should name the failure")
    for image in ("he/he_section1", "he/he_section0", "mif/mif_round1", "mif/mif_round0"):  # + the references
        expect(published(results / "registered" / f"{image}.ome.zarr"), f"registered/{image}.ome.zarr missing")
    expect(not list((results / "registered" / "he").glob("blank.*")), "the blank slide has no registered copy")
    rows = metrics(results)
    expect(rows and rows[0]["status"] == "failed" and rows[0]["sample"] == "he",
           f"the report should list the failure first: {[(r['sample'], r['image'], r['status']) for r in rows]}")
    checked = {(row["sample"], row["image"]): row["status"] for row in rows}
    expect(checked.get(("he", "s2")) == "pass" and checked.get(("mif", "s2")) == "pass",
           f"both samples' session s2 should be checked and pass: {checked}")
    page = (results / "report" / "report.html").read_text()
    for sample in ("he", "mif"):
        expect(f'href="../qc/{sample}/s2_qc.png"' in page, f"the report should link qc/{sample}/s2_qc.png")
        expect((results / "qc" / sample / "s2_qc.png").is_file(), f"qc/{sample}/s2_qc.png not published")
    thumbnails = [part.split('"')[0] for part in page.split('<img src="')[1:]]
    expect(len(thumbnails) == 2 and thumbnails[0] != thumbnails[1],
           "the two samples' s2 rows should show two different QC pictures")
    return "exit non-zero after the report; batch-mate registered and passed; failure listed first; own pictures"


def check_singles(work: Path) -> str:
    demo_data(work / "data")
    sheet = write_sheet(work / "singles.csv", [
        {"sample": "a", "image": "data/he_section0.ome.tif", "reference": "true", "session": "", "landmarks": ""},
        {"sample": "b", "image": "data/mif_round0.ome.tif", "reference": "true", "session": "", "landmarks": ""},
    ])
    done = nextflow(["--input", str(sheet), "--outdir", "results"], work)
    expect(done.returncode == 0, f"a sheet of single-image samples exited {done.returncode}")
    expect((work / "results" / "report" / "report.html").is_file(), "the report should be written")
    expect(metrics(work / "results") == [], "nothing was registered, so the report should have no rows")
    return "nothing to register; report written"


def check_http(work: Path) -> str:
    served = work / "served"
    demo_data(served / "images")
    write_sheet(served / "sheets" / "http.csv", [
        {"sample": "he", "image": "../images/he_section0.ome.tif", "reference": "true", "session": "",
         "landmarks": "../images/he_section0.landmarks.csv"},
        {"sample": "he", "image": "./../images/he_section1.ome.tif", "reference": "false", "session": "",
         "landmarks": "../images/he_section1.landmarks.csv"},
    ])
    with loopback_server(served) as address:
        done = nextflow(["--input", f"{address}/sheets/http.csv", "--outdir", "results", "--preset", "low",
                         "--max_cpus", "2"], work)
    expect(done.returncode == 0, f"the HTTP samplesheet run exited {done.returncode}: {done.stdout[-1500:]}")
    rows = metrics(work / "results")
    expect([(r["image"], r["status"]) for r in rows] == [("he_section1", "pass")], f"report rows: {rows}")
    return f"sheet and images read from {address}, he_section1 registered and passed"


CHECKS: dict[str, Callable[[Path], str]] = {
    "stub": check_stub, "test": check_test_profile, "resume": check_resume, "failure": check_failure,
    "singles": check_singles, "http": check_http,
}
SHARED_FOLDER = {"resume": "test"}  # -resume reruns the test profile's run in its folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="where the runs happen (default: a new temporary folder)")
    parser.add_argument("--only", nargs="+", choices=list(CHECKS), help="run these checks only")
    args = parser.parse_args()
    # absolute: each run's files are named to a Nextflow launched from inside its own folder
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="slimreg-pipeline-"))).resolve()
    passed = failed = 0
    for name in args.only or list(CHECKS):
        work = workdir / SHARED_FOLDER.get(name, name)
        if name not in SHARED_FOLDER:
            shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        try:
            detail = CHECKS[name](work)
        except (CheckFailed, subprocess.SubprocessError, OSError, ValueError, json.JSONDecodeError) as error:
            failed += 1
            print(f"FAILED {name} ({time.monotonic() - start:.0f} s): {error} [log: {work / 'nextflow.out'}]",
                  flush=True)
            log = work / "nextflow.out"
            if log.is_file():  # CI keeps only what is printed
                print("\n".join("    " + line for line in log.read_text().splitlines()[-25:]), flush=True)
        else:
            passed += 1
            print(f"passed {name} ({time.monotonic() - start:.0f} s): {detail}", flush=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""`slimreg run` end to end on demo data: outputs, OOM recovery, timeouts, bad parameters.

Resuming a killed run and merging a session's pieces are in test_runner_resume.py (one unit of work each for
pytest-xdist, so the two run side by side)."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import pytest
import tifffile
from ome_types import validate_xml

from slimreg import options
from slimreg.cli import main
from slimreg.runner import run_job
from slimreg.tasks import TEST_OOM_HOOK, TEST_SLEEP_HOOK
from tests.conftest import sheet_of_samples

pytestmark = pytest.mark.slow


def test_end_to_end_outputs_and_qc(demo_sheet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    status = main(["run", "--input", str(demo_sheet), "--outdir", str(out), "--engine", "feature",
                   "--preset", "low", "--max-frames", "5", "--merge-chunks", "--merge-channels"])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "run summary" in printed and f"report: {out / 'report' / 'report.html'}" in printed
    for name in ("mif_round1", "mif_round2", "mif_round3"):
        assert (out / "registered" / "mif" / f"{name}.ome.tif").is_file()
        assert (out / "transforms" / "mif" / f"{name}.transform.json").is_file()
        assert json.loads((out / "qc" / "mif" / f"{name}_qc.json").read_text())["status"] == "pass"
    assert (out / "registered" / "he" / "he_section1.ome.tif").is_file()
    assert len(list((out / "registered" / "calcium").glob("calcium_s2_part*_b*.ome.tif"))) == 4
    assert (out / "registered" / "calcium" / "s2.ome.tif").is_file()  # merged session
    assert json.loads((out / "qc" / "calcium" / "s2_qc.json").read_text())["status"] == "pass"
    # the recordings' frames were corrected for motion first (on by default): shifts and QC per piece
    # the corrected reference, in pieces corrected in parallel, and merged (--merge-chunks) as a moving session is
    assert len(list((out / "registered" / "calcium").glob("calcium_s1_b*.ome.tif"))) == 3
    assert (out / "registered" / "calcium" / "s1.ome.tif").is_file()
    for piece in ("calcium_s1_b1", "calcium_s2_part1_b1", "calcium_s2_part1_b2", "calcium_s2_part2_b2"):
        assert (out / "transforms" / "calcium" / f"{piece}.shifts.csv").is_file(), piece
        record = json.loads((out / "qc" / "calcium" / f"{piece}.motion.json").read_text())
        # a one-frame piece (b2 of a 6-frame part) correlates with its own mean before and after: 1 - rounding
        assert record["qc"]["mean_correlation_after"] >= record["qc"]["mean_correlation_before"] - 1e-6, piece
    # the session's transform file carries every corrected frame's shift, as its piece's CSV has it
    motion = json.loads((out / "transforms" / "calcium" / "s2.transform.json").read_text())["metadata"]["motion"]
    assert [p["file"] for p in motion["pieces"]] == [f"calcium_s2_part{k}_b{b}.ome.tif" for k in (1, 2) for b in (1, 2)]
    assert [(p["recording"], p["first_frame"]) for p in motion["pieces"]] == [
        (f"calcium_s2_part{k}.ome.tif", start) for k in (1, 2) for start in (0, 5)]
    for piece in motion["pieces"]:
        with open(out / "transforms" / "calcium" / piece["shifts_csv"]) as handle:
            rows = list(csv.DictReader(handle))
        assert piece["frames"] == len(rows) == len(piece["dy"]) > 0
        assert piece["dy"] == [float(r["dy"]) for r in rows] and piece["dx"] == [float(r["dx"]) for r in rows]
    for name in ("preflight.json", "plan.json", "plan.csv", "versions.yml", "run.log", "run_summary.json"):
        assert (out / "pipeline_info" / name).is_file()
    assert (out / "report" / "report.html").is_file() and (out / "report" / "metrics.csv").is_file()
    page = (out / "report" / "report.html").read_text()  # the motion table says what type the QC was measured on
    assert "<th>written as</th>" in page and f"<td>rigid</td><td>{options.DEFAULT_MOTION_DTYPE}</td>" in page
    # every OME-TIFF written, merged IF image included, carries OME-XML that the OME 2016-06 schema accepts (the
    # schema Bio-Formats, QuPath and napari's readers follow; ome-types bundles it, nothing is downloaded)
    written = sorted(out.rglob("*.ome.tif"))
    assert out / "merged" / "mif.ome.tif" in written and len(written) >= 15
    for path in written:
        with tifffile.TiffFile(path) as tiff:
            validate_xml(tiff.ome_metadata)


def test_oom_kill_is_retried_with_a_lower_preset(demo_sheet: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TEST_OOM_HOOK, "register-mif-b1:medium")
    summary = run_job(sheet_of_samples(demo_sheet, "mif"), tmp_path / "out", engine="feature", preset="medium",
                      max_frames=5, mode="subprocess")
    assert summary.ok
    outcome = next(o for o in summary.outcomes if o.id == "register-mif-b1")
    assert outcome.attempts == 2 and outcome.presets == ["", "low"]
    log = (tmp_path / "out" / "pipeline_info" / "run.log").read_text()
    assert "register-mif-b1: killed (likely out of memory) at preset medium" in log
    assert "retrying with preset low" in log
    assert json.loads((tmp_path / "out" / "qc" / "mif" / "mif_round1_qc.json").read_text())["status"] == "pass"
    page = (tmp_path / "out" / "report" / "report.html").read_text()  # the report shows the retry too
    retried = page[page.index("Tasks retried, stopped or not finished"):]
    assert '<td>register-mif-b1</td><td class="status">done</td><td>2</td><td>as planned, low</td>' in retried


def test_a_hanging_task_is_stopped_at_its_timeout(demo_sheet: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The task that hangs is the first one (it sleeps before any work), so no real task races the timeout."""
    out = tmp_path / "out"
    monkeypatch.setenv(TEST_SLEEP_HOOK, "register-mif-b1:600")
    started = time.monotonic()
    status = main(["run", "--input", str(sheet_of_samples(demo_sheet, "mif")), "--outdir", str(out),
                   "--engine", "feature", "--preset", "low", "--mode", "parallel", "--timeout-per-task", "20"])
    printed = capsys.readouterr().out
    assert status == 1 and time.monotonic() - started < 120
    assert "FAILED register-mif-b1: timeout" in printed and "FAILED qc-mif-mif_round1: blocked" in printed
    outcomes = {o["id"]: o for o in json.loads((out / "pipeline_info" / "run_summary.json").read_text())["outcomes"]}
    assert outcomes["register-mif-b1"]["message"] == "killed after --timeout-per-task 20 s"
    assert outcomes["report"]["status"] == "done" and "register-mif-b1" in (out / "report" / "report.html").read_text()
    assert not (out / "registered" / "mif" / "mif_round1.ome.tif").exists()


def test_bad_run_parameters(demo_sheet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--input", str(demo_sheet), "--outdir", str(tmp_path), "--workers", "2"]) == 2
    assert "needs --mode parallel" in capsys.readouterr().err
    assert main(["run", "--input", str(demo_sheet), "--outdir", str(tmp_path), "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err
    assert not os.listdir(tmp_path)

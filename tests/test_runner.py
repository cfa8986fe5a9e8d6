"""`slimreg run` end to end on demo data: outputs, OOM recovery, timeouts, resume."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from slimreg.cli import main
from slimreg.runner import run_job
from slimreg.tasks import TEST_OOM_HOOK, TEST_SLEEP_HOOK
from tests.conftest import sheet_of_samples

FAST = {"engine": "feature", "preset": "low", "max_frames": 5, "mode": "serial"}  # mode is not under test


def test_end_to_end_outputs_and_qc(demo_sheet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    status = main(["run", "--input", str(demo_sheet), "--outdir", str(out), "--engine", "feature",
                   "--preset", "low", "--max-frames", "5", "--merge-chunks"])
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
    for name in ("preflight.json", "plan.json", "plan.csv", "versions.yml", "run.log", "run_summary.json"):
        assert (out / "pipeline_info" / name).is_file()
    assert (out / "report" / "report.html").is_file() and (out / "report" / "metrics.csv").is_file()


def test_merged_session_equals_unsplit_result(demo_sheet: Path, tmp_path: Path) -> None:
    """Pieces of one session share one transform: merged pieces equal the registration of the whole files."""
    from slimreg.io import probe, read_region

    sheet = sheet_of_samples(demo_sheet, "calcium")  # the one with sessions: the others take no part here
    split = run_job(sheet, tmp_path / "split", merge_chunks=True, **FAST)
    whole = run_job(sheet, tmp_path / "whole", **{**FAST, "max_frames": None})
    assert split.ok and whole.ok
    merged = tmp_path / "split" / "registered" / "calcium" / "s2.ome.tif"
    parts = [tmp_path / "whole" / "registered" / "calcium" / f"calcium_s2_part{i}.ome.tif" for i in (1, 2)]
    size = probe(merged).width
    frames = [read_region(p, 0, 0, size, size, frame=f) for p in parts for f in range(probe(p).frames)]
    assert probe(merged).frames == len(frames)
    for index, expected in enumerate(frames):
        got = read_region(merged, 0, 0, size, size, frame=index).astype(int)
        assert abs(got - expected.astype(int)).max() <= 1
    transforms = json.loads((tmp_path / "split" / "pipeline_info" / "plan.json").read_text())
    units = [u for t in transforms["tasks"] if t["kind"] == "register" and t["sample"] == "calcium"
             for u in t["params"]["units"]]
    assert len(units) == 1 and len(units[0]["apply_to"]) == 4  # one transform for all pieces of session s2


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


def test_kill_and_resume(demo_sheet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    monkeypatch.setenv(TEST_OOM_HOOK, "register-he-b1:low")
    status = main(["run", "--input", str(demo_sheet), "--outdir", str(out), "--engine", "feature", "--preset", "low",
                   "--max-frames", "5", "--mode", "parallel", "--workers", "2", "--max-retries", "1"])
    printed = capsys.readouterr().out
    assert status == 1
    assert "FAILED register-he-b1: killed" in printed and "FAILED qc-he-he_section1: blocked" in printed
    first = json.loads((out / "pipeline_info" / "run_summary.json").read_text())["outcomes"]
    done_first = {o["id"] for o in first if o["status"] == "done"}
    assert "register-mif-b1" in done_first and "qc-mif-mif_round2" in done_first

    # A partial file left by a killed writer, and an output that looks finished but has no completion record.
    (out / "registered" / "he").mkdir(parents=True, exist_ok=True)
    (out / "registered" / "he" / ".he_section1.partial-123-abcd.ome.tif").write_bytes(b"half")
    (out / "registered" / "he" / "he_section1.ome.tif").write_bytes(b"not a finished image")
    monkeypatch.delenv(TEST_OOM_HOOK)
    summary = run_job(demo_sheet, out, resume=True, **FAST)
    assert summary.ok
    statuses = {o.id: o.status for o in summary.outcomes}
    assert all(statuses[task] == "skipped" for task in done_first if task != "report")
    redone = {t for t, s in statuses.items() if s == "done"}
    assert {"register-he-b1", "qc-he-he_section1"} <= redone
    assert not (redone & (done_first - {"report"}))
    assert not list(out.rglob("*.partial-*"))
    from slimreg.io import probe

    assert probe(out / "registered" / "he" / "he_section1.ome.tif").is_rgb


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

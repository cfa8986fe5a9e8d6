"""`slimreg run` resumed after a kill (finished tasks skipped, partial files cleared), and a session cut into pieces
merged back equal to the registration of the whole files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimreg.cli import main
from slimreg.runner import run_job
from slimreg.tasks import TEST_OOM_HOOK
from tests.conftest import FAST, sheet_of_samples

pytestmark = pytest.mark.slow


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

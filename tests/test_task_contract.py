"""The task contract: each task runs from its own spec and the files staged for it, and nothing else.

Nextflow's ``-resume`` reuses a task when its inputs hash the same: its ``meta``, its spec (a value) and its files.
These tests compare those inputs across plans that differ elsewhere (another output folder, another sample, a QC
setting), plan a samplesheet of ``s3://`` locations from PROBE's headers without opening a file, and run a task
whose samplesheet files exist only where they were staged.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from slimreg.cli import main
from slimreg.errors import InputError
from slimreg.io.header import read_headers, write_header
from slimreg.plan import Plan, PlanSettings, build_plan
from slimreg.register.settings import RegistrationSettings
from slimreg.samplesheet import read_samplesheet

FAST = {"engine": "feature", "preset": "low"}


def _nextflow_inputs(folder: Path) -> dict[str, tuple[str, str]]:
    """What Nextflow hashes for each task, besides the files: the meta it builds from plan.csv and the spec text."""
    rows = {row["id"]: row for row in csv.DictReader((folder / "plan.csv").open())}
    return {task_id: (json.dumps({k: row[k] for k in ("id", "kind", "sample", "peak_memory_bytes", "depends_on",
                                                      "sources")}),
                      (folder / "task_specs" / f"{task_id}.json").read_text())
            for task_id, row in rows.items()}


def _plan(sheet: Path, outdir: Path, **settings: object) -> dict[str, tuple[str, str]]:
    plan = build_plan(read_samplesheet(sheet), outdir, RegistrationSettings.from_preset("low", engine="feature"),
                      PlanSettings(max_frames=5, **settings))  # type: ignore[arg-type]
    plan.write(outdir / "plan")
    return _nextflow_inputs(outdir / "plan")


def test_a_task_spec_names_no_output_folder(demo_sheet: Path, tmp_path: Path) -> None:
    first = _plan(demo_sheet, tmp_path / "run-a")
    second = _plan(demo_sheet, tmp_path / "elsewhere" / "run-b")
    assert first == second  # PLAN's work folder differs on every run: no task may depend on it
    assert not any("run-a" in spec for _, spec in first.values())


def test_changing_one_sample_or_a_qc_setting_keeps_every_other_task(demo_dir: Path, tmp_path: Path) -> None:
    before = _plan(demo_dir / "samplesheet.csv", tmp_path / "before")

    qc_changed = _plan(demo_dir / "samplesheet.csv", tmp_path / "qc", qc_max_dim=1024)
    changed = {task for task in before if before[task] != qc_changed[task]}
    assert changed == {task for task in before if task.startswith("qc-")}  # QC tasks only (and the report:
    # it is not wired by spec, it reads the whole plan)

    # one sample loses an image: no task of another sample changes
    lines = (demo_dir / "samplesheet.csv").read_text().splitlines()
    sheet = demo_dir / "one_sample_changed.csv"
    sheet.write_text("\n".join(line for line in lines if "mif_round3" not in line) + "\n")
    fewer = _plan(sheet, tmp_path / "fewer")
    other_samples = {task for task in before if not task.startswith(("register-mif", "qc-mif", "report"))}
    assert other_samples and all(fewer[task] == before[task] for task in other_samples)
    assert fewer["register-mif-b1"] != before["register-mif-b1"]  # the changed sample's batch reruns
    assert fewer["qc-mif-mif_round1"] == before["qc-mif-mif_round1"]  # its QC of unchanged images does not


def _headers_for(sheet: Path, given_prefix: str, folder: Path) -> None:
    """PROBE, as the pipeline runs it: one header per file, each named by the sheet's text."""
    rows = read_samplesheet(sheet, probe_images=False).rows
    names = sorted({r.image.name for r in rows} | {r.landmarks.name for r in rows if r.landmarks})
    for index, name in enumerate(names, start=1):
        write_header(given_prefix + name, sheet.parent / name, folder / str(index) / "header.json")


def _cloud_sheet(demo_dir: Path, tmp_path: Path, prefix: str) -> Path:
    """The demo samplesheet with every file at ``prefix`` (a bucket): no file exists at those locations."""
    rows = list(csv.DictReader((demo_dir / "samplesheet.csv").open()))
    sheet = tmp_path / "cloud" / "samplesheet.csv"
    sheet.parent.mkdir(parents=True)
    with sheet.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "image": prefix + row["image"],
                             "landmarks": prefix + row["landmarks"] if row["landmarks"] else ""})
    return sheet


@pytest.mark.parametrize("prefix", ["s3://lab-bucket/run 7/", "gs://lab/run/", "az://container/run/"])
def test_a_sheet_of_cloud_locations_is_planned_from_headers_alone(demo_dir: Path, tmp_path: Path,
                                                                  prefix: str) -> None:
    sheet = _cloud_sheet(demo_dir, tmp_path, prefix)
    _headers_for(demo_dir / "samplesheet.csv", prefix, tmp_path / "headers")
    plan = build_plan(read_samplesheet(sheet, headers=read_headers(tmp_path / "headers")), tmp_path / "out",
                      RegistrationSettings.from_preset("low", engine="feature"), PlanSettings(max_frames=5))
    local = build_plan(read_samplesheet(demo_dir / "samplesheet.csv"), tmp_path / "out",
                       RegistrationSettings.from_preset("low", engine="feature"), PlanSettings(max_frames=5))
    sources = {s for task in plan.tasks for s in task.sources}
    assert sources and all(s.startswith(prefix) for s in sources)
    # the same tasks, outputs and estimates as when the files are opened here
    assert [(t.id, t.outputs, t.peak_memory_bytes) for t in plan.tasks] == \
        [(t.id, t.outputs, t.peak_memory_bytes) for t in local.tasks]


def test_unusable_files_are_all_reported_from_their_headers(demo_dir: Path, tmp_path: Path) -> None:
    sheet = _cloud_sheet(demo_dir, tmp_path, "s3://b/")
    headers = tmp_path / "headers"
    _headers_for(demo_dir / "samplesheet.csv", "s3://b/", headers)
    not_tiff = tmp_path / "he_section1.ome.tif"
    not_tiff.write_text("this is not a TIFF")
    he_header = next(p for p in headers.rglob("header.json")
                     if json.loads(p.read_text())["given"] == "s3://b/he_section1.ome.tif")
    write_header("s3://b/he_section1.ome.tif", not_tiff, he_header)  # PROBE of a damaged file
    missing = next(p for p in headers.rglob("header.json")
                   if json.loads(p.read_text())["given"] == "s3://b/mif_round2.ome.tif")
    missing.unlink()
    with pytest.raises(InputError) as raised:
        read_samplesheet(sheet, headers=read_headers(headers))
    message = str(raised.value)
    assert "2 problem(s)" in message
    assert "s3://b/he_section1.ome.tif" in message and "not a TIFF" in message.replace("not a tiff", "not a TIFF")
    assert str(not_tiff) not in message  # named as the sheet names it, not as it was staged
    assert "no header for image s3://b/mif_round2.ome.tif" in message


def _stage_sources(spec_path: Path, workdir: Path, files: dict[str, Path]) -> None:
    spec = json.loads(spec_path.read_text())
    for index, source in enumerate(spec["sources"], start=1):
        target = workdir / "sources" / str(index) / Path(files[source]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files[source], target)


@pytest.mark.slow
def test_a_task_runs_from_its_spec_with_only_its_staged_files(demo_dir: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    prefix = "s3://lab-bucket/run/"
    sheet = _cloud_sheet(demo_dir, tmp_path, prefix)
    _headers_for(demo_dir / "samplesheet.csv", prefix, tmp_path / "headers")
    assert main(["plan", "--input", str(sheet), "--headers", str(tmp_path / "headers"), "--outdir",
                 str(tmp_path / "plan"), "--engine", "feature", "--preset", "low"]) == 0
    spec = tmp_path / "plan" / "task_specs" / "register-he-b1.json"
    work = tmp_path / "work"
    work.mkdir()
    capsys.readouterr()
    # nothing staged: a clear error, and the task does not go looking for the file elsewhere
    assert main(["run-task", "--spec", str(spec), "--root", str(work)]) == 2
    assert "was not staged" in capsys.readouterr().err
    files = {prefix + p.name: p for p in demo_dir.iterdir()}
    _stage_sources(spec, work, files)
    assert main(["run-task", "--spec", str(spec), "--root", str(work), "--preset", "low"]) == 0
    assert (work / "registered" / "he" / "he_section1.ome.tif").is_file()
    assert (work / "transforms" / "he" / "he_section1.transform.json").is_file()


def test_a_spec_from_elsewhere_is_refused_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "task.json"
    spec.write_text(json.dumps({"id": "x", "kind": "qc"}))
    assert main(["run-task", "--spec", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "is not a slimreg task spec" in err and str(spec) in err
    task = Plan.task_from_spec({"format": "slimreg-task", "version": "0", "id": "q", "kind": "qc", "sample": "s",
                                "inputs": [], "outputs": []})
    assert (task.id, task.kind, task.sources) == ("q", "qc", [])
    with pytest.raises(InputError, match="not a task spec of this slimreg version"):
        Plan.task_from_spec({"format": "slimreg-task", "id": "q", "kind": "qc", "colour": "red"})

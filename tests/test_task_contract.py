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
    return {task_id: (json.dumps({k: row[k] for k in ("id", "kind", "sample", "peak_memory_bytes", "disk_bytes",
                                                      "depends_on", "sources", "outputs")}),
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


def _staged_task(demo_dir: Path, tmp_path: Path, task_id: str, images: dict[str, Path],
                 session: str = "", plan_args: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """A plan of the H&E pair whose moving image is ``images['he_section1.ome.tif']`` (in ``session``, if named),
    and one task's spec with its sources staged in a work folder of its own (as RUN_TASK gets them)."""
    folder = tmp_path / "sheet"
    folder.mkdir()
    for name in ("he_section0.ome.tif", "he_section1.ome.tif"):
        shutil.copy(images.get(name, demo_dir / name), folder / name)
    (folder / "sheet.csv").write_text("sample,image,reference,session\nhe,he_section0.ome.tif,true,\n"
                                      f"he,he_section1.ome.tif,false,{session}\n")
    assert main(["plan", "--input", str(folder / "sheet.csv"), "--outdir", str(tmp_path / "plan"), "--engine",
                 "feature", "--preset", "low", *plan_args]) == 0
    spec = tmp_path / "plan" / "task_specs" / f"{task_id}.json"
    work = tmp_path / task_id
    work.mkdir()
    _stage_sources(spec, work, {str(p): p for p in folder.iterdir()})
    return spec, work


def test_keep_going_records_an_image_that_cannot_register_and_succeeds(demo_dir: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The pipeline's REGISTER: an image that cannot be registered is recorded in the task's log (the report lists
    it) and the task exits 0, so its batch-mates' outputs are kept; its QC then has nothing to check and says so."""
    import numpy as np
    import tifffile

    blank = tmp_path / "blank.ome.tif"
    tifffile.imwrite(blank, np.full((256, 256, 3), 242, np.uint8), photometric="rgb")
    spec, work = _staged_task(demo_dir, tmp_path, "register-he-b1", {"he_section1.ome.tif": blank})
    assert main(["run-task", "--spec", str(spec), "--root", str(work)]) == 2  # without it: the task fails
    capsys.readouterr()
    assert main(["run-task", "--spec", str(spec), "--root", str(work), "--keep-going"]) == 0
    assert "--keep-going: recorded" in capsys.readouterr().err
    log = json.loads((work / "transforms" / "he" / "register-he-b1.register.json").read_text())
    assert [image["status"] for image in log["images"]] == ["failed"] and "no tissue" in log["images"][0]["error"]

    qc_spec = tmp_path / "plan" / "task_specs" / "qc-he-he_section1.json"
    qc_work = tmp_path / "qc-work"
    qc_work.mkdir()
    _stage_sources(qc_spec, qc_work, {str(p): p for p in (tmp_path / "sheet").iterdir()})
    (qc_work / "register-he-b1.register.json").symlink_to(work / "transforms" / "he" / "register-he-b1.register.json")
    assert main(["run-task", "--spec", str(qc_spec), "--root", str(qc_work), "--keep-going"]) == 0
    assert "could not be registered" in capsys.readouterr().err
    assert not (qc_work / "qc").exists()
    # a missing input that no failure explains is still an error, --keep-going or not
    (qc_work / "register-he-b1.register.json").unlink()
    assert main(["run-task", "--spec", str(qc_spec), "--root", str(qc_work), "--keep-going"]) == 2


def test_keep_going_skips_converting_an_image_of_a_session_that_did_not_register(
        demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A session's files are named by the session (s1.transform.json), its registered copy by the image
    (he_section1.ome.tif): a publish task (--format ome-zarr) that misses the copy learns from the register log
    that its image failed, and skips; the same missing file with no such log is an error."""
    import numpy as np
    import tifffile

    blank = tmp_path / "blank.ome.tif"
    tifffile.imwrite(blank, np.full((256, 256, 3), 242, np.uint8), photometric="rgb")
    spec, work = _staged_task(demo_dir, tmp_path, "register-he-b1", {"he_section1.ome.tif": blank}, session="s1",
                              plan_args=("--format", "ome-zarr"))
    assert main(["run-task", "--spec", str(spec), "--root", str(work), "--keep-going"]) == 0
    log = work / "transforms" / "he" / "register-he-b1.register.json"
    assert [image["stem"] for image in json.loads(log.read_text())["images"]] == ["s1"]
    publish = json.loads((tmp_path / "plan" / "task_specs" / "publish-he-he-he_section1.json").read_text())
    assert publish["inputs"] == ["work/he/registered/he_section1.ome.tif"]
    publish_work = tmp_path / "publish-work"
    publish_work.mkdir()
    arguments = ["run-task", "--spec", str(tmp_path / "plan" / "task_specs" / "publish-he-he-he_section1.json"),
                 "--root", str(publish_work), "--keep-going"]
    capsys.readouterr()
    assert main(arguments) == 2  # no register log staged: a plain missing input
    assert "is missing" in capsys.readouterr().err
    (publish_work / log.name).symlink_to(log)
    assert main(arguments) == 0
    assert "could not be registered" in capsys.readouterr().err
    assert not (publish_work / "registered").exists()


def test_each_attempt_walks_one_preset_down_slimregs_ladder(demo_dir: Path, tmp_path: Path) -> None:
    from slimreg.tasks import preset_for_attempt

    plan = build_plan(read_samplesheet(demo_dir / "samplesheet.csv"), tmp_path,
                      RegistrationSettings.from_preset("high", engine="feature"), PlanSettings(max_frames=5))
    register = next(task for task in plan.tasks if task.kind == "register")
    assert [preset_for_attempt(register, None, attempt) for attempt in (1, 2, 3, 4)] == \
        [None, "medium", "low", "low"]
    assert preset_for_attempt(register, "medium", 2) == "low"


def test_per_task_disk_is_compared_with_a_tasks_limit_not_plans_folder(demo_dir: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The pipeline's PLAN runs in a scratch folder of its own (tiny on cloud batch executors): each task's disk
    need is compared with the most a task may ask for, or not here at all when no limit is set."""
    args = ["plan", "--input", str(demo_dir / "samplesheet.csv"), "--outdir", str(tmp_path / "plan"), "--engine",
            "feature", "--preset", "low", "--task-memory-limit", "8.GB"]
    assert main([*args, "--task-disk-limit", "none"]) == 0
    assert "not checked here: each task asks the scheduler for its own" in capsys.readouterr().err
    assert main([*args, "--task-disk-limit", "1.MB"]) != 0
    assert "Disk: largest task" in capsys.readouterr().err


def test_the_report_shows_each_sample_its_own_picture_through_staged_links(tmp_path: Path) -> None:
    """The pipeline's REPORT gets each QC task's folder as a link (results/<n>/report_inputs -> the task's work
    folder). Two samples may share a session name: each row shows the picture beside its own JSON, and links to
    where it is published beside the report (../qc/<sample>/...), not to the staging folder."""
    import cv2
    import numpy as np

    from slimreg.report import build_report

    results = tmp_path / "results"
    for index, (sample, colour) in enumerate((("A", (0, 0, 255)), ("B", (255, 0, 0))), start=1):
        task_folder = tmp_path / "work" / str(index) / "report_inputs" / "qc" / sample
        task_folder.mkdir(parents=True)
        cv2.imwrite(str(task_folder / "s1_qc.png"), np.full((40, 60, 3), colour, np.uint8))
        (task_folder / "s1_qc.json").write_text(json.dumps({"sample": sample, "status": "pass", "reasons": [],
                                                            "metrics": {}, "png": "s1_qc.png"}))
        (results / str(index)).mkdir(parents=True)
        (results / str(index) / "report_inputs").symlink_to(task_folder.parent.parent)
    page = build_report(results, tmp_path / "report").read_text()
    thumbnails = [part.split('"')[0] for part in page.split('<img src="')[1:]]
    assert len(thumbnails) == 2 and thumbnails[0] != thumbnails[1]
    assert 'href="../qc/A/s1_qc.png"' in page and 'href="../qc/B/s1_qc.png"' in page

"""Pre-flight: estimates per task, the 80/100 % bands, remediation with current values, cgroup limits."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from slimreg.cli import main
from slimreg.errors import InputError, InsufficientDiskError, InsufficientMemoryError
from slimreg.memory import MemoryTracker
from slimreg.plan import PlanSettings, Task, build_plan
from slimreg.preflight import run_preflight
from slimreg.register.settings import RegistrationSettings
from slimreg.resources import Resources, cgroup_headroom
from slimreg.samplesheet import read_samplesheet
from tests.conftest import sheet_of_samples

GB = 1024**3


def _resources(memory: float, disk: float = 100) -> Resources:
    return Resources(int(memory * GB), "test", int(disk * GB), "/tmp", int(memory * GB), None)


@pytest.fixture(scope="module")
def demo_plan(demo_sheet: Path, tmp_path_factory: pytest.TempPathFactory):
    registration = RegistrationSettings.from_preset("medium", engine="valis")
    return build_plan(read_samplesheet(demo_sheet), tmp_path_factory.mktemp("out"), registration,
                      PlanSettings(max_frames=5))


def test_cli_prints_summary_and_writes_preflight_json(demo_sheet: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["preflight", "--input", str(demo_sheet), "--outdir", str(tmp_path / "out"), "--engine", "feature",
                   "--max-frames", "5"])
    assert status == 0
    out = capsys.readouterr().out
    assert "RAM: estimated peak" in out and "GB available (" in out and "Disk: estimated total" in out
    report = json.loads((tmp_path / "out" / "preflight.json").read_text())
    assert report["verdict"] in ("ok", "warn")
    kinds = {t["kind"] for t in report["tasks"]}
    assert {"template", "motion", "project", "register", "qc", "report"} <= kinds  # recordings: motion, not split
    assert all(t["peak_memory_bytes"] > 0 and t["disk_bytes"] > 0 for t in report["tasks"])
    assert report["available"]["memory_bytes"] > 0


def test_bands_and_refusal(demo_plan, tmp_path: Path) -> None:
    peak = max(t.peak_memory_bytes for t in demo_plan.tasks)
    assert run_preflight(demo_plan, tmp_path, resources=_resources(peak * 2 / GB), stream=io.StringIO())[
        "verdict"] == "ok"
    warned = io.StringIO()
    assert run_preflight(demo_plan, tmp_path, resources=_resources(peak / 0.9 / GB), stream=warned)["verdict"] == "warn"
    assert "HIGH" in warned.getvalue()
    with pytest.raises(MemoryError) as caught:
        run_preflight(demo_plan, tmp_path, workers=3, resources=_resources(peak / GB), stream=io.StringIO())
    assert isinstance(caught.value, InsufficientMemoryError)
    message = str(caught.value)
    for hint in ("--workers 3 -> 1", "--preset medium -> low", "--engine valis -> feature", "--force"):
        assert hint in message
    forced = run_preflight(demo_plan, tmp_path, workers=3, resources=_resources(peak / GB), force=True,
                           stream=io.StringIO(), write_to=tmp_path)
    assert forced["verdict"] == "forced" and (tmp_path / "preflight.json").is_file()
    with pytest.raises(OSError) as disk:
        run_preflight(demo_plan, tmp_path, resources=_resources(100, disk=0.0001), stream=io.StringIO())
    assert isinstance(disk.value, InsufficientDiskError) and "--outdir" in str(disk.value)


@pytest.mark.parametrize(("samples", "recordings"), [(("he", "mif"), False), (("calcium",), True)])
def test_a_disk_refusal_offers_the_recordings_own_type_only_where_recordings_are_corrected(
        demo_sheet: Path, tmp_path: Path, samples: tuple[str, ...], recordings: bool) -> None:
    """Corrected recordings are float32 by default, twice a 16-bit recording's disk: a run refused for disk is told
    how to halve that, and only where it corrects recordings."""
    plan = build_plan(read_samplesheet(sheet_of_samples(demo_sheet, *samples)), tmp_path / "out",
                      RegistrationSettings.from_preset("medium", engine="feature"), PlanSettings())
    disk = sum(t.disk_bytes for t in plan.tasks)
    with pytest.raises(InsufficientDiskError) as caught:
        run_preflight(plan, tmp_path, resources=_resources(100, disk=disk / 2 / GB), stream=io.StringIO())
    assert ("--motion-dtype float32 -> input" in str(caught.value)) is recordings
    with_own_type = build_plan(read_samplesheet(sheet_of_samples(demo_sheet, *samples)), tmp_path / "own",
                               RegistrationSettings.from_preset("medium", engine="feature"),
                               PlanSettings(motion_dtype="input"))
    assert (sum(t.disk_bytes for t in with_own_type.tasks) < disk) is recordings
    with pytest.raises(InsufficientDiskError) as own_type_refused:  # already their own type: nothing to offer
        run_preflight(with_own_type, tmp_path, resources=_resources(100, disk=0.0001), stream=io.StringIO())
    assert "--motion-dtype" not in str(own_type_refused.value)


@pytest.mark.parametrize(("samples", "stacks"), [(("he", "mif"), False), (("calcium",), True)])
def test_remediation_shows_current_to_lower_values_and_max_frames_only_for_stacks(
        demo_sheet: Path, tmp_path: Path, samples: tuple[str, ...], stacks: bool) -> None:
    """The preset hint used to print one set of numbers after '-> low' that were the current preset's, and
    --max-frames was offered for single-frame slides, where it changes nothing."""
    plan = build_plan(read_samplesheet(sheet_of_samples(demo_sheet, *samples)), tmp_path / "out",
                      RegistrationSettings.from_preset("medium", engine="feature"), PlanSettings())
    peak = max(t.peak_memory_bytes for t in plan.tasks)
    with pytest.raises(InsufficientMemoryError) as caught:
        run_preflight(plan, tmp_path, resources=_resources(peak / 2 / GB), stream=io.StringIO())
    message = str(caught.value)
    assert "--preset medium -> low (processing_dim 1024 -> 512, non_rigid_dim 1024 -> 512, micro_dim 2048 -> 1024)" \
        in message
    assert ("--max-frames" in message) is stacks


def test_workers_multiply_the_peak(demo_plan) -> None:
    one = run_preflight(demo_plan, "/tmp", workers=1, resources=_resources(1000), stream=io.StringIO())
    three = run_preflight(demo_plan, "/tmp", workers=3, resources=_resources(1000), stream=io.StringIO())
    assert three["checks"][0]["needed_bytes"] > 2 * one["checks"][0]["needed_bytes"]


def test_implausible_task_is_refused(demo_plan) -> None:
    huge = Task("register-x-b1", "register", "x", ["/data/huge.tif"], [], peak_memory_bytes=10 * 1024**4)
    demo_plan.tasks.append(huge)
    try:
        with pytest.raises(InputError, match="more than any machine offers"):
            run_preflight(demo_plan, "/tmp", resources=_resources(1000), stream=io.StringIO())
    finally:
        demo_plan.tasks.remove(huge)


def test_cgroup_limit_is_read(tmp_path: Path) -> None:
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/\n")
    (tmp_path / "memory.max").write_text(f"{4 * GB}\n")
    (tmp_path / "memory.current").write_text(f"{1 * GB}\n")
    assert cgroup_headroom(tmp_path, proc) == (4 * GB, 3 * GB)
    (tmp_path / "memory.max").write_text("max\n")
    assert cgroup_headroom(tmp_path, proc) == (None, None)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_processes_own_cgroup_and_its_ancestors_are_read(tmp_path: Path, version: str) -> None:
    """SLURM puts a job at /slurm/uid_1/job_7 (v1: under the memory controller's mount); the limit may sit on
    the job or on any ancestor, and page cache the kernel can drop does not count as used."""
    proc = tmp_path / "proc-self-cgroup"
    if version == "v1":
        proc.write_text("4:memory:/slurm/uid_1/job_7\n1:cpu:/slurm/uid_1/job_7\n0::/\n")
        mount, limit_name, usage_name, cache = tmp_path / "memory", "memory.limit_in_bytes", \
            "memory.usage_in_bytes", "total_inactive_file"
    else:
        proc.write_text("0::/slurm/uid_1/job_7\n")
        mount, limit_name, usage_name, cache = tmp_path, "memory.max", "memory.current", "inactive_file"
    job = mount / "slurm" / "uid_1" / "job_7"
    job.mkdir(parents=True)
    (job / limit_name).write_text(f"{8 * GB}\n")
    (job / usage_name).write_text(f"{3 * GB}\n")
    (job / "memory.stat").write_text(f"{cache} {1 * GB}\nanon 0\n")
    assert cgroup_headroom(tmp_path, proc) == (8 * GB, 6 * GB)
    user = mount / "slurm" / "uid_1"  # a tighter limit on an ancestor binds the job too
    (user / limit_name).write_text(f"{5 * GB}\n")
    (user / usage_name).write_text(f"{4 * GB}\n")
    assert cgroup_headroom(tmp_path, proc) == (5 * GB, 1 * GB)


V1_MEMORY = Path("/sys/fs/cgroup/memory")


def _writable_v1_memory_cgroup() -> Path | None:
    """This process's own v1 memory cgroup, if a child cgroup can be made under it (root on a v1 host)."""
    import os

    for line in Path("/proc/self/cgroup").read_text().splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and "memory" in parts[1].split(","):
            own = V1_MEMORY / parts[2].lstrip("/")
            return own if own.is_dir() and os.access(own, os.W_OK) else None
    return None


@pytest.mark.skipif(_writable_v1_memory_cgroup() is None, reason="needs a writable cgroup-v1 memory hierarchy")
def test_a_real_cgroup_v1_limit_is_what_the_preflight_sees(tmp_path: Path) -> None:
    """A real 250 MB v1 limit (the landed code reported 23 GB here, and the run was SIGKILLed)."""
    import os
    import subprocess
    import sys

    group = _writable_v1_memory_cgroup() / f"slimreg-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(250 * 1024**2))
        code = ("import os, sys; open(sys.argv[1] + '/cgroup.procs', 'w').write(str(os.getpid())); "
                "from slimreg.resources import available_resources; r = available_resources(sys.argv[2]); "
                "print(r.memory_bytes, r.cgroup_limit_bytes)")
        result = subprocess.run([sys.executable, "-c", code, str(group), str(tmp_path)], capture_output=True,
                                text=True, check=True)
        memory, limit = map(int, result.stdout.split())
        assert limit == 250 * 1024**2 and 0 < memory <= limit
    finally:
        group.rmdir()


def test_unwritable_outdir_is_one_clear_error(demo_sheet: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["preflight", "--input", str(demo_sheet), "--outdir", str(blocker / "out")]) == 2
    assert "output folder cannot be created" in capsys.readouterr().err


def test_memory_tracker_tells_peak_from_leak() -> None:
    tracker = MemoryTracker(interval=0.005)
    kept = []
    for index in range(3):
        with tracker.step(f"leaky{index}"):
            kept.append(bytearray(300 * 1024**2))
            kept[-1][:: 4096] = b"x" * len(kept[-1][:: 4096])
    assert tracker.steps[0].peak_above_baseline_bytes > 250 * 1024**2
    assert tracker.summary()["pattern"].startswith("leak")
    kept.clear()
    tracker2 = MemoryTracker(interval=0.005)
    for index in range(3):
        with tracker2.step(f"peak{index}"):
            block = bytearray(300 * 1024**2)
            block[:: 4096] = b"x" * len(block[:: 4096])
            del block
    assert tracker2.summary()["pattern"].startswith("peak")
    tracker.close()
    tracker2.close()


def test_a_schedulers_task_limit_replaces_this_machines_memory(demo_sheet: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Under Nextflow, PLAN compares each task with what a task may request, not with PLAN's own allocation."""
    args = ["plan", "--input", str(demo_sheet), "--engine", "feature"]
    assert main([*args, "--outdir", str(tmp_path / "big"), "--task-memory-limit", "500.GB"]) == 0
    report = json.loads((tmp_path / "big" / "preflight.json").read_text())
    assert report["available"]["memory_bytes"] == 500 * 1024**3
    assert "500.GB" in report["available"]["memory_source"]
    assert main([*args, "--outdir", str(tmp_path / "small"), "--task-memory-limit", "100 MB"]) == 2
    assert "the most a task may request" in capsys.readouterr().err
    assert main([*args, "--outdir", str(tmp_path / "bad"), "--task-memory-limit", "lots"]) == 2

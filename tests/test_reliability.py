"""Reliability defects found by a hostile new user (issue 16), each with a test that failed before the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from benchmarks.realdata import available, calcium_frames
from slimreg.atomic import write_json_atomic
from slimreg.errors import InputError
from slimreg.io import probe, write_array
from slimreg.io.read import TiffImage
from slimreg.samplesheet import read_samplesheet


@pytest.mark.skipif(not available(), reason="the shared real data (../shared/data) is not here")
def test_a_real_imagej_file_without_a_compression_tag_is_probed() -> None:
    info = probe(calcium_frames()[0])  # used to crash: tifffile reports a bare int for the missing tag
    assert (info.width, info.height, info.dtype, info.compression) == (551, 413, "float32", "none")


@pytest.mark.parametrize("flavour", ["imagej-hyperstack", "uncompressed-strips", "bigtiff", "no-compression-tag"])
def test_tiff_flavours_users_bring_are_probed(tmp_path: Path, flavour: str) -> None:
    path = tmp_path / f"{flavour}.tif"
    if flavour == "imagej-hyperstack":
        data = np.zeros((3, 2, 64, 80), np.uint16)  # T, C, Y, X
        tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TCYX"})
        info = probe(path)
        assert (info.width, info.height, info.channels, info.frames) == (80, 64, 2, 3)
        return
    data = np.arange(64 * 80, dtype=np.uint16).reshape(64, 80)
    if flavour == "uncompressed-strips":
        tifffile.imwrite(path, data, rowsperstrip=8)
    elif flavour == "bigtiff":
        tifffile.imwrite(path, data, bigtiff=True, tile=(32, 32), compression="zlib")
    else:
        tifffile.imwrite(path, data, extratags=[], compression=None)
        raw = bytearray(path.read_bytes())  # rename the Compression tag (259) to an unused private one
        first = int.from_bytes(raw[4:8], "little")
        count = int.from_bytes(raw[first:first + 2], "little")
        for entry in range(count):
            at = first + 2 + 12 * entry
            if int.from_bytes(raw[at:at + 2], "little") == 259:
                raw[at:at + 2] = (65000).to_bytes(2, "little")
        path.write_bytes(bytes(raw))
    info = probe(path)
    assert (info.width, info.height, info.dtype) == (80, 64, "uint16")
    assert info.compression in ("none", "adobe_deflate", "deflate")


@pytest.mark.parametrize(("layout", "options"), [
    ("CYX", {"metadata": {"axes": "CYX"}}),  # tifffile's default for 3 samples: RGB, plane after plane
    ("YXC", {"metadata": {"axes": "YXC"}}),  # interleaved
    ("YXC", {"photometric": "minisblack", "planarconfig": "contig"}),
])
def test_channels_stored_as_the_samples_of_one_page_are_read_as_channels(tmp_path: Path, layout: str,
                                                                         options: dict) -> None:
    stack = np.random.default_rng(3).integers(0, 60000, (3, 60, 70)).astype(np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack if layout == "CYX" else np.moveaxis(stack, 0, -1).copy(), **options)
    info = probe(path)
    assert (info.channels, info.frames, info.channels_in_samples, info.is_rgb) == (3, 1, True, False)
    image = TiffImage(path)
    for channel in range(3):
        assert np.array_equal(image.plane_array(channel), stack[channel])


def test_grey_channels_stored_plane_after_plane_in_one_page_are_refused_with_the_conversion(tmp_path: Path) -> None:
    """libvips reads such pages back shuffled, silently: refused rather than registered wrong."""
    stack = np.random.default_rng(4).integers(0, 60000, (3, 600, 700)).astype(np.uint16)
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, stack, photometric="minisblack", planarconfig="separate", metadata={"axes": "CYX"})
    with pytest.raises(InputError, match="plane after plane") as error:
        probe(path)
    command = str(error.value).split('python -c "')[1].rsplit('"', 1)[0]
    exec(command.replace("IN.tif", str(path)).replace("OUT.ome.tif", str(tmp_path / "fixed.ome.tif")))
    image = TiffImage(tmp_path / "fixed.ome.tif")
    assert [np.array_equal(image.plane_array(c), stack[c]) for c in range(3)] == [True] * 3


def test_damaged_and_foreign_files_get_the_right_fix(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.tif"
    damaged.write_bytes(b"II*\x00" + b"\xff" * 20)
    with pytest.raises(InputError, match="truncated or corrupt") as error:
        probe(damaged)
    assert "copy the file again" in str(error.value) and "convert" not in str(error.value)
    foreign = tmp_path / "picture.tif"
    foreign.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(InputError, match="convert it"):
        probe(foreign)


def _sheet(tmp_path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    for _, image, _, _ in rows:
        if not (tmp_path / image).exists():
            write_array(np.zeros((32, 32), np.uint8), tmp_path / image, channel_names=["DAPI"])
    sheet = tmp_path / "samples.csv"
    sheet.write_text("sample,image,reference,landmarks\n" + "".join(f"{s},{i},{r},{lm}\n" for s, i, r, lm in rows))
    return sheet


def test_names_that_would_share_a_task_id_or_output_are_refused(tmp_path: Path) -> None:
    sheet = _sheet(tmp_path, [("m:1", "a.ome.tif", "true", ""), ("m:1", "b.ome.tif", "false", ""),
                              ("m_1", "c.ome.tif", "true", ""), ("m_1", "d.ome.tif", "false", "")])
    with pytest.raises(InputError, match="differ only in characters that task ids replace"):
        read_samplesheet(sheet)
    sheet = _sheet(tmp_path, [("s", "ref.ome.tif", "true", ""), ("s", "r 1.ome.tif", "false", ""),
                              ("s", "r_1.ome.tif", "false", "")])
    with pytest.raises(InputError, match="outputs would collide"):
        read_samplesheet(sheet)


def test_validate_checks_landmark_files_as_run_would(tmp_path: Path) -> None:
    (tmp_path / "ref.csv").write_text("x,y\n1,2\n3,4\n")
    (tmp_path / "nan.csv").write_text("x,y\n1,nan\n3,4\n")
    (tmp_path / "short.csv").write_text("x,y\n1,2\n")
    sheet = _sheet(tmp_path, [("s", "ref.ome.tif", "true", "ref.csv"), ("s", "a.ome.tif", "false", "nan.csv"),
                              ("s", "b.ome.tif", "false", "short.csv")])
    with pytest.raises(InputError) as error:
        read_samplesheet(sheet)
    assert "not a finite number" in str(error.value) and "1 landmarks, but the reference's file" in str(error.value)


def test_json_written_by_slimreg_is_valid_json_even_with_nan(tmp_path: Path) -> None:
    path = write_json_atomic(tmp_path / "q.json", {"a": float("nan"), "b": [np.float64("inf"), 1.5], "c": "x"})
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    assert json.loads(path.read_text()) == {"a": None, "b": [None, 1.5], "c": "x"}


def test_a_disk_refusal_never_suggests_the_value_already_in_use() -> None:
    from slimreg.plan import Plan
    from slimreg.preflight import remediation

    for compression in ("deflate", "lzw", "jpeg", "none"):
        plan = Plan(tasks=[], registration={"compression": compression, "preset": "medium"}, settings={},
                    notes=[], outdir="/tmp/out", samplesheet="s.csv")
        for hint in remediation(plan, 1, "Disk", Path("/tmp/out")):
            assert f"{compression} -> {compression}" not in hint


def test_clean_up_removes_only_slimregs_own_leftovers(tmp_path: Path) -> None:
    from slimreg.atomic import remove_partials, temporary_sibling

    out = tmp_path / "out"
    (out / "registered" / "s").mkdir(parents=True)
    ours = temporary_sibling(out / "registered" / "s" / "img.ome.tif")
    ours.write_bytes(b"half")
    scratch = out / "transforms" / "s" / ".slimreg-work-abc123"
    scratch.mkdir(parents=True)
    (scratch / "valis").mkdir()
    users = [out / "scan.partial-1.ome.tif", out / "registered" / "s" / "my.partial-copy.tif"]
    for path in users:
        path.write_bytes(b"a user's file")
    protected_input = temporary_sibling(out / "registered" / "s" / "input.ome.tif")
    protected_input.write_bytes(b"an input that happens to look like ours")
    removed = remove_partials(out, protected={protected_input})
    assert set(removed) == {ours, scratch}
    assert all(p.is_file() for p in [*users, protected_input]) and not scratch.exists()


def test_an_output_over_an_input_is_refused_before_any_work(tmp_path: Path) -> None:
    from slimreg.errors import ParameterError
    from slimreg.runner import run_job

    out = tmp_path / "out"
    (out / "registered" / "s").mkdir(parents=True)
    reference = write_array(np.zeros((32, 32), np.uint8), tmp_path / "ref.ome.tif", channel_names=["DAPI"])
    victim = write_array(np.zeros((32, 32), np.uint8), out / "registered" / "s" / "img.ome.tif",
                         channel_names=["DAPI"])
    before = victim.read_bytes()
    sheet = tmp_path / "samples.csv"
    sheet.write_text(f"sample,image,reference\ns,{reference},true\ns,{victim},false\n")
    with pytest.raises(ParameterError, match="would be written over an input"):
        run_job(sheet, out, engine="feature")
    assert victim.read_bytes() == before


@pytest.mark.parametrize(("flag", "value"), [("--max-chunk-gb", "nan"), ("--max-chunk-gb", "inf"),
                                             ("--timeout-per-task", "nan"), ("--timeout-per-task", "-1")])
def test_non_finite_numbers_are_refused_with_one_line(tmp_path: Path, flag: str, value: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from slimreg.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--input", str(tmp_path / "s.csv"), "--outdir", str(tmp_path / "o"), "--mode", "subprocess",
              flag, value])
    assert exit_info.value.code == 2
    assert f"'{value}' must be a finite number above 0" in capsys.readouterr().err


def _finished_register_task(tmp_path: Path):
    """A one-task plan whose task has finished: its output in place and its completion record written."""
    from slimreg.completion import mark_complete
    from slimreg.plan import Plan, Task

    source = write_array(np.arange(4096, dtype=np.uint16).reshape(64, 64), tmp_path / "in.ome.tif")
    output = tmp_path / "out" / "registered" / "s" / "in.ome.tif"
    output.parent.mkdir(parents=True)
    output.write_bytes(source.read_bytes())
    task = Task("register-s-b1", "register", "s", inputs=[str(source)], outputs=["registered/s/in.ome.tif"])
    plan = Plan(samplesheet="s.csv", outdir=str(tmp_path / "out"), registration={}, settings={}, tasks=[task],
                notes=[])
    mark_complete(plan, task, tmp_path / "out", None)
    return plan, task, source, output


def test_resume_redoes_a_task_whose_output_was_truncated(tmp_path: Path) -> None:
    from slimreg.completion import is_complete

    plan, task, source, output = _finished_register_task(tmp_path)
    assert is_complete(plan, task, tmp_path / "out")
    output.write_bytes(source.read_bytes()[:-100])  # truncated after the task finished
    assert not is_complete(plan, task, tmp_path / "out")


def test_resume_redoes_a_task_that_other_code_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task finished by another slimreg (an upgrade, a local change) is run again: its outputs may not be what
    this code writes. The record holds a digest of slimreg's own source files."""
    from slimreg import completion

    plan, task, _, _ = _finished_register_task(tmp_path)
    assert completion.is_complete(plan, task, tmp_path / "out")
    assert len(completion.code_digest()) == 64
    monkeypatch.setattr(completion, "code_digest", lambda: "0" * 64)  # slimreg's code changed since
    assert not completion.is_complete(plan, task, tmp_path / "out")


def _damage_one_tile(path: Path, tile: int = 1) -> None:
    """Overwrite the compressed bytes of one level-0 tile (the header and tile index stay intact)."""
    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages[0]
        offset, count = page.dataoffsets[tile], page.databytecounts[tile]
    data = bytearray(path.read_bytes())
    data[offset + 2: offset + count - 2] = b"\xff" * (count - 4)
    path.write_bytes(bytes(data))


def test_a_damaged_tile_is_named_not_read_as_black(tmp_path: Path) -> None:
    from slimreg.io.integrity import damaged_segment
    from slimreg.io.read import TiffImage
    from slimreg.io.vips import pyvips, to_numpy

    rng = np.random.default_rng(1)
    path = tifffile_tiled(tmp_path / "img.tif", rng.integers(0, 255, (512, 512), dtype=np.uint8))
    assert damaged_segment(path) is None
    _damage_one_tile(path, tile=1)
    assert damaged_segment(path).startswith("page 0, tile 1 (x 256, y 0")
    with pytest.raises(pyvips.Error):  # libvips alone would hand back zeros for that tile
        to_numpy(TiffImage(path).plane())


def tifffile_tiled(path: Path, pixels: np.ndarray) -> Path:
    tifffile.imwrite(path, pixels, tile=(256, 256), compression="deflate")
    return path


@pytest.mark.slow
def test_a_run_with_a_damaged_tile_fails_that_image_and_names_file_and_tile(tmp_path: Path) -> None:
    from slimreg.demo import make_demo_data
    from slimreg.runner import run_job

    make_demo_data(tmp_path / "demo", size=256, frames=4)
    moving = tmp_path / "demo" / "mif_round1.ome.tif"
    _damage_one_tile(moving, tile=0)
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(f"sample,image,reference\nmif,{tmp_path / 'demo' / 'mif_round0.ome.tif'},true\n"
                     f"mif,{moving},false\n")
    summary = run_job(sheet, tmp_path / "out", engine="feature", preset="low", progress=False)
    register = next(o for o in summary.outcomes if o.kind == "register")
    assert register.status == "failed"
    assert str(moving) in register.message and "is damaged: page 0, tile 0" in register.message
    assert "copy the file again" in register.message
    assert not (tmp_path / "out" / "registered" / "mif" / "mif_round1.ome.tif").exists()
    assert summary.report is not None  # the report is still written, with the failure in it
    [image] = summary.images  # and the result names the image, unregistered, with the same reason
    assert (image.sample, image.image, image.registered, image.qc) == ("mif", "mif_round1", False, None)
    assert "is damaged: page 0, tile 0" in image.error


def _one_task_plan(tmp_path: Path, ids: tuple[str, ...] = ("register-a-b1", "register-b-b1")):
    from slimreg.plan import Plan, Task

    tasks = [Task(task_id, "register", task_id.split("-")[1], inputs=[], outputs=[f"x/{task_id}.txt"])
             for task_id in ids]
    root = tmp_path / "out"
    (root / "pipeline_info").mkdir(parents=True)
    plan = Plan(samplesheet="s.csv", outdir=str(root), registration={"preset": "medium"}, settings={}, tasks=tasks,
                notes=[])
    plan_path, _ = plan.write(root / "pipeline_info")
    return plan, plan_path, root


def test_in_serial_mode_a_disk_error_fails_only_its_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import slimreg.runner as runner

    plan, plan_path, root = _one_task_plan(tmp_path)

    def execute(plan, task, root, **_):  # the first task meets a full disk, the second works
        if task.id == "register-a-b1":
            raise OSError(errno.ENOSPC, "No space left on device", str(root / "x" / "a.partial-1"))
        (root / "x").mkdir(exist_ok=True)
        (root / "x" / f"{task.id}.txt").write_text("ok")

    monkeypatch.setattr(runner, "execute", execute)
    log = runner.RunLog(root / "pipeline_info" / "run.log", echo=False)
    outcomes = {o.id: o for o in runner._execute_plan(plan, plan_path, root, "serial", 1, None, 0, False, False,
                                                      log, False)}
    log.close()
    assert outcomes["register-a-b1"].status == "failed"
    assert outcomes["register-a-b1"].message == (f"{root / 'x' / 'a.partial-1'}: No space left on device. Fix: free "
                                                 "space there, or choose another --outdir.")
    assert outcomes["register-b-b1"].status == "done"


def test_a_subprocess_task_that_writes_much_to_stderr_does_not_hang(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Its stderr goes to a file: 1 MB of output (a pipe holds 64 kB) and the failure is seen at once."""
    import sys
    import time

    import slimreg.runner as runner
    import slimreg.supervise as supervise

    plan, plan_path, root = _one_task_plan(tmp_path, ("register-a-b1",))
    chatty = "import sys; sys.stderr.write('x' * 1_000_000 + '\\nthe last words\\n'); sys.exit(3)"
    monkeypatch.setattr(supervise, "task_command", lambda *args: [sys.executable, "-c", chatty])
    log = runner.RunLog(root / "pipeline_info" / "run.log", echo=False)
    start = time.monotonic()
    outcome = runner._execute_plan(plan, plan_path, root, "subprocess", 1, 60.0, 0, False, False, log, False)[0]
    log.close()
    assert time.monotonic() - start < 30
    assert (outcome.status, outcome.message) == ("failed", "the last words")
    assert runner.task_log_path(root, "register-a-b1").stat().st_size > 1_000_000


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_lives(tmp_path: Path) -> None:
    """The lock is the kernel's (flock): held while the first run lives, gone the moment it is killed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from slimreg.demo import make_demo_data
    from slimreg.errors import ParameterError
    from slimreg.lock import LOCK_NAME, OutputFolderLock
    from slimreg.runner import run_job
    from slimreg.tasks import TEST_SLEEP_HOOK

    make_demo_data(tmp_path / "demo", size=256, frames=4)
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(f"sample,image,reference\nmif,{tmp_path / 'demo' / 'mif_round0.ome.tif'},true\n"
                     f"mif,{tmp_path / 'demo' / 'mif_round1.ome.tif'},false\n")
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "slimreg.cli", "run", "--input", str(sheet), "--outdir", str(out),
                              "--preset", "low"],
                             env={**os.environ, TEST_SLEEP_HOOK: "register-mif-b1:120"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (out / LOCK_NAME).is_file() or not (out / LOCK_NAME).read_text().startswith("pid"):
            assert time.monotonic() < deadline and first.poll() is None, "the first run did not start"
            time.sleep(0.2)
        with pytest.raises(ParameterError, match=rf"another slimreg run is writing to this folder \(pid {first.pid} "):
            run_job(sheet, out, preset="low", progress=False)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the killed run's lock goes with it and with its task, which ends with its runner (PR_SET_PDEATHSIG) a moment
    # later: nothing stale to clear
    deadline = time.monotonic() + 10
    while True:
        try:
            with OutputFolderLock(out):
                break
        except ParameterError:
            assert time.monotonic() < deadline, "the killed run's lock outlived it and its task"
            time.sleep(0.2)


@pytest.mark.parametrize("case", ["outdir is a file", "outdir under a file", "samplesheet is a folder",
                                  "symlink loop", "1 x 1 px image"])
def test_bad_paths_and_tiny_images_get_one_line_and_exit_2(tmp_path: Path, case: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from slimreg.cli import main

    reference = write_array(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8),
                            tmp_path / "ref.ome.tif", channel_names=["DAPI"])
    moving = tmp_path / "mov.ome.tif"
    moving.write_bytes(reference.read_bytes())
    (tmp_path / "afile").write_text("not a folder")
    outdir, sheet, expected = tmp_path / "out", tmp_path / "sheet.csv", ""
    if case == "outdir is a file":
        outdir, expected = tmp_path / "afile", "a file is in the way of a folder"
    elif case == "outdir under a file":
        outdir, expected = tmp_path / "afile" / "sub", "part of that path is a file, not a folder"
    elif case == "samplesheet is a folder":
        sheet, expected = tmp_path, "is a folder, not a samplesheet"
    elif case == "symlink loop":
        (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
        (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
        moving, expected = tmp_path / "loop1", "is a loop of symbolic links"
    else:
        moving, expected = write_array(np.zeros((1, 1), np.uint8), tmp_path / "one.ome.tif",
                                       channel_names=["DAPI"]), "is 1 x 1 px: too small to register"
    if sheet.suffix == ".csv":
        sheet.write_text(f"sample,image,reference\ns,{reference},true\ns,{moving},false\n")
    assert main(["run", "--input", str(sheet), "--outdir", str(outdir)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and err.startswith("slimreg run: error: ")


def test_operating_system_errors_get_a_fix_that_fits_their_cause() -> None:
    import errno

    from slimreg.errors import os_error_message

    assert os_error_message(OSError(errno.EROFS, "Read-only file system", "/mnt/ro/out")) == \
        "/mnt/ro/out: Read-only file system. Fix: choose a writable --outdir."
    assert "check its permissions" in os_error_message(PermissionError(errno.EACCES, "Permission denied", "/x"))
    assert "free space" in os_error_message(OSError(errno.ENOSPC, "No space left on device"))


def test_images_whose_strips_make_reading_unbounded_are_refused_with_the_fix(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A compressed strip past libtiff's 50 MB cap cannot be read at all; a huge uncompressed one costs its whole
    size in memory (40000 px square, one strip: 1.65 GB peak for a 1000 px view). Both are refused up front."""
    import slimreg.samplesheet as samplesheet

    reference = tifffile_tiled(tmp_path / "ref.tif", np.random.default_rng(0).integers(0, 255, (512, 512),
                                                                                       dtype=np.uint8))
    compressed = tmp_path / "one_strip_deflate.tif"  # 8000 x 8000: 61 MB decoded, a few kB on disk
    tifffile.imwrite(compressed, np.zeros((8000, 8000), np.uint8), rowsperstrip=8000, compression="deflate")
    assert probe(compressed).segment_bytes == 8000 * 8000
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(f"sample,image,reference\ns,{reference},true\ns,{compressed},false\n")
    with pytest.raises(InputError, match=r"strips of 61 MB each .* Convert it to a tiled pyramid"):
        read_samplesheet(sheet)

    uncompressed = tmp_path / "one_strip.tif"
    tifffile.imwrite(uncompressed, np.zeros((3000, 3000), np.uint8), rowsperstrip=3000)
    sheet.write_text(f"sample,image,reference\ns,{reference},true\ns,{uncompressed},false\n")
    read_samplesheet(sheet)  # 9 MB strips: fine
    monkeypatch.setattr(samplesheet, "MAX_SEGMENT_BYTES", 8 * 1024**2)
    with pytest.raises(InputError, match="limit 8 MB for uncompressed data"):
        read_samplesheet(sheet)


def test_the_estimate_counts_the_strip_a_read_must_decode(tmp_path: Path) -> None:
    from slimreg.estimate import SAFETY
    from slimreg.plan import PlanSettings, build_plan
    from slimreg.register.settings import RegistrationSettings

    pixels = np.random.default_rng(0).integers(0, 255, (3000, 3000), dtype=np.uint8)
    reference = tifffile_tiled(tmp_path / "ref.tif", pixels)
    peaks = {}
    for layout in ("tiled", "one strip"):
        moving = tmp_path / f"{layout.replace(' ', '_')}.tif"
        if layout == "tiled":
            tifffile_tiled(moving, pixels)
        else:
            tifffile.imwrite(moving, pixels, rowsperstrip=3000)
        sheet = tmp_path / f"{layout}.csv"
        sheet.write_text(f"sample,image,reference\ns,{reference},true\ns,{moving},false\n")
        plan = build_plan(read_samplesheet(sheet), tmp_path / "out", RegistrationSettings.from_preset("low"),
                          PlanSettings())
        peaks[layout] = next(t for t in plan.tasks if t.kind == "register").peak_memory_bytes
    assert peaks["one strip"] - peaks["tiled"] == pytest.approx(SAFETY * (3000 * 3000 - 256 * 256), abs=16)


@pytest.mark.parametrize("limit", ["--max-memory", "estimate"])
def test_a_task_past_its_budget_is_stopped_by_slimreg_and_retried_lower(tmp_path: Path, limit: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner measures each task's process tree and stops it past its budget (the estimate times the margin,
    or --max-memory if lower), naming the budget, then retries one preset lower: never the kernel's OOM killer."""
    import slimreg.runner as runner
    import slimreg.supervise as supervise
    from slimreg.demo import make_demo_data

    make_demo_data(tmp_path / "demo", size=256, frames=4)
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(f"sample,image,reference\nmif,{tmp_path / 'demo' / 'mif_round0.ome.tif'},true\n"
                     f"mif,{tmp_path / 'demo' / 'mif_round1.ome.tif'},false\n")
    options = {}
    if limit == "--max-memory":
        options["max_memory"] = 40 * 1024**2  # a Python process with numpy alone is larger
    else:
        monkeypatch.setattr(supervise, "BUDGET_MARGIN", 0.1)
    summary = runner.run_job(sheet, tmp_path / "out", preset="medium", progress=False, **options)
    register = next(o for o in summary.outcomes if o.kind == "register")
    assert register.status == "killed" and register.attempts == 2 and register.presets == ["", "low"]
    assert register.message.startswith("stopped by slimreg: its processes used ")
    expected = "--max-memory 0.04 GB" if limit == "--max-memory" else "x 0.1) at preset low; no retry left"
    assert expected in register.message
    log = (tmp_path / "out" / "pipeline_info" / "run.log").read_text()
    assert "register-mif-b1: retrying with preset low" in log


@pytest.mark.slow
def test_peaks_are_labelled_by_where_they_were_measured(tmp_path: Path) -> None:
    import json

    from slimreg.demo import make_demo_data
    from slimreg.runner import run_job

    make_demo_data(tmp_path / "demo", size=256, frames=4)
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(f"sample,image,reference\nmif,{tmp_path / 'demo' / 'mif_round0.ome.tif'},true\n"
                     f"mif,{tmp_path / 'demo' / 'mif_round1.ome.tif'},false\n")
    for mode, label in (("subprocess", "own process"), ("serial", "shared process")):
        out = tmp_path / mode
        assert run_job(sheet, out, mode=mode, preset="low", progress=False).ok
        logs = [json.loads(p.read_text()) for p in (out / "pipeline_info" / "tasks").glob("*.memory.json")]
        assert logs and {log["measured_in"] for log in logs} == {label}
        assert (label == "shared process") == ("(shared process)" in (out / "report" / "report.html").read_text())


def test_a_failed_batch_names_every_image_and_its_fix_in_the_summary(tmp_path: Path) -> None:
    """A batch's message joins its failed images (about 300 characters each); the summary shows them whole, and
    cuts only a runaway line, at a word, naming the log that has all of it."""
    from slimreg.run_summary import last_message

    log = tmp_path / "register-s-b1.log"
    failures = [f"img{i}: /data/img{i}.ome.tif: shows no tissue in its registration channel (blank or saturated). "
                "Fix: check the image, or choose another --channel." + " detail" * 20 for i in range(4)]
    message = "slimreg run-task: error: " + "; ".join(failures)
    assert len(message) > 500
    assert last_message(f"=== attempt 1\n{message}\n", log) == message
    runaway = "word " * 2000
    cut = last_message(runaway, log)
    assert cut.endswith(f"... (cut here; all of it is in {log})")
    assert cut.startswith("word word") and "wor ..." not in cut and len(cut) < len(runaway)


# Issue 41: a second round of hostile and careless use. Each test failed on the code before its fix.

def _tiny_pair(folder: Path) -> tuple[Path, Path]:
    """A reference and a moving image of 64 px (noise): enough for every check made before registration."""
    rng = np.random.default_rng(0)
    reference = write_array(rng.integers(0, 255, (64, 64), dtype=np.uint8), folder / "ref.ome.tif",
                            channel_names=["DAPI"])
    moving = write_array(rng.integers(0, 255, (64, 64), dtype=np.uint8), folder / "mov.ome.tif",
                         channel_names=["DAPI"])
    return reference, moving


@pytest.mark.parametrize("command", ["register", "register --include-reference", "probe"])
def test_an_output_never_replaces_an_input_in_any_command(tmp_path: Path, command: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`register --outdir` the moving image's own folder used to replace the image with its registered copy, exit
    0; `probe --out` the image itself replaced it with JSON. Now refused before any work, the input untouched."""
    from slimreg.cli import main

    reference, moving = _tiny_pair(tmp_path / "data")
    victim = reference if "include-reference" in command else moving
    before = victim.read_bytes()
    if command == "probe":
        argv = ["probe", "--file", str(victim), "--out", str(victim)]
    else:
        argv = ["register", "--reference", str(reference), "--moving", str(moving), "--outdir", str(victim.parent),
                *command.split()[1:]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{victim}: is an input of this command: writing an output there would replace it." in err
    assert "Fix: choose" in err and "Traceback" not in err
    assert victim.read_bytes() == before


def test_no_slimreg_writer_replaces_a_protected_input(tmp_path: Path) -> None:
    """The rule sits in the one place every output goes through (slimreg.atomic), also through a link to it."""
    from slimreg.atomic import write_text_atomic
    from slimreg.guard import protecting

    victim = tmp_path / "sheet.csv"
    victim.write_text("sample,image,reference\n")
    (tmp_path / "link.csv").symlink_to(victim)
    with protecting([victim]):
        for target in (victim, tmp_path / "link.csv"):
            with pytest.raises(InputError, match="is an input of this command"):
                write_text_atomic(target, "plan")
        write_text_atomic(tmp_path / "other.csv", "fine")
    write_text_atomic(tmp_path / "link.csv", "after the command, the link may be replaced")
    assert victim.read_text() == "sample,image,reference\n"


@pytest.mark.parametrize("planted", ["symlink", "hard link"])
def test_a_planted_lock_file_is_refused_and_its_target_kept(tmp_path: Path, planted: str) -> None:
    """`.slimreg.lock` as a link to another file used to empty that file (opened through the link, truncated)."""
    from slimreg.lock import LOCK_NAME, OutputFolderLock

    victim = tmp_path / "precious.txt"
    victim.write_text("a file elsewhere\n")
    out = tmp_path / "out"
    out.mkdir()
    if planted == "symlink":
        (out / LOCK_NAME).symlink_to(victim)
    else:
        (out / LOCK_NAME).hardlink_to(victim)
    expected = "is a symbolic link" if planted == "symlink" else r"has 2 names \(hard links\)"
    with pytest.raises(InputError, match=expected), OutputFolderLock(out):
        pass
    assert victim.read_text() == "a file elsewhere\n"


def test_the_lock_file_is_never_truncated(tmp_path: Path) -> None:
    """The holder line is written over a fixed width and blanked at the end; no call truncates the file."""
    import os

    from slimreg.lock import LOCK_NAME, OutputFolderLock

    truncated: list[int] = []
    real = os.ftruncate

    def spy(fd: int, length: int) -> None:
        truncated.append(length)
        real(fd, length)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "ftruncate", spy)
        with OutputFolderLock(tmp_path):
            assert (tmp_path / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} ")
        assert (tmp_path / LOCK_NAME).read_text().strip() == ""
    assert truncated == [] and (tmp_path / LOCK_NAME).stat().st_size > 0


@pytest.mark.parametrize("planted", ["pipeline_info/run.log", "pipeline_info/tasks/register-s-b1.log",
                                     "pipeline_info/tasks"])
def test_links_planted_in_the_output_folder_are_not_written_through(tmp_path: Path, planted: str,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """run.log and a task's log (or the folder holding them) as links used to make slimreg append outside the
    output folder; now the run is refused before any work, naming the link."""
    from slimreg.cli import main

    reference, moving = _tiny_pair(tmp_path / "data")
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(f"sample,image,reference\ns,{reference},true\ns,{moving},false\n")
    out = tmp_path / "out"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    victim = outside / "victim.log"
    victim.write_text("untouched\n")
    link = out / planted
    link.parent.mkdir(parents=True)
    link.symlink_to(outside if planted.endswith("tasks") else victim)
    assert main(["run", "--input", str(sheet), "--outdir", str(out), "--mode", "serial"]) == 2
    err = capsys.readouterr().err
    assert f"{link}: is a symbolic link" in err and "Fix: remove the link" in err
    assert sorted(p.name for p in outside.iterdir()) == ["victim.log"]
    assert victim.read_text() == "untouched\n"
    assert not (out / "registered").exists()


@pytest.mark.parametrize("command", ["register", "plan", "run"])
def test_a_compression_this_libvips_cannot_write_is_refused_before_any_work(
        tmp_path: Path, command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """zstd (which pyvips-binary's libvips lacks) used to be found when the first registered image was written,
    minutes into a run; now `register`, `plan` and `run` refuse it when they read their options."""
    import slimreg.io.write as write
    import slimreg.register.batch as batch
    from slimreg.cli import main

    monkeypatch.setattr(write, "compression_supported", lambda compression: compression != "zstd")

    def registration_started(*args: object, **kwargs: object) -> None:
        raise AssertionError("registration started")

    monkeypatch.setattr(batch, "register_images", registration_started)
    reference, moving = _tiny_pair(tmp_path / "data")
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(f"sample,image,reference\ns,{reference},true\ns,{moving},false\n")
    out = tmp_path / "out"
    if command == "register":
        argv = ["register", "--reference", str(reference), "--moving", str(moving), "--outdir", str(out)]
    else:
        argv = [command, "--input", str(sheet), "--outdir", str(out)] + (["--mode", "serial"] if command == "run"
                                                                          else [])
    assert main([*argv, "--compression", "zstd"]) == 2
    err = capsys.readouterr().err
    assert "--compression zstd: this libvips build" in err and "cannot write zstd-compressed TIFF" in err
    assert "Fix: use --compression deflate (the default) or lzw." in err
    assert not out.exists()


@pytest.mark.parametrize(("column", "text"), [("sample", "tumour\t1"), ("sample", "tumour\x001"),
                                              ("session", "s\n1"), ("sample", "tumour\x7f1")])
def test_control_characters_in_names_are_refused_naming_the_row(tmp_path: Path, column: str, text: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A tab in a sample name used to pass validation and shift every column after it in slimreg_mqc.tsv; a NUL
    byte passed too and ended in a traceback (exit 1) when it reached a file name."""
    import csv

    from slimreg.cli import main

    reference, moving = _tiny_pair(tmp_path)
    sheet = tmp_path / "sheet.csv"
    with sheet.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample", "image", "reference", "session"])
        writer.writerow(["s" if column == "session" else text, reference.name, "true", ""])
        writer.writerow(["s" if column == "session" else text, moving.name, "false",
                         text if column == "session" else ""])
    assert main(["validate", str(sheet)]) == 2
    err = capsys.readouterr().err
    row = "row 3" if column == "session" else "row 2"
    assert f"  - {row}: {column} {text!r} contains control character(s)" in err
    assert "Traceback" not in err and err.startswith("slimreg validate: error: ")


def test_the_multiqc_table_keeps_its_columns_whatever_a_name_holds(tmp_path: Path) -> None:
    """Defence behind validation: results written before it (or by hand) with a tab or newline in a name."""
    from slimreg.report import build_report

    log = tmp_path / "results" / "transforms" / "a\tb" / "register-a-b1.register.json"
    log.parent.mkdir(parents=True)
    log.write_text(json.dumps({"images": [{"image": "x.ome.tif", "stem": "x\ny", "status": "failed",
                                           "error": "no tissue"}]}))
    build_report(tmp_path / "results", tmp_path / "report")
    lines = (tmp_path / "report" / "slimreg_mqc.tsv").read_text().splitlines()
    table = [line for line in lines if not line.startswith("#")]
    assert len(table) == 2 and len({line.count("\t") for line in table}) == 1
    assert table[1].startswith("a\\tb_x\\ny\tfailed")


@pytest.mark.parametrize("content", [b"II*\x00\x08\x00\x00\x00\xff\xfe", b"x,y\n1,2\n3,4 \xb5m\n"],
                         ids=["a TIFF", "a Latin-1 byte"])
def test_a_landmarks_file_that_is_not_utf8_gets_one_message_and_exit_2(tmp_path: Path, content: bytes,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """It used to end in a UnicodeDecodeError traceback, exit 1."""
    from slimreg.cli import main

    reference, moving = _tiny_pair(tmp_path)
    (tmp_path / "ref.csv").write_text("x,y\n1,2\n3,4\n")
    (tmp_path / "mov.csv").write_bytes(content)
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(f"sample,image,reference,landmarks\ns,{reference.name},true,ref.csv\n"
                     f"s,{moving.name},false,mov.csv\n")
    assert main(["validate", str(sheet)]) == 2
    err = capsys.readouterr().err
    assert f"row 3: {tmp_path / 'mov.csv'}: is not a UTF-8 text file" in err
    assert "Fix: give a CSV with header x,y" in err and "Traceback" not in err


def test_a_name_too_long_for_a_file_name_is_refused_up_front_with_the_limit(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A 300-character sample name used to pass validation and fail later, on an internal file name."""
    from slimreg.cli import main

    reference, moving = _tiny_pair(tmp_path)
    sheet = tmp_path / "sheet.csv"
    for sample, refused in (("s" * 300, True), ("s" * 150, False)):
        sheet.write_text(f"sample,image,reference\n{sample},{reference.name},true\n{sample},{moving.name},false\n")
        assert main(["validate", str(sheet)]) == (2 if refused else 0)
        err = capsys.readouterr().err
        assert ("past the 255-byte limit on one file name; shorten them by at least" in err) == refused
    sheet.write_text(f"sample,image,reference\n{'s' * 300},{reference.name},true\n{'s' * 300},{moving.name},false\n")
    assert main(["run", "--input", str(sheet), "--outdir", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def _stack_with_pixel_size(path: Path, case: str) -> Path:
    """12 frames of 64 px whose header holds the pixel size ``case`` describes (an OME value, or N dpi)."""
    frames = np.random.default_rng(2).integers(0, 4000, (12, 64, 64), dtype=np.uint16)
    if case.endswith("dpi"):  # what a TIFF converted from a JPEG or a screenshot carries
        dpi = float(case.removesuffix(" dpi"))
        tifffile.imwrite(path, frames, resolution=(dpi, dpi), resolutionunit="INCH", metadata={"axes": "TYX"})
    else:
        size = float(case.removeprefix("PhysicalSizeX "))
        tifffile.imwrite(path, frames, metadata={"axes": "TYX", "PhysicalSizeX": size, "PhysicalSizeY": size})
    return path


@pytest.mark.parametrize("case", ["PhysicalSizeX 0", "PhysicalSizeX nan", "PhysicalSizeX -0.5", "PhysicalSizeX inf",
                                  "72 dpi", "96 dpi", "150 dpi", "300 dpi"])
def test_pixel_sizes_no_microscope_has_are_unknown_with_one_warning(tmp_path: Path, case: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """0, NaN, negative or infinite OME sizes used to pass validation, then crash projections (ZeroDivisionError,
    "cannot convert NaN to integer ratio") and print NaN in `slimreg info`; 72 dpi read as 353 um/px and was
    written into outputs' OME metadata. Now: unknown, one warning per file, and no pixel size in outputs."""
    from slimreg.cli import main
    from slimreg.plan import PlanSettings, build_plan
    from slimreg.register.settings import RegistrationSettings
    from slimreg.tasks import execute

    reference = _stack_with_pixel_size(tmp_path / "ref.ome.tif" if "Physical" in case else tmp_path / "ref.tif", case)
    moving = _stack_with_pixel_size(tmp_path / "mov.ome.tif" if "Physical" in case else tmp_path / "mov.tif", case)
    for _ in range(2):  # read twice here, and once more by `info`
        assert probe(reference).pixel_size_um is None
    assert main(["info", str(reference)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["pixel_size_um"] is None
    assert captured.err.count(f"slimreg: warning: {reference}: ") == 1  # once, however often it is read
    assert "is treated as unknown" in captured.err
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(f"sample,image,reference\ns,{reference.name},true\ns,{moving.name},false\n")
    assert main(["validate", str(sheet)]) == 0
    plan = build_plan(read_samplesheet(sheet), tmp_path / "out", RegistrationSettings.from_preset("low"),
                      PlanSettings())
    projections = [t for t in plan.tasks if t.kind == "project"]
    assert len(projections) == 2
    # the stacks' frames are corrected for motion first (on by default), then projected: neither writes a size
    for task in [t for t in plan.tasks if t.kind in ("template", "motion", "project")]:
        execute(plan, task, tmp_path / "out")
        if task.kind != "template":
            with tifffile.TiffFile(tmp_path / "out" / task.outputs[0]) as written:
                assert written.is_ome and "PhysicalSize" not in written.ome_metadata


def test_microscope_pixel_sizes_are_kept_in_any_unit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The check sets aside screen resolutions and impossible values only: 0.5 um/px written in pixels per inch
    (50800 dpi) or per centimetre, or in OME, is read as it is, without a word."""
    data = np.zeros((64, 64), np.uint16)
    tifffile.imwrite(tmp_path / "inch.tif", data, resolution=(50800, 50800), resolutionunit="INCH")
    tifffile.imwrite(tmp_path / "cm.tif", data, resolution=(20000, 20000), resolutionunit="CENTIMETER")
    write_array(data, tmp_path / "ome.ome.tif", pixel_size_um=(0.325, 0.325))
    assert probe(tmp_path / "inch.tif").pixel_size_um == pytest.approx((0.5, 0.5))
    assert probe(tmp_path / "cm.tif").pixel_size_um == pytest.approx((0.5, 0.5))
    assert probe(tmp_path / "ome.ome.tif").pixel_size_um == pytest.approx((0.325, 0.325))
    assert "warning" not in capsys.readouterr().err


def test_demo_data_never_replaces_a_users_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`demo-data DIR` used to overwrite samplesheet.csv and *.landmarks.csv there silently. Now it writes nothing
    and names them; the same demo made again over itself is allowed (running the quick start twice works)."""
    from slimreg.cli import main

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "samplesheet.csv").write_text("sample,image,reference\nmy,scan.ome.tif,true\n")
    (folder / "mif_round0.landmarks.csv").write_text("x,y\n10,20\n")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main(["demo-data", str(folder), "--size", "256", "--frames", "4"]) == 2
    err = capsys.readouterr().err
    assert f"{folder}: already holds 2 file(s) that demo-data would replace" in err
    assert "mif_round0.landmarks.csv, samplesheet.csv; nothing was written" in err and "pick an empty folder" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no image, no scratch folder either

    again = tmp_path / "demo"
    assert main(["demo-data", str(again), "--size", "256", "--frames", "4"]) == 0
    first = {p.name: p.read_bytes() for p in again.iterdir()}
    assert main(["demo-data", str(again), "--size", "256", "--frames", "4"]) == 0
    assert {p.name: p.read_bytes() for p in again.iterdir()} == first
    assert main(["demo-data", str(again), "--size", "256", "--frames", "6"]) == 2  # another demo: refused
    assert {p.name: p.read_bytes() for p in again.iterdir()} == first


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_a_task_ends_with_its_runner_and_holds_the_lock_until_it_has(tmp_path: Path, signal_name: str) -> None:
    """Killing only `slimreg run` used to leave its task running, orphaned, with the lock released: a `--resume`
    started at once deleted the orphan's live scratch folder, and the orphan then replaced outputs. Now the task
    holds the lock's open file (the kernel's flock lasts until it exits) and is killed with its runner."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from slimreg.demo import make_demo_data
    from slimreg.lock import LOCK_NAME, OutputFolderLock
    from slimreg.tasks import TEST_SLEEP_HOOK

    make_demo_data(tmp_path / "demo", size=256, frames=4)
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(f"sample,image,reference\nmif,{tmp_path / 'demo' / 'mif_round0.ome.tif'},true\n"
                     f"mif,{tmp_path / 'demo' / 'mif_round1.ome.tif'},false\n")
    out = tmp_path / "out"
    runner = subprocess.Popen([sys.executable, "-m", "slimreg.cli", "run", "--input", str(sheet), "--outdir",
                               str(out), "--preset", "low"], env={**os.environ, TEST_SLEEP_HOOK: "register-mif-b1:120"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    task: psutil.Process | None = None
    try:
        deadline = time.monotonic() + 60
        while task is None:
            assert time.monotonic() < deadline and runner.poll() is None, "the run did not start its task"
            task = next((p for p in psutil.Process(runner.pid).children() if _cmdline_has(p, "register-mif-b1")),
                        None)
            time.sleep(0.2)
        time.sleep(1.0)  # the task is under way (sleeping in its hook)
        holds_lock = str(out / LOCK_NAME) in [f.path for f in task.open_files()]
        runner.send_signal(getattr(signal, signal_name))
        runner.wait()
        _, alive = psutil.wait_procs([task], timeout=10)
        assert not alive, "the task outlived its runner"
        assert holds_lock, "the task does not hold the output folder's lock"
    finally:
        runner.kill()
        runner.wait()
        if task is not None and task.is_running():
            task.kill()
    with OutputFolderLock(out):  # the whole tree is gone, and the lock with it
        pass


def _float_batch(folder: Path) -> tuple[Path, list[Path]]:
    """The demo's mIF reference, and its round 1 as float32 with a NaN/inf patch and as uint32, int16 (DAPI
    first)."""
    from slimreg.demo import make_demo_data

    make_demo_data(folder / "demo", size=256, frames=4)
    pixels = tifffile.imread(folder / "demo" / "mif_round1.ome.tif")
    movings = []
    for dtype in ("float32", "uint32", "int16"):
        data = pixels.astype(dtype)
        if dtype == "float32":
            data[:, 40:60, 40:60], data[:, 100:104, 100:104] = np.nan, np.inf
        path = folder / f"round1_{dtype}.ome.tif"
        tifffile.imwrite(path, data, tile=(128, 128), compression="zlib", ome=True,
                         metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "CD3", "CD8"]}})
        movings.append(path)
    return folder / "demo" / "mif_round0.ome.tif", movings


@pytest.mark.slow
def test_nan_pixels_are_missing_data_and_an_unexpected_error_fails_only_its_image(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A float image with NaN/inf pixels used to end the whole REGISTER batch with `ValueError: autodetected range
    of [nan, nan] is not finite`, no file named. NaN/inf are now missing data (one warning naming the file); and any
    unexpected exception for one image is that image's failure, in a sentence naming its file, while its
    batch-mates are registered."""
    import slimreg.warp
    from slimreg.register.batch import register_images
    from slimreg.register.settings import RegistrationSettings

    reference, (with_nan, as_uint32, as_int16) = _float_batch(tmp_path)
    original_warp = slimreg.warp.warp_file

    def warp_that_breaks_on_int16(source, *args, **kwargs):  # a defect slimreg did not foresee, for one image
        if source.path == as_int16:
            raise ValueError("an unforeseen defect")
        return original_warp(source, *args, **kwargs)

    monkeypatch.setattr("slimreg.register.batch.warp_file", warp_that_breaks_on_int16)
    settings = RegistrationSettings.from_preset("low", engine="feature")
    batch = register_images(reference, [with_nan, as_uint32, as_int16], tmp_path / "out", settings)
    results = {Path(r.image).name: r for r in batch.images}
    assert results[with_nan.name].status == "ok", results[with_nan.name].error
    assert results[as_uint32.name].status == "ok", results[as_uint32.name].error
    failed = results[as_int16.name]
    assert failed.status == "failed" and failed.error.startswith(f"{as_int16}: failed while writing its registered")
    assert "ValueError: an unforeseen defect" in failed.error and "Fix: " in failed.error
    assert not (tmp_path / "out" / "round1_int16.ome.tif").exists()
    registered = tifffile.imread(tmp_path / "out" / "round1_float32.ome.tif")
    assert np.isnan(registered).any() and np.isfinite(registered).mean() > 0.9  # missing data kept, not invented
    err = capsys.readouterr().err
    assert f"{with_nan}: " in err and "NaN or infinite; registration treats them as missing data" in err


def test_float64_images_are_refused_up_front_with_the_right_fix(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """float64 was listed as supported; libvips cannot decode it ("tiff2vips: samples out of range"), and slimreg
    told the user to check that the file is a complete TIFF, during registration. Now `validate` (every header is
    probed) refuses it, naming the file and the conversion to float32; the other pixel types are read."""
    from slimreg.cli import main
    from slimreg.io.read import TiffImage

    pixels = np.random.default_rng(0).random((64, 64)) * 1000
    for dtype in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32"):
        path = tifffile_tiled(tmp_path / f"{dtype}.tif", pixels.astype(dtype))
        assert TiffImage(path).downsampled(32).array.shape == (32, 32)
    tifffile.imwrite(tmp_path / "f64.tif", pixels, tile=(32, 32), compression="zlib")
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("sample,image,reference\ns,uint32.tif,true\ns,f64.tif,false\ns,int16.tif,false\n")
    assert main(["validate", str(sheet)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'f64.tif'}: has 64-bit float pixels (float64)" in err
    assert "Fix: convert it to float32" in err and "complete TIFF" not in err
    assert "uint32.tif" not in err and "int16.tif" not in err


def test_a_multi_series_file_says_which_series_was_read_and_how_to_choose_another(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file whose first series is a small blank and whose second is the scan: series 0 was read without a word and
    the failure said "no tissue, choose another --channel". Now the probe warns, naming the series read and the
    larger one, and the image's failure says the same with how to extract the other series."""
    from slimreg.demo import make_demo_data
    from slimreg.register.batch import register_images
    from slimreg.register.settings import RegistrationSettings

    make_demo_data(tmp_path / "demo", size=256, frames=4)
    scan = tifffile.imread(tmp_path / "demo" / "mif_round1.ome.tif")
    moving = tmp_path / "two_series.ome.tif"
    with tifffile.TiffWriter(moving, ome=True) as writer:
        names = {"Channel": {"Name": ["DAPI", "CD3", "CD8"]}}
        writer.write(np.zeros((3, 64, 64), scan.dtype), metadata={"axes": "CYX", **names})
        writer.write(scan, metadata={"axes": "CYX", **names}, tile=(128, 128))
    assert probe(moving).other_series.startswith("slimreg read series 0 of this file's 2 (64 x 64 px)")
    batch = register_images(tmp_path / "demo" / "mif_round0.ome.tif", [moving], tmp_path / "out",
                            RegistrationSettings.from_preset("low", engine="feature"))
    error = batch.images[0].error
    assert "shows no tissue" in error
    assert f"Note: {moving}: slimreg read series 0 of this file's 2 (64 x 64 px)" in error
    assert "series 1 is larger (256 x 256 px)" in error and "bfconvert -series 1" in error and "series=1" in error
    assert f"slimreg: warning: {moving}: slimreg read series 0" in capsys.readouterr().err


def _jpeg_tiled_with_random_bytes_in_one_tile(path: Path, size: int = 1024, tile: int = 5) -> Path:
    """An RGB JPEG-tiled TIFF (smooth stripes) whose tile ``tile`` has random bytes over the middle quarter."""
    rows, columns = np.mgrid[0:size, 0:size]
    grey = (128 + 100 * np.sin(columns / 37.0) * np.cos(rows / 23.0)).astype(np.uint8)
    tifffile.imwrite(path, np.stack([grey, grey // 2, grey], axis=-1), tile=(256, 256), compression="jpeg",
                     photometric="rgb")
    with tifffile.TiffFile(path) as tiff:
        offset, count = tiff.pages[0].dataoffsets[tile], tiff.pages[0].databytecounts[tile]
    data = bytearray(path.read_bytes())
    middle = offset + count // 2
    data[middle - count // 8: middle + count // 8] = np.random.default_rng(5).integers(
        0, 256, 2 * (count // 8), dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def test_a_damaged_jpeg_tile_is_named_not_read_as_a_grey_block(tmp_path: Path) -> None:
    """libvips decodes a JPEG tile with random bytes in it without an error, even with fail_on="warning": the task
    finished, QC said pass, and the output had a flat grey block. Now each JPEG page is decoded once with tifffile
    before libvips reads it, and the image fails with its file, page and tile named."""
    from slimreg.io.read import TiffImage
    from slimreg.io.vips import to_numpy

    intact = tmp_path / "intact.tif"
    rows = np.mgrid[0:512, 0:512][0]
    tifffile.imwrite(intact, np.stack([(rows % 251).astype(np.uint8)] * 3, axis=-1), tile=(256, 256),
                     compression="jpeg", photometric="rgb")
    assert to_numpy(TiffImage(intact).plane(channel=None)).shape == (512, 512, 3)
    damaged = _jpeg_tiled_with_random_bytes_in_one_tile(tmp_path / "scan.tif")
    for read in (lambda image: image.plane(channel=None), lambda image: image.downsampled(256, channel=None)):
        with pytest.raises(InputError) as error:
            read(TiffImage(damaged))
        message = str(error.value)
        assert message.startswith(f"{damaged}: is damaged: page 0, tile 5 (x 256, y 256, 256 x 256 px)")
        assert "Fix: copy the file again" in message


def test_the_disk_estimate_of_a_registered_copy_is_in_the_reference_frame(tmp_path: Path) -> None:
    """A registered copy has the reference's size: a 512 px image onto an 8192 px reference was estimated at
    0.3 MB and wrote 89 MB (the moving image's header was used), and the other way round 40 GB was predicted for a
    few MB. Here the same two images swap roles: each task's disk follows its reference's area, 256 times apart."""
    from slimreg.plan import build_plan
    from slimreg.plan_model import PlanSettings
    from slimreg.register.settings import RegistrationSettings
    from slimreg.samplesheet import read_samplesheet

    rng = np.random.default_rng(0)
    small = write_array(rng.integers(0, 255, (256, 256), dtype=np.uint8), tmp_path / "small.ome.tif",
                        channel_names=["DAPI"])
    big = write_array(rng.integers(0, 255, (4096, 4096), dtype=np.uint8), tmp_path / "big.ome.tif",
                      channel_names=["DAPI"])
    small_too, big_too = tmp_path / "small_too.ome.tif", tmp_path / "big_too.ome.tif"
    small_too.write_bytes(small.read_bytes())
    big_too.write_bytes(big.read_bytes())
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(f"sample,image,reference\nup,{big},true\nup,{small},false\n"
                     f"down,{small_too},true\ndown,{big_too},false\n")
    plan = build_plan(read_samplesheet(sheet), tmp_path / "out", RegistrationSettings.from_preset("low"),
                      PlanSettings())
    disk = {t.sample: t.disk_bytes for t in plan.tasks if t.kind == "register"}
    onto_big = small.stat().st_size * 256  # the small image's bytes per pixel, over the big frame
    assert onto_big <= disk["up"] <= 2 * onto_big
    onto_small = big.stat().st_size / 256
    assert onto_small <= disk["down"] <= 2 * onto_small


def _cmdline_has(process: object, text: str) -> bool:
    """Whether a process's command line holds ``text``; a child that has just ended (a zombie) holds nothing."""
    import psutil

    try:
        return text in " ".join(process.cmdline())  # type: ignore[attr-defined]
    except (psutil.ZombieProcess, psutil.NoSuchProcess):
        return False

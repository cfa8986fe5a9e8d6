"""The `slimreg` command: argument parsing only; every subcommand calls the package.

Errors the user can fix print one message naming the file and the fix, and exit with status 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import slimreg.options as options
from slimreg._version import __version__
from slimreg.errors import SlimregError, os_error_message

EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Handler, str]] = {}


def command(name: str, handler: Handler, help_text: str) -> Callable[[Callable[[argparse.ArgumentParser], None]],
                                                                     Callable[[argparse.ArgumentParser], None]]:
    """Register ``add_arguments`` for subcommand ``name``, run by ``handler``."""

    def decorate(add_arguments: Callable[[argparse.ArgumentParser], None]):
        COMMANDS[name] = (add_arguments, handler, help_text)
        return add_arguments

    return decorate


def run_info(args: argparse.Namespace) -> int:
    from slimreg.atomic import finite_for_json
    from slimreg.io.probe import probe

    results = [probe(path).to_json() for path in args.images]
    # valid JSON whatever a header holds: a non-finite number prints as null, never as NaN or Infinity
    print(json.dumps(finite_for_json(results[0] if len(results) == 1 else results), indent=2, allow_nan=False))
    return 0


@command("info", run_info, "describe images from their headers (JSON)")
def _info_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")


def run_probe(args: argparse.Namespace) -> int:
    from slimreg.io.header import write_header

    path = write_header(args.given or str(args.file), args.file, args.out)
    print(f"wrote {path}")
    return 0


@command("probe", run_probe,
         "write one samplesheet file's header for PLAN (the pipeline's PROBE task; see `plan --headers`)")
def _probe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file", type=Path, required=True, help="the image or landmarks CSV, where it is staged")
    parser.add_argument("--given", help="the file as the samplesheet names it (default: --file)")
    parser.add_argument("--out", type=Path, required=True, help="header JSON to write")


def run_demo_data(args: argparse.Namespace) -> int:
    from slimreg.demo import make_demo_data

    sheet = make_demo_data(args.outdir, size=args.size, frames=args.frames, seed=args.seed)
    print(f"demo data written; samplesheet: {sheet}")
    return 0


@command("demo-data", run_demo_data, "write a small demo series with known transforms and a samplesheet")
def _demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--size", type=int, default=1024, help="side of the slide images in px (default 1024)")
    parser.add_argument("--frames", type=int, default=40, help="frames per recording session (default 40)")
    parser.add_argument("--seed", type=int, default=0)


def run_validate(args: argparse.Namespace) -> int:
    from slimreg.samplesheet import read_samplesheet

    sheet = read_samplesheet(args.samplesheet)
    for sample in sheet.samples():
        print(f"{sample.name}: reference {sample.reference.image.name}, {len(sample.moving)} moving image(s)")
    print(f"{sheet.path}: OK ({len(sheet.rows)} images)")
    return 0


@command("validate", run_validate, "check a samplesheet and its images; list every problem")
def _validate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("samplesheet", type=Path)


def _add_registration_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `register`, `plan` and `run`."""
    from slimreg.options import DEFAULT_ENGINE, DEFAULT_PRESET, ENGINES, PRESET_ORDER

    group = parser.add_argument_group("registration")
    group.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE, help=f"default {DEFAULT_ENGINE}")
    group.add_argument("--preset", choices=PRESET_ORDER, default=DEFAULT_PRESET,
                       help=f"working resolutions (default {DEFAULT_PRESET})")
    group.add_argument("--channel", help="registration channel name or index (default: DAPI/Hoechst, else first; "
                       "RGB: optical density)")
    group.add_argument("--non-rigid", action=argparse.BooleanOptionalAction, default=True,
                       help="estimate a smooth displacement after the affine (default on)")
    group.add_argument("--micro", action=argparse.BooleanOptionalAction, default=True,
                       help="refine at --micro-dim resolution (default on)")
    group.add_argument("--processing-dim", type=int, help="long side (px) for feature matching (preset)")
    group.add_argument("--non-rigid-dim", type=int, help="long side (px) for the displacement field (preset)")
    group.add_argument("--micro-dim", type=int, help="long side (px) for the refinement (preset)")
    group.add_argument("--transform-model", choices=options.TRANSFORM_MODELS, default=options.DEFAULT_TRANSFORM_MODEL,
                       help="affine model of the feature engine (the valis engine uses VALIS' own similarity model)")
    group.add_argument("--allow-mirror", action="store_true",
                       help="consider mirror images of moving sections (mounted face down); off by default")
    group.add_argument("--tile-size", type=int, default=options.DEFAULT_TILE_SIZE,
                       help=f"output tile size in px (default {options.DEFAULT_TILE_SIZE})")
    group.add_argument("--compression", choices=options.COMPRESSIONS, default=options.DEFAULT_COMPRESSION)


def settings_from_arguments(args: argparse.Namespace):
    """The registration settings of ``register`` and ``run-task``-style commands, assembled as ``run`` does."""
    from slimreg.io.write import require_writable_compression
    from slimreg.job_options import JobOptions

    require_writable_compression(args.compression)  # before any work, not when the first output is written
    return JobOptions.from_values(args).registration_settings()


def run_register(args: argparse.Namespace) -> int:
    from slimreg.memory import MemoryTracker
    from slimreg.register.batch import register_images

    settings = settings_from_arguments(args)
    _refuse_register_outputs_over_inputs(args)
    with MemoryTracker(debug=args.memory_debug) as tracker:
        batch = register_images(args.reference, args.moving, args.outdir, settings, tracker=tracker,
                               keep_work=args.keep_work, include_reference=args.include_reference)
        tracker.report()
    for result in batch.images:
        if result.status == "ok":
            print(f"registered {result.stem}: {result.registered}")
        else:
            print(f"FAILED {result.stem}: {result.error}", file=sys.stderr)
    return 1 if batch.failed else 0


def _refuse_register_outputs_over_inputs(args: argparse.Namespace) -> None:
    """`register` names its outputs after its inputs (``<outdir>/<stem>.ome.tif``): with --outdir the folder of a
    moving ``.ome.tif`` the output would replace the image, so refuse that before registering anything."""
    from slimreg.guard import refuse_outputs_over_inputs
    from slimreg.register.batch import units_for_images
    from slimreg.samplesheet import image_stem

    images = [args.reference, *args.moving] if args.include_reference else list(args.moving)
    units = units_for_images(images, args.outdir)
    log = args.outdir / f"{image_stem(args.reference)}.register"
    outputs = [p for unit in units for p in (*unit.registered, unit.transform)]
    outputs += [log.with_name(log.name + ".json"), log.with_name(log.name + ".memory.json")]
    refuse_outputs_over_inputs(outputs, [args.reference, *args.moving],
                               fix="choose an --outdir other than the images' folder (for example a new, empty "
                                   "folder): registered images are named after their originals.")


@command("register", run_register, "register moving images onto a reference and write registered OME-TIFFs")
def _register_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--moving", type=Path, nargs="+", required=True, metavar="IMAGE")
    parser.add_argument("--outdir", type=Path, required=True)
    parser.add_argument("--include-reference", action="store_true",
                        help="also write the reference, re-encoded, so the output folder holds the whole series")
    parser.add_argument("--keep-work", action="store_true", help="keep the engine's scratch folder")
    parser.add_argument("--memory-debug", action="store_true", help="print RSS before/after each task")
    _add_registration_options(parser)


def _plan_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("plan")
    group.add_argument("--batch-size", type=int, default=options.DEFAULT_BATCH_SIZE,
                       help=f"moving images per REGISTER task (default {options.DEFAULT_BATCH_SIZE})")
    group.add_argument("--max-frames", type=int, help="split stacks into pieces of at most this many frames")
    group.add_argument("--max-chunk-gb", type=positive_number, help="split stacks into pieces of at most this many GB")
    group.add_argument("--merge-chunks", action="store_true", help="also write one registered stack per session")
    group.add_argument("--merge-channels", action="store_true",
                       help="also write one multi-channel OME-TIFF per sample of fluorescence rounds, "
                            "merged/<sample>.ome.tif: the reference round's channels first, named R<round>_<name>")
    group.add_argument("--merge-nuclear-once", action="store_true",
                       help="with --merge-channels: keep the registration (nuclear) channel of the reference round "
                            "only")
    group.add_argument("--format", dest="output_format", choices=options.FORMATS, default=options.DEFAULT_FORMAT,
                       help="what registered/<sample>/ (the reference included) and merged/ hold: tiled pyramidal "
                            f"OME-TIFF or OME-Zarr (NGFF 0.4) (default {options.DEFAULT_FORMAT})")
    group.add_argument("--motion-correction", choices=options.MOTION_CORRECTION_MODES,
                       default=options.DEFAULT_MOTION_CORRECTION,
                       help="align every frame of each recording (multi-frame grey stack) to its session's template "
                            "before sessions are registered: rigid (default), piecewise (NoRMCorre-style patches) or "
                            "off; per-frame shifts in transforms/<sample>/<recording>.shifts.csv, QC in the report")
    group.add_argument("--motion-dtype", choices=options.MOTION_DTYPES, default=options.DEFAULT_MOTION_DTYPE,
                       help="the corrected frames' type: float32 (default; keeps every subpixel move whole) or the "
                            "recording's own (input: half the disk of float32 for a 16-bit recording, which clips "
                            "what subpixel moves overshoot below zero)")
    group.add_argument("--qc-max-dim", type=int, default=options.DEFAULT_QC_MAX_DIM,
                       help=f"long side of QC images in px (default {options.DEFAULT_QC_MAX_DIM})")


def _build_plan(args: argparse.Namespace):
    from slimreg.plan import PlanSettings, build_plan
    from slimreg.samplesheet import read_samplesheet

    headers = None
    if getattr(args, "headers", None):
        from slimreg.io.header import read_headers

        headers = read_headers(args.headers)
    registration = settings_from_arguments(args)  # an option this machine cannot honour fails before any reading
    sheet = read_samplesheet(args.input, headers=headers)
    settings = PlanSettings(batch_size=args.batch_size, max_frames=args.max_frames, max_chunk_gb=args.max_chunk_gb,
                            merge_chunks=args.merge_chunks, merge_channels=args.merge_channels,
                            merge_nuclear_once=args.merge_nuclear_once, qc_max_dim=args.qc_max_dim,
                            output_format=args.output_format, motion_correction=args.motion_correction,
                            motion_dtype=args.motion_dtype,
                            workers=getattr(args, "workers", 1))
    settings.validate()
    return build_plan(sheet, args.outdir, registration, settings)


def _writable_outdir(path: Path) -> Path:
    from slimreg.errors import InputError

    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"output folder cannot be created ({error.strerror}).", path,
                         "choose a folder you can write to.") from error
    return path


def run_preflight_command(args: argparse.Namespace) -> int:
    from slimreg.preflight import run_preflight

    plan = _build_plan(args)
    run_preflight(plan, args.outdir, workers=args.workers, force=args.force, stream=sys.stdout,
                  write_to=_writable_outdir(args.outdir), resources=_task_resources(args),
                  per_task_disk=args.task_disk_limit is not None)
    print(f"wrote {args.outdir / 'preflight.json'}")
    return 0


def memory_size(text: str) -> int:
    """A memory size as Nextflow writes it (8.GB, 8 GB, 8GB, 512MB), for argparse."""
    from slimreg.resources import parse_size

    try:
        return parse_size(text, "size")
    except SlimregError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: write it like 8GB or 512MB") from error


def positive_number(text: str) -> float:
    """A finite number above zero (argparse's float takes nan and inf, which then break the run later)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number above 0")
    return value


def _task_resources(args: argparse.Namespace):
    """Resources for the pre-flight: this machine's, or a scheduler's per-task limit (--task-memory-limit)."""
    if not args.task_memory_limit:
        return None
    from slimreg.resources import available_resources, parse_size

    local = available_resources(args.outdir)
    limit = parse_size(args.task_memory_limit, "--task-memory-limit")
    disk_limit = getattr(args, "task_disk_limit", None)
    disk = local.disk_bytes if disk_limit is None else 0 if disk_limit == "none" else \
        parse_size(disk_limit, "--task-disk-limit")
    return dataclasses.replace(local, memory_bytes=limit, disk_bytes=disk,
                               memory_source=f"the most a task may request ({args.task_memory_limit})")


def run_plan(args: argparse.Namespace) -> int:
    from slimreg.preflight import run_preflight

    plan = _build_plan(args)
    outdir = _writable_outdir(args.outdir)
    run_preflight(plan, outdir, workers=args.workers, force=args.force, stream=sys.stderr, write_to=outdir,
                  resources=_task_resources(args), per_task_disk=args.task_disk_limit is not None)
    json_path, csv_path = plan.write(outdir)
    for task in plan.tasks:
        print(f"{task.id}\t{task.kind}\t{task.peak_memory_bytes / 1024**2:.0f} MB")
    for note in plan.notes:
        print(f"note: {note}")
    print(f"wrote {json_path} and {csv_path}")
    return 0


def _common_plan_command(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", type=Path, required=True, metavar="SAMPLESHEET")
    parser.add_argument("--outdir", type=Path, required=True)
    parser.add_argument("--headers", type=Path, metavar="FOLDER",
                        help="read each samplesheet file's header from the JSON files `slimreg probe` wrote here "
                             "instead of opening the files (the pipeline: files may be on cloud storage)")
    parser.add_argument("--workers", type=int, default=1, help="tasks that will run at once (default 1)")
    parser.add_argument("--force", action="store_true", help="warn instead of refusing a run that will not fit")
    parser.add_argument("--task-memory-limit", metavar="SIZE",
                        help="compare each task with the most memory a task may get (a scheduler's limit, e.g. "
                             "Nextflow's resourceLimits: 128.GB) instead of this machine's free memory")
    parser.add_argument("--task-disk-limit", metavar="SIZE|none",
                        help="a scheduler runs each task in its own scratch folder: compare each task's disk need "
                             "with the most disk a task may ask for (resourceLimits' disk), or with nothing "
                             "('none'), instead of the run's total with this folder's free space")
    _add_registration_options(parser)
    _plan_options(parser)


@command("preflight", run_preflight_command,
         "estimate every task's peak memory and disk from headers; refuse what cannot fit")
def _preflight_args(parser: argparse.ArgumentParser) -> None:
    _common_plan_command(parser)


@command("plan", run_plan, "write plan.json / plan.csv: every task of a run, with its memory estimate")
def _plan_args(parser: argparse.ArgumentParser) -> None:
    _common_plan_command(parser)


def run_run_task(args: argparse.Namespace) -> int:
    import json

    from slimreg.errors import DependencyNotProducedError, InputError, RegistrationError
    from slimreg.memory import MemoryTracker, process_high_water_bytes
    from slimreg.plan import Plan
    from slimreg.tasks import execute, preset_for_attempt

    if args.spec:
        # Nextflow: the task's own spec, its samplesheet files staged under sources/<n>/ (slimreg.tasks)
        try:
            spec = json.loads(args.spec.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise InputError(f"task spec cannot be read ({error}).", args.spec,
                             "give a task_specs/<id>.json that `slimreg plan` wrote.") from error
        plan, task = None, Plan.task_from_spec(spec, args.spec)
        root = args.root or Path.cwd()
    elif args.plan and args.task:
        plan = Plan.load(args.plan)
        task = plan.task(args.task)
        root = args.root or Path(plan.outdir)
    else:
        raise InputError("run-task needs --spec FILE, or --plan FILE with --task ID.")
    preset = args.preset
    if args.preset_for_attempt and args.preset_for_attempt > 1:
        preset = preset_for_attempt(task, args.preset, args.preset_for_attempt)
    with MemoryTracker(debug=args.memory_debug) as tracker:
        try:
            execute(plan, task, root, tracker=tracker, preset=preset, keep_work=args.keep_work,
                    staged=bool(args.spec))
        except (RegistrationError, DependencyNotProducedError) as error:
            if not args.keep_going:
                raise
            # the pipeline: the task's log records each image's failure and the report lists it first; the
            # task itself succeeds so that its batch-mates' outputs are kept and the run goes on
            print(f"slimreg run-task {task.id}: {error.message} (--keep-going: recorded; the run goes on)",
                  file=sys.stderr)
        finally:
            if args.memory_log:
                tracker.write(args.memory_log, {"task": task.id, "preset": args.preset, "measured_in": "own process",
                                                "process_peak_bytes": process_high_water_bytes()})
        tracker.report()
    return 0


@command("run-task", run_run_task,
         "execute one task of a plan (used by `slimreg run --mode subprocess` and by Nextflow)")
def _run_task_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", type=Path, help="the task's own spec (task_specs/<id>.json of a plan); its "
                        "samplesheet files are read where Nextflow stages them, sources/<n>/<name>")
    parser.add_argument("--plan", type=Path, help="plan.json (with --task: the samplesheet files are read in place)")
    parser.add_argument("--task", help="task id from the plan")
    parser.add_argument("--root", type=Path, help="folder for relative paths (default: the plan's outdir; with "
                        "--spec, the current folder)")
    parser.add_argument("--preset", choices=options.PRESET_ORDER, help="override the preset (OOM retries)")
    parser.add_argument("--preset-for-attempt", type=int, metavar="N",
                        help="attempt N of the task (Nextflow's task.attempt): a register task runs N-1 presets "
                             "below its own (high -> medium -> low), as `slimreg run` retries after an "
                             "out-of-memory kill")
    parser.add_argument("--keep-going", action="store_true",
                        help="exit 0 when images of the task could not be registered (its log records each, for "
                             "the report) or when it checks an image that did not register: what the pipeline "
                             "passes, so that one image's failure stays that image's")
    parser.add_argument("--memory-log", type=Path, help="write the task's memory log here")
    parser.add_argument("--memory-debug", action="store_true")
    parser.add_argument("--keep-work", action="store_true")


def run_qc(args: argparse.Namespace) -> int:
    from slimreg.qc import QcThresholds
    from slimreg.qc import run_qc as qc

    thresholds = QcThresholds(min_significance=args.min_significance, min_shared_tissue=args.min_shared_tissue,
                              min_coverage=args.min_coverage,
                              max_landmark_rtre=args.max_landmark_rtre, max_landmark_error_px=args.max_landmark_error)
    result = qc(args.reference, args.registered, args.outdir, original_path=args.original,
                transform_path=args.transform, landmarks_reference=args.landmarks_reference,
                landmarks_moving=args.landmarks_moving, max_dim=args.max_dim, channel=args.channel,
                thresholds=thresholds)
    print(f"{result.status}: {Path(args.registered).name}" + (f" ({'; '.join(result.reasons)})" if result.reasons
                                                               else ""))
    return 1 if (args.strict and result.status != "pass") else 0


@command("qc", run_qc, "QC numbers and overlay picture for one registered image (downsampled, bounded memory)")
def _qc_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--registered", type=Path, required=True)
    parser.add_argument("--original", type=Path, help="the image before registration (for 'before' numbers)")
    parser.add_argument("--transform", type=Path, help="its transform file (landmarks, exact coverage)")
    parser.add_argument("--landmarks-reference", type=Path)
    parser.add_argument("--landmarks-moving", type=Path)
    parser.add_argument("--outdir", type=Path, required=True)
    parser.add_argument("--max-dim", type=int, default=options.DEFAULT_QC_MAX_DIM)
    parser.add_argument("--channel", help="channel to compare (default as for registration)")
    parser.add_argument("--min-significance", type=float, default=4.0,
                        help="sd above unrelated placements the registered image must stand (default 4)")
    parser.add_argument("--min-shared-tissue", type=float, default=0.5,
                        help="share of the smaller tissue that must lie on the other's (default 0.5)")
    parser.add_argument("--min-coverage", type=float, default=0.8)
    parser.add_argument("--max-landmark-rtre", type=float, default=0.015,
                        help="median landmark error / reference diagonal (default 0.015)")
    parser.add_argument("--max-landmark-error", type=float, help="px, median; replaces --max-landmark-rtre")
    parser.add_argument("--strict", action="store_true", help="exit 1 when QC fails")


def run_report(args: argparse.Namespace) -> int:
    from slimreg.plan import Plan
    from slimreg.report import build_report

    path = build_report(args.results, args.outdir, plan=Plan.load(args.plan) if args.plan else None)
    print(f"report: {path}")
    return 0


@command("report", run_report, "one HTML report (plus metrics.csv and a MultiQC table) from a results folder")
def _report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, required=True, help="the run's output folder")
    parser.add_argument("--plan", type=Path, help="plan.json with the estimates (default: found in --results)")
    parser.add_argument("--outdir", type=Path, required=True)


def run_run(args: argparse.Namespace) -> int:
    from slimreg.job_options import JobOptions
    from slimreg.run_summary import print_summary
    from slimreg.runner import run_job

    summary = run_job(args.input, args.outdir, JobOptions.from_values(args))
    print_summary(summary)
    return 0 if summary.ok else 1


@command("run", run_run, "the whole job on this machine: validate, pre-flight, plan, register, QC, report")
def _run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", type=Path, required=True, metavar="SAMPLESHEET")
    parser.add_argument("--outdir", type=Path, required=True)
    parser.add_argument("--mode", choices=options.MODES, default=options.DEFAULT_MODE,
                        help="subprocess (default): each task in its own process, its memory budget enforced; "
                        "parallel: --workers at once; serial: all in this process, no budget enforced (debugging)")
    parser.add_argument("--max-memory", type=memory_size, metavar="SIZE",
                        help="most memory any one task may use, e.g. 8GB (default: its estimate x 2); a task "
                        "past it is stopped and retried one preset lower")
    parser.add_argument("--workers", type=int, default=1, help="processes at once in --mode parallel")
    parser.add_argument("--timeout-per-task", type=positive_number,
                        help="seconds; needs --mode subprocess or parallel")
    parser.add_argument("--max-retries", type=int, default=options.DEFAULT_MAX_RETRIES,
                        help="retries (one preset lower each) after an out-of-memory kill or a budget stop")
    parser.add_argument("--resume", action="store_true", help="skip tasks whose completion record matches")
    parser.add_argument("--force", action="store_true", help="run even if the pre-flight says it will not fit")
    parser.add_argument("--memory-debug", action="store_true", help="print RSS before/after every task")
    _add_registration_options(parser)
    _plan_options(parser)


def run_versions(args: argparse.Namespace) -> int:
    from slimreg.versions import versions_yaml

    print(versions_yaml(args.process), end="")
    return 0


@command("versions", run_versions, "software versions as nf-core versions.yml")
def _versions_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--process", default="SLIMREG", help="process name for the YAML key")


def run_motion_correct(args: argparse.Namespace) -> int:
    from slimreg.recording import correct_motion

    result = correct_motion(args.input, args.outdir, mode=args.mode, chunk_frames=args.chunk_frames,
                            dtype=args.dtype)
    print(json.dumps({"frames": result.frames, "mode": result.mode, "dtype": result.dtype,
                      "blank_frames": result.blank_frames, "nan_frames": result.nan_frames, "qc": result.qc,
                      "outputs": result.outputs}, indent=2))
    return 0


@command("motion-correct", run_motion_correct,
         "align every frame of a recording to its own template (rigid or piecewise), streamed")
def _motion_correct_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", type=Path, required=True, help="multi-page TIFF recording, one frame per page")
    parser.add_argument("--outdir", type=Path, required=True, help="folder for <stem>.corrected.ome.tif and QC")
    parser.add_argument("--mode", choices=("rigid", "piecewise"), default="rigid", help="rigid (default) or "
                        "NoRMCorre-style piecewise rigid")
    parser.add_argument("--chunk-frames", type=int, default=100, help="frames held in memory at once")
    parser.add_argument("--dtype", choices=options.MOTION_DTYPES, default=options.DEFAULT_MOTION_DTYPE,
                        help="the corrected frames' type: float32 (default) or the recording's own (input: half "
                             "the disk for a 16-bit recording; clips what subpixel moves overshoot below zero)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimreg", description="Register series of very large microscopy "
                                     "images at a bounded, predicted memory cost.")
    parser.add_argument("--version", action="version", version=f"slimreg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (add_arguments, _, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        add_arguments(sub)
    return parser


# options that name files a command reads; whatever the command, its outputs never replace them (slimreg.guard)
INPUT_OPTIONS = ("reference", "moving", "registered", "original", "transform", "landmarks_reference",
                 "landmarks_moving", "plan", "spec", "file", "input", "samplesheet", "images")


def command_inputs(args: argparse.Namespace) -> list[Path]:
    """The files a command was given to read (see INPUT_OPTIONS)."""
    found: list[Path] = []
    for name in INPUT_OPTIONS:
        value = getattr(args, name, None)
        if isinstance(value, Path):
            found.append(value)
        elif isinstance(value, list):
            found += [v for v in value if isinstance(v, Path)]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = COMMANDS[args.command][1]
    try:
        from slimreg.guard import protecting

        with protecting(command_inputs(args)):  # no output of this command may replace one of these
            return handler(args)
    except SlimregError as error:
        if args.debug:
            raise
        print(f"slimreg {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:  # a folder that is a file, read-only, full: one line, not a traceback
        if args.debug:
            raise
        print(f"slimreg {args.command}: error: {os_error_message(error)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"slimreg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

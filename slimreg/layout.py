"""Where every file of a run goes: one module, so the plan, the runner, QC, the report and the docs agree.

Paths of outputs are relative to the run's output folder (``--outdir`` for `slimreg run`, the task's work folder
under Nextflow, which publishes them to the same places):

    registered/<sample>/<image>.ome.tif              the registered images, in the reference frame, and the
                                                     reference itself (.ome.zarr with --format ome-zarr)
    transforms/<sample>/<session>.transform.json     each session's transform (+ .displacement.npz)
    transforms/<sample>/<task>.register.json         what one REGISTER task did, per image
    transforms/<sample>/<recording>.shifts.csv       per-frame motion of a recording (--motion-correction)
    qc/<sample>/<session>_qc.png, _qc.json           QC overlay and verdict
    qc/<sample>/<recording>.motion.json, .motion.png motion QC: correlation with the mean, crispness, shifts
    report/report.html, metrics.csv, slimreg_mqc.tsv
    pipeline_info/                                   plan, task specs, pre-flight, run log, per-task records
                                                     and logs
    work/                                            split pieces, session projections, motion templates and
                                                     recordings corrected for motion (intermediate)

Names that go into paths come through :func:`slimreg.samplesheet.safe_id` first, so they are file-name safe.
"""

from __future__ import annotations

from pathlib import Path

REGISTERED = "registered"
TRANSFORMS = "transforms"
QC = "qc"
REPORT = "report"
PIPELINE_INFO = "pipeline_info"
WORK = "work"
MERGED = "merged"

QC_PNG_SUFFIX = "_qc.png"
QC_JSON_SUFFIX = "_qc.json"
MOTION_JSON_SUFFIX = ".motion.json"
MOTION_PNG_SUFFIX = ".motion.png"
REGISTER_LOG_SUFFIX = ".register.json"
MEMORY_LOG_SUFFIX = ".memory.json"
RUN_OUTCOMES = "run_outcomes.json"
STAGED_SOURCES = "sources"  # where Nextflow stages a task's samplesheet files (stageAs: 'sources/*/*')
TASK_SPECS = "task_specs"  # beside plan.json: one file per task, what that task alone needs (Plan.task_spec)
REPORT_FILES = (f"{REPORT}/report.html", f"{REPORT}/metrics.csv", f"{REPORT}/slimreg_mqc.tsv")
# outputs of earlier tasks (never samplesheet inputs): their headers are known from the plan, not probed
PRODUCED_PREFIXES = (f"{WORK}/", f"{REGISTERED}/")


IMAGE_SUFFIXES = {"ome-tiff": ".ome.tif", "ome-zarr": ".ome.zarr"}  # --format -> what the images users keep end in


def registered_image(sample: str, stem: str, image_format: str = "ome-tiff") -> str:
    return f"{REGISTERED}/{sample}/{stem}{IMAGE_SUFFIXES[image_format]}"


def registered_tiff(sample: str, stem: str) -> str:
    """With --format ome-zarr: the OME-TIFF REGISTER writes (QC and merges read it), converted into
    ``registered_image(..., "ome-zarr")`` by a ``publish`` task. Same file name as the registered copy, so a failed
    image's missing file is recognised by name (slimreg.tasks)."""
    return f"{WORK}/{sample}/registered/{stem}.ome.tif"


def merged_image(sample: str, image_format: str = "ome-tiff") -> str:
    """One multi-channel image per sample: every round's channels in the reference frame (--merge-channels)."""
    return f"{MERGED}/{sample}{IMAGE_SUFFIXES[image_format]}"


def merged_tiff(sample: str) -> str:
    """With --format ome-zarr: the merged OME-TIFF, before its ``publish`` task converts it."""
    return f"{WORK}/{sample}/merged/{sample}.ome.tif"


def transform_file(sample: str, session: str) -> str:
    return f"{TRANSFORMS}/{sample}/{session}.transform.json"


def register_log(sample: str, task_id: str) -> str:
    return f"{TRANSFORMS}/{sample}/{task_id}{REGISTER_LOG_SUFFIX}"


def split_folder(sample: str) -> Path:
    return Path(WORK) / "split" / sample


def projection(sample: str, session: str) -> str:
    return f"{WORK}/{sample}/{session}.projection.ome.tif"


def registered_projection(sample: str, session: str) -> str:
    return f"{WORK}/{sample}/{session}.projection.registered.ome.tif"


def motion_template(sample: str, session: str) -> str:
    """One session's motion template (--motion-correction): what each piece of its recordings is aligned to."""
    return f"{WORK}/{sample}/motion/{session}.template.tif"


def motion_files(sample: str, stem: str) -> list[str]:
    """A recording (or piece) corrected for motion, its per-frame shifts, and its motion QC (record and plot)."""
    return [f"{WORK}/{sample}/motion/{stem}.ome.tif", f"{TRANSFORMS}/{sample}/{stem}.shifts.csv",
            f"{QC}/{sample}/{stem}{MOTION_JSON_SUFFIX}", f"{QC}/{sample}/{stem}{MOTION_PNG_SUFFIX}"]


def qc_files(sample: str, stem: str) -> list[str]:
    return [f"{QC}/{sample}/{stem}{QC_PNG_SUFFIX}", f"{QC}/{sample}/{stem}{QC_JSON_SUFFIX}"]


def info_dir(root: Path) -> Path:
    return Path(root) / PIPELINE_INFO


def task_record(root: Path, task_id: str) -> Path:
    """The completion record `--resume` checks."""
    return info_dir(root) / "tasks" / f"{task_id}.done.json"


def task_memory_log(root: Path, task_id: str) -> Path:
    return info_dir(root) / "tasks" / f"{task_id}{MEMORY_LOG_SUFFIX}"


def task_log(root: Path, task_id: str) -> Path:
    """A task's own stderr (every attempt appended)."""
    return info_dir(root) / "tasks" / f"{task_id}.log"


def run_outcomes(root: Path) -> Path:
    """Each task's outcome so far (status, attempts, presets, message), rewritten as tasks finish: the report
    reads it to show retries and failures."""
    return info_dir(root) / RUN_OUTCOMES


def report_page(root: Path) -> Path:
    return Path(root) / REPORT_FILES[0]

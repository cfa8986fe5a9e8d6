"""The plan: every task a run executes, computed once in Python and executed by the runner and by Nextflow.

Sessions are the unit of registration. A plain image is a session of its own; rows sharing ``session`` and
the pieces of a split stack form one session. In a sample with multi-frame stacks or multi-row sessions each
session is registered through a projection of all its frames (``project`` tasks), and its one transform is
applied to every piece. Paths of task outputs are relative to the run's output folder; files from the samplesheet
(a task's ``sources``) are named as :attr:`~slimreg.samplesheet.SampleRow.source` names them: absolute paths, or,
when the plan was made from PROBE's headers, the samplesheet's own text.

Each task is also written on its own (``task_specs/<id>.json``, :meth:`Plan.task_spec`): everything it needs to run and
nothing else (no output folder, no other task), so that Nextflow's ``-resume`` keeps every task whose own spec
and files did not change.
"""

from __future__ import annotations

import csv
import io
import json
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slimreg import __version__, layout
from slimreg.atomic import write_json_atomic, write_text_atomic
from slimreg.batching import collate
from slimreg.chunking import check_session_shapes, frames_per_piece, plan_pieces, projection_factor
from slimreg.errors import InputError, ParameterError
from slimreg.io.probe import ImageInfo, probe
from slimreg.kinds import KINDS as TASK_KINDS
from slimreg.kinds.project import ProjectParams
from slimreg.kinds.qc import QcParams
from slimreg.kinds.register import RegisterParams, RegisterUnit
from slimreg.kinds.split import SplitParams
from slimreg.options import DEFAULT_BATCH_SIZE, DEFAULT_QC_MAX_DIM, WORK_TILE_SIZE
from slimreg.register.channel import OPTICAL_DENSITY, choose_channel
from slimreg.register.settings import RegistrationSettings
from slimreg.samplesheet import Sample, SampleRow, Samplesheet, image_stem, safe_id

KINDS = tuple(TASK_KINDS)  # in the order a sample's tasks run (slimreg.kinds: one module per kind)
TASK_SPEC_FORMAT = "slimreg-task"


@dataclass(frozen=True)
class PlanSettings:
    """Settings that shape the plan (registration settings travel inside register tasks)."""

    batch_size: int = DEFAULT_BATCH_SIZE
    max_frames: int | None = None
    max_chunk_gb: float | None = None
    merge_chunks: bool = False
    qc_max_dim: int = DEFAULT_QC_MAX_DIM
    workers: int = 1

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ParameterError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if self.max_frames is not None and self.max_frames < 1:
            raise ParameterError(f"--max-frames must be at least 1, got {self.max_frames}.")
        if self.max_chunk_gb is not None and self.max_chunk_gb <= 0:
            raise ParameterError(f"--max-chunk-gb must be positive, got {self.max_chunk_gb}.")
        if self.workers < 1:
            raise ParameterError(f"--workers must be at least 1, got {self.workers}.")
        if self.qc_max_dim < 64:
            raise ParameterError(f"--qc-max-dim must be at least 64, got {self.qc_max_dim}.")


@dataclass
class Task:
    """One unit of work; ``params`` holds what the executor needs beyond inputs and outputs."""

    id: str
    kind: str
    sample: str
    inputs: list[str]
    outputs: list[str]
    settings: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    depends_on: list[str] = field(default_factory=list)
    peak_memory_bytes: int = 0
    disk_bytes: int = 0
    # the inputs that come from the samplesheet, not from another task (Nextflow stages these, in this order)
    sources: list[str] = field(default_factory=list)


@dataclass
class Plan:
    samplesheet: str
    outdir: str
    registration: dict[str, Any]
    settings: dict[str, Any]
    tasks: list[Task]
    notes: list[str]
    version: str = __version__

    def task(self, task_id: str) -> Task:
        for task in self.tasks:
            if task.id == task_id:
                return task
        raise InputError(f"the plan has no task {task_id!r}.", fix="list task ids with `slimreg plan`.")

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "samplesheet": self.samplesheet, "outdir": self.outdir,
                "registration": self.registration, "settings": self.settings, "notes": self.notes,
                "tasks": [asdict(t) for t in self.tasks]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        return cls(samplesheet=data["samplesheet"], outdir=data["outdir"], registration=data["registration"],
                   settings=data["settings"], tasks=[Task(**t) for t in data["tasks"]], notes=data.get("notes", []),
                   version=data.get("version", __version__))

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        try:
            return cls.from_json(json.loads(path.read_text()))
        except FileNotFoundError as error:
            raise InputError("plan file not found.", path, "create it with `slimreg plan`.") from error
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise InputError(f"is not a slimreg plan ({error}).", path, "create it with `slimreg plan`.") from error

    def task_spec(self, task: Task) -> dict[str, Any]:
        """What one task needs to run, and only that: its own settings, files and outputs.

        No output folder, samplesheet path or other task is in it, so a change elsewhere in the plan leaves it
        byte for byte the same (Nextflow hashes it as the task's input, so ``-resume`` keeps the task's result).
        """
        spec = {"format": TASK_SPEC_FORMAT, "version": self.version, **asdict(task)}
        spec.pop("depends_on")  # the order of tasks is the workflow's business, not the task's
        return spec

    @staticmethod
    def task_from_spec(spec: dict[str, Any], where: Path | None = None) -> Task:
        """The task a spec file describes (:meth:`task_spec`); ``where`` names the file in errors."""
        if not isinstance(spec, dict) or spec.get("format") != TASK_SPEC_FORMAT:
            raise InputError("is not a slimreg task spec.", where,
                             "use a task_specs/<id>.json written by `slimreg plan`.")
        fields = {k: v for k, v in spec.items() if k not in ("format", "version")}
        try:
            return Task(**fields)
        except TypeError as error:
            raise InputError(f"is not a task spec of this slimreg version ({error}).", where,
                             f"plan again with slimreg {__version__}.") from error

    def write(self, folder: str | Path) -> tuple[Path, Path]:
        """Write ``plan.json``, a flat ``plan.csv`` (for Nextflow's splitCsv) and one spec per task
        (``task_specs/<id>.json``) into ``folder``."""
        folder = Path(folder)
        json_path = write_json_atomic(folder / "plan.json", self.to_json())
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["id", "kind", "sample", "peak_memory_bytes", "disk_bytes", "depends_on", "sources", "inputs",
                         "outputs"])
        for t in self.tasks:
            writer.writerow([t.id, t.kind, t.sample, t.peak_memory_bytes, t.disk_bytes, ";".join(t.depends_on),
                             ";".join(t.sources), ";".join(t.inputs), ";".join(t.outputs)])
        csv_path = write_text_atomic(folder / "plan.csv", buffer.getvalue())
        specs = folder / layout.TASK_SPECS
        for stale in specs.glob("*.json") if specs.is_dir() else []:
            stale.unlink()
        for t in self.tasks:
            write_json_atomic(specs / f"{t.id}.json", self.task_spec(t))
        return json_path, csv_path


@dataclass
class _Session:
    name: str
    rows: list[SampleRow]
    infos: list[ImageInfo]
    pieces: list[str] = field(default_factory=list)  # files the transform is applied to
    piece_tasks: list[str] = field(default_factory=list)
    registration_image: str = ""
    registration_scale: int = 1
    registration_task: str | None = None


def build_plan(sheet: Samplesheet, outdir: str | Path, registration: RegistrationSettings,
               settings: PlanSettings | None = None) -> Plan:
    """Compute every task of a run from the samplesheet and image headers (no pixels are read)."""
    settings = settings or PlanSettings()
    settings.validate()
    registration.validate()
    outdir = Path(outdir)
    tasks: list[Task] = []
    notes: list[str] = []
    probed: dict[str, ImageInfo] = dict(sheet.infos)  # headers read once, shared with the memory estimate
    for sample in sheet.samples():
        tasks += _sample_tasks(sample, registration, settings, notes, probed)
    qc_outputs = [o for t in tasks if t.kind == "qc" for o in t.outputs if o.endswith(layout.QC_JSON_SUFFIX)]
    register_logs = [o for t in tasks if t.kind == "register" for o in t.outputs
                     if o.endswith(layout.REGISTER_LOG_SUFFIX)]
    tasks.append(Task("report", "report", "", inputs=qc_outputs + register_logs, outputs=list(layout.REPORT_FILES)))
    _link_dependencies(tasks)
    from slimreg.estimate import estimate_plan_tasks

    estimate_plan_tasks(tasks, known=probed)
    return Plan(samplesheet=str(sheet.path), outdir=str(outdir.resolve()), registration=registration.to_json(),
                settings=asdict(settings), tasks=tasks, notes=notes)


def _sessions(sample: Sample, probed: dict[str, ImageInfo]) -> list[_Session]:
    sessions: OrderedDict[str, _Session] = OrderedDict()
    for row in _sheet_order(sample):
        name = row.session or row.stem
        session = sessions.setdefault(name, _Session(name, [], []))
        session.rows.append(row)
        key = row.source
        if key not in probed:
            probed[key] = probe(row.image)
        session.infos.append(probed[key])
    for session in sessions.values():
        check_session_shapes(session.infos)
    return list(sessions.values())


def _sheet_order(sample: Sample) -> list[SampleRow]:
    return sorted(sample.rows, key=lambda r: r.row)


def _sample_tasks(sample: Sample, registration: RegistrationSettings, settings: PlanSettings,
                  notes: list[str], probed: dict[str, ImageInfo]) -> list[Task]:
    sessions = _sessions(sample, probed)
    reference_name = sample.reference.session or sample.reference.stem
    reference = next(s for s in sessions if s.name == reference_name)
    moving = [s for s in sessions if s is not reference]
    name = sample.name
    if not moving:
        notes.append(f"sample {name}: all images belong to one session; nothing to register, images pass through")
        return []
    tasks: list[Task] = []
    session_mode = any(info.frames > 1 for s in sessions for info in s.infos) or any(len(s.rows) > 1 for s in sessions)
    reference_channel = choose_channel(reference.infos[0], registration.channel)
    channel_name = None if reference_channel == OPTICAL_DENSITY else reference.infos[0].channel_names[reference_channel]
    max_dim = max(registration.processing_dim, registration.non_rigid_dim, registration.micro_dim)
    for session in sessions:
        for row, info in zip(session.rows, session.infos, strict=True):
            per_piece = frames_per_piece(info, settings.max_frames, settings.max_chunk_gb)
            if per_piece is None or session is reference:  # the reference session is never warped
                session.pieces.append(row.source)
                session.piece_tasks.append("")
                continue
            pieces = plan_pieces(info, per_piece, layout.split_folder(name), row.stem)
            task_id = safe_id(f"split-{name}-{row.stem}")
            tasks.append(Task(task_id, "split", name, inputs=[row.source], outputs=[p.path for p in pieces],
                              settings={"max_frames": settings.max_frames, "max_chunk_gb": settings.max_chunk_gb},
                              params=SplitParams(pieces, WORK_TILE_SIZE).to_json()))
            session.pieces += [p.path for p in pieces]
            session.piece_tasks += [task_id] * len(pieces)
        if session_mode:
            factor = projection_factor(session.infos[0], max_dim)
            index = reference_channel if reference_channel == OPTICAL_DENSITY else _channel_index(
                session.infos[0], channel_name, registration.channel)
            projection = layout.projection(name, safe_id(session.name))
            task_id = safe_id(f"project-{name}-{session.name}")
            tasks.append(Task(task_id, "project", name, inputs=[r.source for r in session.rows],
                              outputs=[projection],
                              params=ProjectParams(channel=0 if index == OPTICAL_DENSITY else index,
                                                   factor=factor).to_json()))
            session.registration_image, session.registration_scale = projection, factor
        else:
            session.registration_image = session.rows[0].source
    reg_settings = registration.to_json()
    if session_mode:
        reg_settings["channel"] = "0"  # projections hold the registration channel's mean as channel 0
    for number, batch in enumerate(collate(moving, settings.batch_size), start=1):
        task_id = safe_id(f"register-{name}-b{number}")
        units = [RegisterUnit(name=session.name, registration_image=session.registration_image,
                              scale=session.registration_scale, apply_to=session.pieces,
                              registered=[layout.registered_image(name, image_stem(p)) for p in session.pieces],
                              transform=layout.transform_file(name, safe_id(session.name)),
                              registered_projection=(layout.registered_projection(name, safe_id(session.name))
                                                     if session_mode else None))
                 for session in batch]
        inputs = [reference.registration_image] + [u.registration_image for u in units] + \
            [p for u in units for p in u.apply_to]
        outputs = [o for u in units for o in [*u.registered, u.transform]]
        outputs += [u.registered_projection for u in units if u.registered_projection]
        outputs.append(layout.register_log(name, task_id))
        params = RegisterParams(reference=reference.registration_image, reference_scale=reference.registration_scale,
                                reference_shape=[reference.infos[0].height, reference.infos[0].width], units=units)
        tasks.append(Task(task_id, "register", name, inputs=list(dict.fromkeys(inputs)), outputs=outputs,
                          settings=reg_settings, params=params.to_json()))
        for unit, session in zip(units, batch, strict=True):
            if settings.merge_chunks and len(session.pieces) > 1:
                merged = layout.registered_image(name, safe_id(session.name))
                tasks.append(Task(safe_id(f"merge-{name}-{session.name}"), "merge", name, inputs=unit.registered,
                                  outputs=[merged]))
            tasks.append(_qc_task(name, reference, session, unit, settings))
    return tasks


def _qc_task(sample: str, reference: _Session, session: _Session, unit: RegisterUnit,
             settings: PlanSettings) -> Task:
    params = QcParams(reference=reference.registration_image,
                      registered=unit.registered_projection or unit.registered[0],
                      original=session.registration_image, transform=unit.transform, max_dim=settings.qc_max_dim,
                      reference_scale=reference.registration_scale, moving_scale=session.registration_scale,
                      landmarks_reference=reference.rows[0].landmarks_source,
                      landmarks_moving=session.rows[0].landmarks_source)
    inputs = [params.reference, params.registered, params.original, params.transform]
    inputs += [p for p in (params.landmarks_reference, params.landmarks_moving) if p]
    return Task(safe_id(f"qc-{sample}-{session.name}"), "qc", sample, inputs=inputs,
                outputs=layout.qc_files(sample, safe_id(session.name)), params=params.to_json())


def _channel_index(info: ImageInfo, name: str | None, requested: str | None) -> int:
    if name is not None and name.lower() in [n.lower() for n in info.channel_names]:
        return [n.lower() for n in info.channel_names].index(name.lower())
    chosen = choose_channel(info, requested)
    return 0 if chosen == OPTICAL_DENSITY else int(chosen)


def _link_dependencies(tasks: list[Task]) -> None:
    producer = {output: task.id for task in tasks for output in task.outputs}
    for task in tasks:
        task.depends_on = sorted({producer[i] for i in task.inputs if i in producer and producer[i] != task.id})
        task.sources = [i for i in task.inputs if i not in producer]

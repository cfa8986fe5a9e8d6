"""The plan: every task a run executes, computed once in Python and executed by the runner and by Nextflow.

Sessions are the unit of registration. A plain image is a session of its own; rows sharing ``session`` and
the pieces of a split stack form one session. In a sample with multi-frame stacks or multi-row sessions each
session is registered through a projection of all its frames (``project`` tasks), and its one transform is
applied to every piece. With ``--motion-correction`` (on by default) each recording's frames are first aligned to
its session's template (a ``template`` task, then one ``motion`` task per piece), and the corrected pieces are
what the session's projection and registration use.

Paths of task outputs are relative to the run's output folder; files from the samplesheet (a task's ``sources``)
are named as :attr:`~slimreg.samplesheet.SampleRow.source` names them: absolute paths, or, when the plan was made
from PROBE's headers, the samplesheet's own text.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import slimreg.layout as layout
from slimreg.batching import collate
from slimreg.chunking import check_session_shapes, frames_per_piece, plan_pieces, projection_factor
from slimreg.errors import InputError
from slimreg.estimate import SAFETY
from slimreg.io.probe import ImageInfo, probe
from slimreg.kinds import KINDS as TASK_KINDS
from slimreg.kinds import EstimateContext, kind_named
from slimreg.kinds.channels import ChannelsParams, merged_planes
from slimreg.kinds.motion import MotionParams
from slimreg.kinds.project import ProjectParams
from slimreg.kinds.publish import PublishParams
from slimreg.kinds.qc import QcParams
from slimreg.kinds.register import RegisterParams, RegisterUnit
from slimreg.kinds.split import SplitParams
from slimreg.kinds.template import TemplateParams
from slimreg.options import WORK_TILE_SIZE
from slimreg.plan_model import Plan, PlanSettings, Task
from slimreg.register.channel import OPTICAL_DENSITY, choose_channel
from slimreg.register.settings import RegistrationSettings
from slimreg.samplesheet import TIFF_SUFFIXES, Sample, SampleRow, Samplesheet, image_stem, safe_id

KINDS = tuple(TASK_KINDS)  # in the order a sample's tasks run (slimreg.kinds: one module per kind)
@dataclass
class _Session:
    name: str
    rows: list[SampleRow]
    infos: list[ImageInfo]
    pieces: list[str] = field(default_factory=list)  # files the transform is applied to
    piece_tasks: list[str] = field(default_factory=list)
    piece_shifts: list[str] = field(default_factory=list)  # each piece's per-frame shifts CSV ("" if not corrected)
    piece_origins: list[tuple[str, int]] = field(default_factory=list)  # its recording's file name and first frame
    registration_image: str = ""
    registration_scale: int = 1
    registration_task: str | None = None

    def frame_records(self) -> dict[str, list]:
        """RegisterUnit's per-piece motion fields (each piece's shifts CSV, recording and first frame), or none where
        no piece was corrected for motion."""
        if not any(self.piece_shifts):
            return {"frame_shifts": [], "frame_sources": [], "frame_starts": []}
        return {"frame_shifts": list(self.piece_shifts), "frame_sources": [name for name, _ in self.piece_origins],
                "frame_starts": [start for _, start in self.piece_origins]}


def build_plan(sheet: Samplesheet, outdir: str | Path, registration: RegistrationSettings,
               settings: PlanSettings | None = None) -> Plan:
    """Compute every task of a run from the samplesheet and image headers (no pixels are read)."""
    settings = settings or PlanSettings()
    settings.validate()
    registration.validate()
    if settings.output_format == "ome-zarr":
        from slimreg.io.ngff import require_zarr_compression

        require_zarr_compression(registration.compression)
    outdir = Path(outdir)
    tasks: list[Task] = []
    notes: list[str] = []
    probed: dict[str, ImageInfo] = dict(sheet.infos)  # headers read once, shared with the memory estimate
    for sample in sheet.samples():
        tasks += _sample_tasks(sample, registration, settings, notes, probed)
    qc_outputs = [o for t in tasks if t.kind == "qc" for o in t.outputs if o.endswith(layout.QC_JSON_SUFFIX)]
    register_logs = [o for t in tasks if t.kind == "register" for o in t.outputs
                     if o.endswith(layout.REGISTER_LOG_SUFFIX)]
    motion_records = [o for t in tasks if t.kind == "motion" for o in t.outputs
                      if o.endswith(layout.MOTION_JSON_SUFFIX)]
    tasks.append(Task("report", "report", "", inputs=qc_outputs + register_logs + motion_records,
                      outputs=list(layout.REPORT_FILES)))
    _refuse_shared_outputs(tasks, sheet.path)
    _link_dependencies(tasks)
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
    reference_channel = choose_channel(reference.infos[0], registration.channel)
    channel_name = None if reference_channel == OPTICAL_DENSITY else reference.infos[0].channel_names[reference_channel]
    if not moving:
        return _single_session_tasks(name, reference, reference_channel, registration, settings, notes)
    tasks: list[Task] = []
    session_mode = any(info.frames > 1 for s in sessions for info in s.infos) or any(len(s.rows) > 1 for s in sessions)
    max_dim = max(registration.processing_dim, registration.non_rigid_dim, registration.micro_dim)
    for session in sessions:
        index = reference_channel if reference_channel == OPTICAL_DENSITY else _channel_index(
            session.infos[0], channel_name, registration.channel)
        template = _template_task(name, session, index, settings)
        if template is not None:
            tasks.append(template)
        for row, info in zip(session.rows, session.infos, strict=True):
            per_piece = frames_per_piece(info, settings.max_frames, settings.max_chunk_gb)
            if template is not None and _is_recording(info):
                # the reference's recordings too: not warped, but corrected in pieces like every long recording
                tasks += _motion_tasks(name, session, row, info, per_piece, template.outputs[0], int(index),
                                       settings)
                continue
            if per_piece is None or session is reference:  # the reference session is never warped
                session.pieces.append(row.source)
                session.piece_tasks.append("")
                session.piece_shifts.append("")
                session.piece_origins.append((Path(row.source).name, 0))
                continue
            pieces = plan_pieces(info, per_piece, layout.split_folder(name), row.stem)
            task_id = safe_id(f"split-{name}-{row.stem}")
            tasks.append(Task(task_id, "split", name, inputs=[row.source], outputs=[p.path for p in pieces],
                              settings={"max_frames": settings.max_frames, "max_chunk_gb": settings.max_chunk_gb},
                              params=SplitParams(pieces, WORK_TILE_SIZE).to_json()))
            session.pieces += [p.path for p in pieces]
            session.piece_tasks += [task_id] * len(pieces)
            session.piece_shifts += [""] * len(pieces)
            session.piece_origins += [(Path(row.source).name, p.start) for p in pieces]
        if session_mode:
            factor = projection_factor(session.infos[0], max_dim)
            projection = layout.projection(name, safe_id(session.name))
            task_id = safe_id(f"project-{name}-{session.name}")
            # corrected for motion, the session's frames are its pieces (the template the seed registers)
            frames = session.pieces if template is not None else [r.source for r in session.rows]
            tasks.append(Task(task_id, "project", name, inputs=frames,
                              outputs=[projection],
                              params=ProjectParams(channel=0 if index == OPTICAL_DENSITY else index,
                                                   factor=factor).to_json()))
            session.registration_image, session.registration_scale = projection, factor
        else:
            session.registration_image = session.rows[0].source
    reg_settings = registration.to_json()
    if session_mode:
        reg_settings["channel"] = "0"  # projections hold the registration channel's mean as channel 0
    publish = _Publisher(name, settings.output_format, registration)
    for number, batch in enumerate(collate(moving, settings.batch_size), start=1):
        task_id = safe_id(f"register-{name}-b{number}")
        units = [RegisterUnit(name=session.name, registration_image=session.registration_image,
                              scale=session.registration_scale, apply_to=session.pieces,
                              registered=[publish.written(image_stem(p)) for p in session.pieces],
                              transform=layout.transform_file(name, safe_id(session.name)),
                              registered_projection=(layout.registered_projection(name, safe_id(session.name))
                                                     if session_mode else None),
                              **session.frame_records())
                 for session in batch]
        inputs = [reference.registration_image] + [u.registration_image for u in units] + \
            [p for u in units for p in u.apply_to] + [c for u in units for c in u.frame_shifts if c]
        outputs = [o for u in units for o in [*u.registered, u.transform]]
        outputs += [u.registered_projection for u in units if u.registered_projection]
        outputs.append(layout.register_log(name, task_id))
        params = RegisterParams(reference=reference.registration_image, reference_scale=reference.registration_scale,
                                reference_shape=[reference.infos[0].height, reference.infos[0].width], units=units)
        tasks.append(Task(task_id, "register", name, inputs=list(dict.fromkeys(inputs)), outputs=outputs,
                          settings=reg_settings, params=params.to_json()))
        for unit, session in zip(units, batch, strict=True):
            tasks += [task for path in unit.registered for task in publish.converted(path)]
            if settings.merge_chunks and len(session.pieces) > 1:
                merged = publish.written(safe_id(session.name))
                tasks.append(Task(safe_id(f"merge-{name}-{session.name}"), "merge", name, inputs=unit.registered,
                                  outputs=[merged]))
                tasks += publish.converted(merged)
            tasks.append(_qc_task(name, reference, session, unit, settings))
    if settings.merge_channels:
        tasks += _channels_task(name, reference, moving, session_mode, channel_name, registration, settings, notes,
                                publish)
    # the reference itself, beside its registered images: the folder is the whole aligned series
    return tasks + _reference_tasks(name, reference, settings, publish)


def _reference_tasks(sample: str, session: _Session, settings: PlanSettings, publish: _Publisher) -> list[Task]:
    """The reference session's files published as they are (or as corrected for motion), and, with
    --merge-chunks, its recordings' corrected pieces written back as one stack, as a moving session's are."""
    tasks = [publish.reference(piece) for piece in session.pieces]
    # only a session of corrected recordings: stills are not frames of the stack
    if settings.merge_chunks and len(session.pieces) > 1 and all(session.piece_shifts):
        merged = publish.written(safe_id(session.name))
        tasks.append(Task(safe_id(f"merge-{sample}-{session.name}"), "merge", sample, inputs=list(session.pieces),
                          outputs=[merged]))
        tasks += publish.converted(merged)
    return tasks


def _single_session_tasks(sample: str, session: _Session, channel: int | str, registration: RegistrationSettings,
                          settings: PlanSettings, notes: list[str]) -> list[Task]:
    """A sample of one session: nothing to register; its recordings, if any, are still corrected for motion and
    the corrected copies published in registered/<sample>/ (a single long recording is the commonest case)."""
    template = _template_task(sample, session, channel, settings)
    if template is None:
        notes.append(f"sample {sample}: all images belong to one session; nothing to register, images pass through")
        return []
    notes.append(f"sample {sample}: all images belong to one session; its recordings are corrected for motion "
                 "(registered/ holds the corrected copies), nothing else to register")
    tasks = [template]
    for row, info in zip(session.rows, session.infos, strict=True):
        if _is_recording(info):
            tasks += _motion_tasks(sample, session, row, info,
                                   frames_per_piece(info, settings.max_frames, settings.max_chunk_gb),
                                   template.outputs[0], int(channel), settings)
        else:
            session.pieces.append(row.source)
            session.piece_shifts.append("")
            session.piece_origins.append((Path(row.source).name, 0))
    return tasks + _reference_tasks(sample, session, settings,
                                    _Publisher(sample, settings.output_format, registration))


def _is_recording(info: ImageInfo) -> bool:
    """A grey time series (several frames, one Z): what motion correction aligns frame by frame."""
    return info.frames > 1 and info.size_z == 1 and not info.is_rgb


def _template_task(sample: str, session: _Session, channel: int | str, settings: PlanSettings) -> Task | None:
    """The session's motion template (--motion-correction), from its recordings, or None when it has none."""
    recordings = [row.source for row, info in zip(session.rows, session.infos, strict=True) if _is_recording(info)]
    if settings.motion_correction == "off" or not recordings or channel == OPTICAL_DENSITY:
        return None
    return Task(safe_id(f"template-{sample}-{session.name}"), "template", sample, inputs=recordings,
                outputs=[layout.motion_template(sample, safe_id(session.name))],
                params=TemplateParams(channel=int(channel)).to_json())


def _motion_tasks(sample: str, session: _Session, row: SampleRow, info: ImageInfo, per_piece: int | None,
                  template: str, channel: int, settings: PlanSettings) -> list[Task]:
    """One task per piece of the recording (the whole recording when it is not split), each correcting its frames
    against the session's one template; the corrected pieces become the session's pieces."""
    ranges = [(0, info.frames, row.stem)] if per_piece is None else [
        (piece.start, piece.stop, image_stem(piece.path))
        for piece in plan_pieces(info, per_piece, layout.split_folder(sample), row.stem)]
    tasks = []
    for start, stop, stem in ranges:
        outputs = layout.motion_files(sample, safe_id(stem))
        task_id = safe_id(f"motion-{sample}-{stem}")
        params = MotionParams(channel=channel, start=start, stop=stop, mode=settings.motion_correction,
                              tile_size=WORK_TILE_SIZE, compression="deflate", dtype=settings.motion_dtype)
        tasks.append(Task(task_id, "motion", sample, inputs=[row.source, template], outputs=outputs,
                          params=params.to_json()))
        session.pieces.append(outputs[0])
        session.piece_tasks.append(task_id)
        session.piece_shifts.append(outputs[1])
        session.piece_origins.append((Path(row.source).name, start))
    return tasks


@dataclass
class _Publisher:
    """Where one sample's images in the reference frame are written, and the ``publish`` tasks that put them in
    the run's ``--format`` (slimreg.kinds.publish). OME-TIFF: registered copies and merges are written where users
    keep them. OME-Zarr: they are written as OME-TIFF under work/ (QC and the merges read them) and each is converted
    by a publish task. The reference is always rewritten by one."""

    sample: str
    image_format: str
    registration: RegistrationSettings

    @property
    def params(self) -> dict[str, Any]:
        return PublishParams(self.image_format, self.registration.tile_size, self.registration.compression).to_json()

    def written(self, stem: str) -> str:
        """Where REGISTER or a merge writes the registered image ``stem`` (an OME-TIFF)."""
        if self.image_format == "ome-tiff":
            return layout.registered_image(self.sample, stem)
        return layout.registered_tiff(self.sample, stem)

    def written_merged(self) -> str:
        return layout.merged_image(self.sample) if self.image_format == "ome-tiff" else layout.merged_tiff(self.sample)

    def converted(self, written: str) -> list[Task]:
        """The task converting ``written`` into the run's format (none for OME-TIFF: it is already there)."""
        if self.image_format == "ome-tiff":
            return []
        stem = image_stem(written)
        final = (layout.merged_image(self.sample, self.image_format) if written == layout.merged_tiff(self.sample)
                 else layout.registered_image(self.sample, stem, self.image_format))
        return [Task(safe_id(f"publish-{self.sample}-{Path(final).parent.name}-{stem}"), "publish", self.sample,
                     inputs=[written], outputs=[final], params=self.params)]

    def reference(self, source: str) -> Task:
        stem = image_stem(source)
        return Task(safe_id(f"publish-{self.sample}-reference-{stem}"), "publish", self.sample, inputs=[source],
                    outputs=[layout.registered_image(self.sample, stem, self.image_format)], params=self.params)


def _channels_task(sample: str, reference: _Session, moving: list[_Session], session_mode: bool,
                   nuclear: str | None, registration: RegistrationSettings, settings: PlanSettings,
                   notes: list[str], publish: _Publisher) -> list[Task]:
    """The sample's one multi-channel image (--merge-channels), where its images are fluorescence rounds."""
    sessions = [reference, *moving]
    if any(info.is_rgb for session in sessions for info in session.infos):
        notes.append(f"sample {sample}: not merged into one multi-channel image: its brightfield (RGB) sections each "
                     "carry a stain of their own, and stacking them as channels means nothing; each is registered "
                     "on its own")
        return []
    if session_mode:
        notes.append(f"sample {sample}: not merged into one multi-channel image: it holds recordings (multi-frame "
                     "stacks or sessions), not channel rounds")
        return []
    inputs = [reference.rows[0].source] + [publish.written(image_stem(s.pieces[0])) for s in moving]
    planes = merged_planes([session.infos[0].channel_names for session in sessions], nuclear,
                           settings.merge_nuclear_once)
    params = ChannelsParams(planes, registration.tile_size, registration.compression)
    merged = publish.written_merged()
    return [Task(safe_id(f"channels-{sample}"), "channels", sample, inputs=inputs, outputs=[merged],
                 params=params.to_json()), *publish.converted(merged)]


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


def _refuse_shared_outputs(tasks: list[Task], sheet: Path) -> None:
    """One clear error where two tasks would write one file (a session's merged stack named like one of its images'
    copies), before anything runs: otherwise the later one silently replaces the other's output."""
    writer: dict[str, str] = {}
    for task in tasks:
        for output in task.outputs:
            if output in writer and writer[output] != task.id:
                raise InputError(f"tasks {writer[output]} and {task.id} would both write {output}: a session is "
                                 "named like one of its images, and its merged stack would take that image's name.",
                                 path=sheet, fix="give the session (the samplesheet's session column) a name that "
                                 "none of its images has.")
            writer[output] = task.id


def _link_dependencies(tasks: list[Task]) -> None:
    producer = {output: task.id for task in tasks for output in task.outputs}
    for task in tasks:
        task.depends_on = sorted({producer[i] for i in task.inputs if i in producer and producer[i] != task.id})
        task.sources = [i for i in task.inputs if i not in producer]


def estimate_plan_tasks(tasks: list[Task], known: dict[str, ImageInfo] | None = None) -> None:
    """Fill ``peak_memory_bytes`` and ``disk_bytes`` of every task in place (headers only), in plan order.

    Each kind estimates its own tasks (slimreg.kinds, from the memory model in slimreg.estimate); ``known`` holds
    headers the plan already read, keyed by path, so no file is probed twice.
    """
    ctx = EstimateContext(infos=dict(known or {}))
    for task in tasks:
        task.peak_memory_bytes, task.disk_bytes = kind_named(task.kind, task.id).estimate(task, ctx)
        # reading any pixel decodes a whole tile or strip: a floor no preset lowers (large only for stripped files;
        # the samplesheet check refuses the ones it would make unbounded)
        images = [ctx.source(p) for p in task.inputs if p.lower().endswith(TIFF_SUFFIXES)]
        task.peak_memory_bytes += int(SAFETY * max((i.segment_bytes for i in images if i), default=0))


def describe(task: Task) -> dict[str, Any]:
    """A task's estimates, as the pre-flight reports them."""
    return {"id": task.id, "kind": task.kind, "sample": task.sample, "peak_memory_bytes": task.peak_memory_bytes,
            "disk_bytes": task.disk_bytes}


__all__ = ["Plan", "PlanSettings", "Task", "build_plan", "describe", "estimate_plan_tasks"]

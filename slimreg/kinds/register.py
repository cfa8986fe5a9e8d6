"""``register``: one batch (the sample's reference plus up to ``--batch-size`` moving sessions), each session's
transform found on its registration image and applied, tile by tile, to every file of the session."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from slimreg.errors import RegistrationError
from slimreg.estimate import in_reference_frame, output_bytes, register_task_bytes, tiled_copy_disk_bytes
from slimreg.kinds.base import EstimateContext, Params, RunContext
from slimreg.register.settings import RegistrationSettings

if TYPE_CHECKING:
    from slimreg.plan_model import Task


@dataclass(frozen=True)
class RegisterUnit:
    """One moving session: the image its transform is found on, and the files the transform is applied to."""

    name: str
    registration_image: str
    scale: int  # the registration image's block-averaging factor (1: the image itself)
    apply_to: list[str]
    registered: list[str]  # one output per file of apply_to
    transform: str
    registered_projection: str | None  # sessions: the registered projection, for QC
    # the per-frame shifts CSV of each file of apply_to that was corrected for motion ("" for one that was not;
    # empty where none was): copied into the transform file
    frame_shifts: list[str] = field(default_factory=list)
    frame_sources: list[str] = field(default_factory=list)  # per file of apply_to: its recording's file name
    frame_starts: list[int] = field(default_factory=list)  # and the recording's frame its first frame is


@dataclass(frozen=True)
class RegisterParams(Params):
    reference: str
    reference_scale: int
    reference_shape: list[int]  # level-0 (height, width) of the reference: the frame every output is written in
    units: list[RegisterUnit]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RegisterParams:
        return cls(data["reference"], int(data["reference_scale"]), list(data["reference_shape"]),
                   [RegisterUnit(**u) for u in data["units"]])


def task_registration_settings(task: Task, preset: str | None = None) -> RegistrationSettings:
    """A register task's settings (it carries all of them), optionally moved to another preset (out-of-memory
    retries)."""
    values: dict[str, Any] = dict(task.settings)
    settings = RegistrationSettings(**values)
    if preset and preset != settings.preset:
        settings = RegistrationSettings.from_preset(preset, **{k: v for k, v in values.items()
                                                               if k not in ("preset", "processing_dim",
                                                                            "non_rigid_dim", "micro_dim")})
    return settings


class RegisterKind:
    name = "register"
    process = "REGISTER"
    params = RegisterParams

    def estimate(self, task: Task, ctx: EstimateContext) -> tuple[int, int]:
        params = RegisterParams.from_json(task.params)
        settings = task_registration_settings(task)
        units = [(ctx.info(u.registration_image), [ctx.info(p) for p in u.apply_to]) for u in params.units]
        frame = (params.reference_shape[0], params.reference_shape[1])
        disk = scratch = 0
        for unit, (_, targets) in zip(params.units, units, strict=True):
            for path, target in zip(unit.registered, targets, strict=True):
                # a registered copy is its source's channels and frames in the reference's frame
                ctx.produced[path] = in_reference_frame(target, frame, settings.tile_size)
                disk += output_bytes(ctx.produced[path], settings.compression)
                scratch = max(scratch, tiled_copy_disk_bytes(target))
        return register_task_bytes(ctx.info(params.reference), units, settings), disk + scratch

    def run(self, task: Task, ctx: RunContext) -> None:
        from slimreg.register.batch import MovingUnit, register_units

        params = RegisterParams.from_json(task.params)
        settings = task_registration_settings(task, ctx.preset)
        where, inputs = ctx.where, ctx.inputs  # inputs: resolved once by execute()
        units = [MovingUnit(name=u.name, registration_image=inputs[u.registration_image],
                            apply_to=[inputs[p] for p in u.apply_to],
                            registered=[where.output(p) for p in u.registered], transform=where.output(u.transform),
                            scale=u.scale,
                            registered_projection=where.output(u.registered_projection)
                            if u.registered_projection else None,
                            frame_shifts=[inputs[c] if c else None for c in u.frame_shifts],
                            frame_origins=list(zip(u.frame_sources, u.frame_starts, strict=True)))
                 for u in params.units]
        log = where.output(task.outputs[-1])
        batch = register_units(inputs[params.reference], units, settings, log_dir=log.parent,
                               reference_scale=params.reference_scale,
                               reference_shape=(params.reference_shape[0], params.reference_shape[1]),
                               tracker=ctx.tracker, keep_work=ctx.keep_work, log_name=log.name.removesuffix(".json"))
        if batch.failed:
            raise RegistrationError("; ".join(f"{r.stem}: {r.error}" for r in batch.failed))


KIND = RegisterKind()

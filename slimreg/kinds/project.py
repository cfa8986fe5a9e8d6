"""``project``: a session's frames averaged into one image to register (its one transform is applied to all)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from slimreg.chunking import project_session
from slimreg.estimate import PROCESS_BASE, PROJECT_PER_PX, PYRAMID_DISK_FACTOR, SAFETY, WRITE_BASE
from slimreg.kinds.base import EstimateContext, Params, RunContext

if TYPE_CHECKING:
    from slimreg.plan_model import Task


@dataclass(frozen=True)
class ProjectParams(Params):
    channel: int  # the registration channel, in every frame of every row of the session
    factor: int  # block-averaging factor that brings the projection near the registration's working size


class ProjectKind:
    name = "project"
    process = "PROJECT_SESSION"
    params = ProjectParams

    def estimate(self, task: Task, ctx: EstimateContext) -> tuple[int, int]:
        params = ProjectParams.from_json(task.params)
        source = ctx.info(task.inputs[0])
        pixels = (source.width // params.factor) * (source.height // params.factor)
        ctx.produced[task.outputs[0]] = source
        peak = int(SAFETY * (PROCESS_BASE + WRITE_BASE + PROJECT_PER_PX * pixels))
        return peak, int(pixels * 8 * PYRAMID_DISK_FACTOR)

    def run(self, task: Task, ctx: RunContext) -> None:
        params = ProjectParams.from_json(task.params)
        with ctx.tracker.step(task.id):
            project_session([ctx.inputs[p] for p in task.inputs], ctx.where.output(task.outputs[0]),
                            channel=params.channel, factor=params.factor)


KIND = ProjectKind()

"""``template``: one session's motion template, from frames spread over its recordings (``--motion-correction``).

A small first task, so that every piece of a long recording is corrected against the same template, each piece a
task of its own (slimreg.kinds.motion)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from slimreg.estimate import PROCESS_BASE, SAFETY
from slimreg.kinds.base import EstimateContext, Params, RunContext
from slimreg.motion import TEMPLATE_FRAMES

if TYPE_CHECKING:
    from slimreg.plan_model import Task

# the sampled frames (float32), each shifted copy, and the FFTs of one frame at a time
TEMPLATE_BYTES_PER_FRAME_PX = 2 * 4
TEMPLATE_PER_PX = 64


@dataclass(frozen=True)
class TemplateParams(Params):
    channel: int  # the registration channel: the template is of it alone


class TemplateKind:
    name = "template"
    process = "BUILD_TEMPLATE"
    params = TemplateParams

    def estimate(self, task: Task, ctx: EstimateContext) -> tuple[int, int]:
        source = ctx.info(task.inputs[0])
        pixels = source.width * source.height
        peak = PROCESS_BASE + (TEMPLATE_FRAMES * TEMPLATE_BYTES_PER_FRAME_PX + TEMPLATE_PER_PX) * pixels
        return int(SAFETY * peak), 4 * pixels

    def run(self, task: Task, ctx: RunContext) -> None:
        from slimreg.recording import StackFrames, session_template, write_template

        params = TemplateParams.from_json(task.params)
        with ctx.tracker.step(task.id):
            recordings = [StackFrames(Path(ctx.inputs[p]), params.channel) for p in task.inputs]
            write_template(session_template(recordings), ctx.where.output(task.outputs[0]))


KIND = TemplateKind()

"""``template``: one session's motion template, from frames spread over its recordings (``--motion-correction``).

A small first task, so that every piece of a long recording is corrected against the same template, each piece a
task of its own (slimreg.kinds.motion)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from slimreg.estimate import ANALYSIS_IMPORTS, PROCESS_BASE, SAFETY
from slimreg.kinds.base import EstimateContext, Params, RunContext

if TYPE_CHECKING:
    from slimreg.plan_model import Task

# the recording path's own imports beyond the process baseline and ANALYSIS_IMPORTS, and per frame pixel: the two
# float64 sums, one frame, its shifted copy and the FFTs of one shift (docs/motion.md, "Memory"; measured 105 / 164 /
# 401 MB at 512 / 1024 / 2048 px frames, however many frames are sampled: they are read twice, never held; 137 MB at
# 500 px with the wheels of 7 December 2026)
TEMPLATE_BASE = 16 * 1024**2
TEMPLATE_PER_PX = 80


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
        peak = PROCESS_BASE + ANALYSIS_IMPORTS + TEMPLATE_BASE + TEMPLATE_PER_PX * pixels
        return int(SAFETY * peak), 4 * pixels

    def run(self, task: Task, ctx: RunContext) -> None:
        from slimreg.recording import StackFrames, session_template, write_template

        params = TemplateParams.from_json(task.params)
        with ctx.tracker.step(task.id):
            recordings = [StackFrames(Path(ctx.inputs[p]), params.channel) for p in task.inputs]
            try:
                write_template(session_template(recordings), ctx.where.output(task.outputs[0]))
            finally:
                for recording in recordings:
                    recording.close()


KIND = TemplateKind()

"""``qc``: one moving session's registered image against the reference: score, landmarks, overlay, verdict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import slimreg.layout as layout
from slimreg.estimate import ANALYSIS_IMPORTS, PROCESS_BASE, QC_OVERHEAD, QC_PER_PX, SAFETY, working_pixels
from slimreg.kinds.base import EstimateContext, Params, RunContext

if TYPE_CHECKING:
    from slimreg.plan_model import Task


@dataclass(frozen=True)
class QcParams(Params):
    reference: str
    registered: str
    original: str  # the moving image before registration (QC also scores leaving it unregistered)
    transform: str
    max_dim: int
    reference_scale: int
    moving_scale: int
    landmarks_reference: str | None
    landmarks_moving: str | None


class QcKind:
    name = "qc"
    process = "GENERATE_REGISTRATION_QC"
    params = QcParams

    def estimate(self, task: Task, ctx: EstimateContext) -> tuple[int, int]:
        params = QcParams.from_json(task.params)
        factor = params.reference_scale
        pixels = working_pixels(ctx.info(params.reference), params.max_dim * factor) // (factor * factor)
        return (int(SAFETY * (PROCESS_BASE + ANALYSIS_IMPORTS + QC_OVERHEAD + QC_PER_PX * pixels)),
                int(pixels * 3 * 2))

    def run(self, task: Task, ctx: RunContext) -> None:
        from slimreg.qc import run_qc

        params = QcParams.from_json(task.params)
        inputs = ctx.inputs  # every path in the params is one of the task's inputs, resolved once by execute()
        png = ctx.where.output(task.outputs[0])

        def optional(path: str | None) -> Path | None:
            return inputs[path] if path else None

        with ctx.tracker.step(task.id):
            run_qc(inputs[params.reference], inputs[params.registered], png.parent,
                   original_path=inputs[params.original], transform_path=inputs[params.transform],
                   landmarks_reference=optional(params.landmarks_reference),
                   landmarks_moving=optional(params.landmarks_moving), max_dim=params.max_dim,
                   stem=png.name.removesuffix(layout.QC_PNG_SUFFIX), reference_scale=params.reference_scale,
                   moving_scale=params.moving_scale, sample=task.sample)


KIND = QcKind()

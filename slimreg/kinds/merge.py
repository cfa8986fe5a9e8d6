"""``merge``: a session's registered pieces written back as one stack (``--merge-chunks``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from slimreg.chunking import merge_pieces
from slimreg.estimate import PROCESS_BASE, PYRAMID_DISK_FACTOR, SAFETY, write_bytes
from slimreg.kinds.base import EstimateContext, NoParams, RunContext
from slimreg.options import WORK_TILE_SIZE

if TYPE_CHECKING:
    from slimreg.plan_model import Task


class MergeKind:
    name = "merge"
    process = "MERGE_CHUNKS"
    params = NoParams

    def estimate(self, task: Task, ctx: EstimateContext) -> tuple[int, int]:
        pieces = [ctx.info(p) for p in task.inputs]
        return (int(SAFETY * (PROCESS_BASE + write_bytes(pieces[0], WORK_TILE_SIZE))),
                int(sum(p.file_bytes for p in pieces) * PYRAMID_DISK_FACTOR))

    def run(self, task: Task, ctx: RunContext) -> None:
        with ctx.tracker.step(task.id):
            merge_pieces([ctx.inputs[p] for p in task.inputs], ctx.where.output(task.outputs[0]))


KIND = MergeKind()

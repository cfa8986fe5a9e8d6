"""``merge``: a session's registered pieces written back as one stack (``--merge-chunks``)."""

from __future__ import annotations

from dataclasses import replace
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
        frames = sum(p.frames for p in pieces)  # the merged stack, for a task that reads it (--format ome-zarr)
        ctx.produced[task.outputs[0]] = replace(pieces[0], frames=frames, size_t=frames // max(1, pieces[0].size_z),
                                                file_bytes=sum(p.file_bytes for p in pieces))
        return (int(SAFETY * (PROCESS_BASE + write_bytes(pieces[0], WORK_TILE_SIZE))),
                int(sum(p.file_bytes for p in pieces) * PYRAMID_DISK_FACTOR))

    def run(self, task: Task, ctx: RunContext) -> None:
        with ctx.tracker.step(task.id):
            merge_pieces([ctx.inputs[p] for p in task.inputs], ctx.where.output(task.outputs[0]))


KIND = MergeKind()

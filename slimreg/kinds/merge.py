"""``merge``: a session's registered pieces written back as one stack (``--merge-chunks``)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from slimreg.chunking import merge_pieces, stack_dtype
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
        dtype = stack_dtype(pieces)
        file_bytes = sum(int(p.file_bytes * np.dtype(dtype).itemsize / np.dtype(p.dtype).itemsize) for p in pieces)
        merged = replace(pieces[0], frames=frames, size_t=frames // max(1, pieces[0].size_z), dtype=dtype,
                         file_bytes=file_bytes)
        ctx.produced[task.outputs[0]] = merged
        return (int(SAFETY * (PROCESS_BASE + write_bytes(replace(pieces[0], dtype=dtype), WORK_TILE_SIZE))),
                int(file_bytes * PYRAMID_DISK_FACTOR))

    def run(self, task: Task, ctx: RunContext) -> None:
        with ctx.tracker.step(task.id):
            merge_pieces([ctx.inputs[p] for p in task.inputs], ctx.where.output(task.outputs[0]))


KIND = MergeKind()

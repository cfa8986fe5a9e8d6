"""``split``: a stack too long for one piece, written as pieces of at most ``--max-frames`` frames (or GB)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slimreg.chunking import Piece, split_stack
from slimreg.estimate import PROCESS_BASE, PYRAMID_DISK_FACTOR, SAFETY, write_bytes
from slimreg.kinds.base import EstimateContext, Params, RunContext

if TYPE_CHECKING:
    from slimreg.plan_model import Task


@dataclass(frozen=True)
class SplitParams(Params):
    pieces: list[Piece]
    tile_size: int

    def to_json(self) -> dict[str, Any]:
        return {"pieces": [dataclasses.asdict(p) for p in self.pieces], "tile_size": self.tile_size}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SplitParams:
        return cls([Piece(**p) for p in data["pieces"]], int(data["tile_size"]))


class SplitKind:
    name = "split"
    process = "SPLIT_STACK"
    params = SplitParams

    def estimate(self, task: Task, ctx: EstimateContext) -> tuple[int, int]:
        params = SplitParams.from_json(task.params)
        source = ctx.info(task.inputs[0])
        for piece in params.pieces:  # each piece is the stack's header with fewer frames
            frames = piece.stop - piece.start
            ctx.produced[piece.path] = dataclasses.replace(
                source, frames=frames, size_t=max(1, frames // source.size_z),
                file_bytes=int(source.file_bytes * frames / source.frames))
        longest = max(p.stop - p.start for p in params.pieces)
        peak = int(SAFETY * (PROCESS_BASE + write_bytes(source, params.tile_size, frames=longest)))
        return peak, int(source.file_bytes * PYRAMID_DISK_FACTOR)

    def run(self, task: Task, ctx: RunContext) -> None:
        params = SplitParams.from_json(task.params)
        pieces = [dataclasses.replace(p, path=str(ctx.where.output(p.path))) for p in params.pieces]
        with ctx.tracker.step(task.id):
            split_stack(ctx.inputs[task.inputs[0]], pieces, tile_size=params.tile_size)


KIND = SplitKind()

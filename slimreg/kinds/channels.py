"""``channels``: one sample's registered rounds written as one multi-channel OME-TIFF (``--merge-channels``).

What users of cyclic immunofluorescence open afterwards (as ASHLAR and palom write it, and VALIS'
``warp_and_merge_slides``): the reference round's channels first, then each round's, named and made unique by
round (``R2_CD8``). Planes are copied one at a time, tile by tile, from files already in the reference frame, so
memory is that of one plane's tiles, whatever the number of rounds or channels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from slimreg.estimate import (
    PROCESS_BASE,
    SAFETY,
    output_bytes,
    tiled_copy_disk_bytes,
    tiled_copy_memory_bytes,
    write_bytes,
)
from slimreg.kinds.base import EstimateContext, Params, RunContext

if TYPE_CHECKING:
    from slimreg.plan_model import Task


@dataclass(frozen=True)
class ChannelsParams(Params):
    # one entry per written plane: [index into the task's inputs, channel of that input, the plane's name]
    planes: list[tuple[int, int, str]]
    tile_size: int
    compression: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChannelsParams:
        return cls([(int(i), int(c), str(n)) for i, c, n in data["planes"]], int(data["tile_size"]),
                   str(data["compression"]))


def merged_planes(rounds: list[tuple[str, ...]], nuclear: str | None, nuclear_once: bool) -> list[tuple[int, int, str]]:
    """The planes of the merged image: every channel of every round, in round order (the reference first), each
    named ``R<round>_<name>``; with ``nuclear_once``, the ``nuclear`` channel of the first round only."""
    planes = []
    for number, names in enumerate(rounds):
        for channel, name in enumerate(names):
            if nuclear_once and number > 0 and nuclear is not None and name.lower() == nuclear.lower():
                continue
            planes.append((number, channel, f"R{number + 1}_{name}"))
    return planes


class ChannelsKind:
    name = "channels"
    process = "MERGE_CHANNELS"
    params = ChannelsParams

    def estimate(self, task: Task, ctx: EstimateContext) -> tuple[int, int]:
        params = ChannelsParams.from_json(task.params)
        infos = [ctx.info(path) for path in task.inputs]
        one_plane = infos[0]
        kept = {(index, channel) for index, channel, _ in params.planes}
        disk = sum(output_bytes(info, params.compression) * sum((i, c) in kept for c in range(info.channels))
                   // max(1, info.channels) for i, info in enumerate(infos))
        # the merged image, for a task that reads it (--format ome-zarr converts it)
        ctx.produced[task.outputs[0]] = replace(one_plane, channels=len(params.planes), channel_names=tuple(
            name for _, _, name in params.planes), file_bytes=int(disk), page_axes="C", channels_in_samples=False)
        # one plane is rendered, encoded and written at a time: the cost of writing a one-channel image, and the
        # reference round's page copied into tiles first where it is stored in strips (slimreg.io.retile)
        return int(SAFETY * (PROCESS_BASE + write_bytes(one_plane, params.tile_size, frames=1)
                             // max(1, one_plane.channels) + tiled_copy_memory_bytes(one_plane))), \
            int(disk) + tiled_copy_disk_bytes(one_plane)

    def run(self, task: Task, ctx: RunContext) -> None:
        from slimreg.io.merge import merge_channels

        params = ChannelsParams.from_json(task.params)
        with ctx.tracker.step(task.id):
            merge_channels([ctx.inputs[path] for path in task.inputs], params.planes,
                           ctx.where.output(task.outputs[0]), tile_size=params.tile_size,
                           compression=params.compression)


KIND = ChannelsKind()

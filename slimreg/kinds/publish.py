"""``publish``: one image already in the reference frame written where users open it, in the run's ``--format``.

Two uses, one kind: the sample's reference, rewritten into ``registered/<sample>/`` beside its registered images
(so the folder is the whole aligned series, in one tiling, compression and format; a hard link would have been
cheaper, but would keep whatever layout the reference came in, strips or no pyramid, and cannot cross file systems
where Nextflow stages from object storage); and, with ``--format ome-zarr``, each OME-TIFF that REGISTER and the
merges write under ``work/``, converted into the OME-Zarr users keep (QC and the merges read the OME-TIFF).
Memory is that of writing one image, whatever its size (``slimreg.io.convert``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from slimreg.estimate import PROCESS_BASE, SAFETY, output_bytes, rewrite_bytes, tiled_copy_disk_bytes
from slimreg.kinds.base import EstimateContext, Params, RunContext

if TYPE_CHECKING:
    from slimreg.plan_model import Task


@dataclass(frozen=True)
class PublishParams(Params):
    image_format: str  # ome-tiff or ome-zarr
    tile_size: int
    compression: str


class PublishKind:
    name = "publish"
    process = "PUBLISH_IMAGE"
    params = PublishParams

    def estimate(self, task: Task, ctx: EstimateContext) -> tuple[int, int]:
        params = PublishParams.from_json(task.params)
        info = ctx.info(task.inputs[0])
        ctx.produced[task.outputs[0]] = info  # the same pixels, channels and frame
        return (int(SAFETY * (PROCESS_BASE + rewrite_bytes(info, params.tile_size))),
                output_bytes(info, params.compression) + tiled_copy_disk_bytes(info))

    def run(self, task: Task, ctx: RunContext) -> None:
        from slimreg.io.convert import rewrite_image

        params = PublishParams.from_json(task.params)
        with ctx.tracker.step(task.id):
            rewrite_image(ctx.inputs[task.inputs[0]], ctx.where.output(task.outputs[0]),
                          image_format=params.image_format, tile_size=params.tile_size,
                          compression=params.compression)


KIND = PublishKind()

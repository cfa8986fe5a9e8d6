"""``motion``: frames ``[start, stop)`` of one recording corrected against its session's template
(``--motion-correction``), written as the piece that the session's projection and registration then use, with its
per-frame shifts (CSV, JSON) and their plot."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from slimreg.estimate import PROCESS_BASE, PYRAMID_DISK_FACTOR, SAFETY, write_bytes
from slimreg.kinds.base import EstimateContext, Params, RunContext
from slimreg.options import corrected_dtype

if TYPE_CHECKING:
    from slimreg.plan_model import Task

# the recording path's imports beyond the process baseline (scipy.fft, skimage, matplotlib for the plot); per
# pixel of one frame: the template and its spectrum, one frame's FFTs, the two running means (float64) and a moved
# plane; piecewise adds cv2.remap's maps. Measured 202-204 / 233-240 / 455-471 MB at 512 / 1024 / 2048 px frames
# (docs/motion.md, "Memory"), whatever the number of frames
MOTION_BASE = 40 * 1024**2
MOTION_PER_PX = {"rigid": 72, "piecewise": 80}


@dataclass(frozen=True)
class MotionParams(Params):
    channel: int  # the registration channel: shifts are measured on it and every channel is moved alike
    start: int
    stop: int
    mode: str  # rigid | piecewise
    tile_size: int
    compression: str
    # the corrected frames' type: "input" (the recording's) or a numpy type name (--motion-dtype, which the plan always
    # writes); "input" only for the task specs of plans written before the option existed, which wrote that type
    dtype: str = "input"

    def output_dtype(self, source_dtype: str) -> str:
        return corrected_dtype(self.dtype, source_dtype)


class MotionKind:
    name = "motion"
    process = "CORRECT_MOTION"
    params = MotionParams

    def estimate(self, task: Task, ctx: EstimateContext) -> tuple[int, int]:
        from slimreg.recording import chunk_frames_for

        params = MotionParams.from_json(task.params)
        source = ctx.info(task.inputs[0])
        frames = params.stop - params.start
        dtype = params.output_dtype(source.dtype)
        pixels = source.width * source.height
        raw = frames * source.channels * pixels * np.dtype(dtype).itemsize
        # another type than the input's is given no credit for compression: float32 is written without a predictor,
        # and deflate gains little on noisy float frames (the real movie: 2.10 times its uint16 file)
        file_bytes = (int(source.file_bytes * frames / max(1, source.frames)) if dtype == source.dtype else raw)
        corrected = replace(source, frames=frames, size_t=frames, dtype=dtype, file_bytes=file_bytes)
        ctx.produced[task.outputs[0]] = corrected
        chunk = chunk_frames_for((source.height, source.width))
        # a chunk of float32 frames and its corrected planes of every channel (held for the writer; read back as
        # float32 in the QC pass)
        per_chunk_px = max(2 * 4, 4 + source.channels * np.dtype(dtype).itemsize)
        peak = (PROCESS_BASE + MOTION_BASE + per_chunk_px * chunk * pixels + MOTION_PER_PX[params.mode] * pixels
                + write_bytes(corrected, params.tile_size))
        return int(SAFETY * peak), int(corrected.file_bytes * PYRAMID_DISK_FACTOR)  # no scratch copy

    def run(self, task: Task, ctx: RunContext) -> None:
        from slimreg.recording import MotionOutputs, StackFrames, correct_recording, read_template

        params = MotionParams.from_json(task.params)
        corrected, shifts, record, plot = (ctx.where.output(p) for p in task.outputs)
        with ctx.tracker.step(task.id):
            frames = StackFrames(Path(ctx.inputs[task.inputs[0]]), params.channel, params.start, params.stop)
            try:
                template = read_template(ctx.inputs[task.inputs[1]], frames.shape)
                correct_recording(frames, template, params.mode, MotionOutputs(corrected, shifts, record, plot),
                                  name=Path(task.outputs[0]).name.removesuffix(".ome.tif"),
                                  tile_size=params.tile_size, compression=params.compression,
                                  dtype=np.dtype(params.output_dtype(str(frames.dtype))))
            finally:
                frames.close()


KIND = MotionKind()

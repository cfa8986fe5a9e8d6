"""Peak memory and disk of every task, predicted from image headers alone.

The model follows what the code allocates (numbers in bytes; "px" = pixels of a working image):

- Every task starts from a process baseline (Python, numpy, libvips, OpenCV imported), ``PROCESS_BASE``.
  The valis engine's VALIS child adds torch, kornia and VALIS (``VALIS_IMPORT``); the task's own process never
  imports them.
- Feature engine, per moving image (one at a time): candidates from four detectors and a rotation search at half
  ``processing_dim`` (``SIFT_PER_PX`` per pixel of ``processing_dim``, both images, a bound for the smaller images
  actually used), then the polish at ``micro_dim`` (``ECC_PER_PX``: the arrays of the ECC step it replaced,
  plus the zeros around the moving edge map that let refinement count tissue carried off the image, measured 17 B/px;
  docs/memory-model.md), then DIS and DeepFlow optical flow at ``non_rigid_dim`` (as SIFT, 255 B per pixel of one
  image; DeepFlow alone measured about 220), and, where the moving tissue lies in pieces, a shift search, the
  detectors and a refinement on one piece at a time at the same size (the search runs on a grid half an edge sigma
  apart: a few MB. Measured within the same bound: a torn real pair peaks at 302-394 MB for the whole `slimreg
  register`, estimated 362-435 MB; enlarged 20x at the high preset, 1069 MB against 1402 MB). The search's two
  images are described side by side first (``DESCRIBE_PER_PX`` per pixel of the pair at ``search_dim``). The stages
  run one after another, so the pair costs the largest of them plus ``PAIR_OVERHEAD``.
- VALIS engine, per batch: one VALIS run of the reference and the batch's moving images, dominated by a constant
  (``VALIS_PAIR_BASE``; a two-image run measured 2.2-2.7 GB whatever the image size) plus ``VALIS_PER_IMAGE`` for
  each further moving image and ``VALIS_PER_PX`` at ``processing_dim``, in a child process that imports torch
  (``VALIS_IMPORT``, measured 1.17 GB) and ends with the run. Before VALIS starts, the copy of each image it reads
  is made, one at a time (``VALIS_COPY_PER_PX`` per pixel of the copy, bounded by ``valis_copy_dim``).
- Streamed warp and OME-TIFF writing: planes are written one at a time, each rendered in square blocks and encoded
  tile by tile (slimreg.io.tiles), so the cost does not grow with the image's width, height or number of channels.
  Writing alone (split, merge, projections) costs ``WRITE_BASE`` plus ``WRITE_PER_TILE_BYTE`` per byte of one output
  tile (tiles queued for the encoders, one per pyramid level) plus ``WRITE_PER_BLOCK_BYTE`` per byte of one render
  block plus ``WRITE_PER_PLANE`` (and ``WRITE_PER_PLANE_TILE`` per tile) per plane; a warp adds the ``RESAMPLE_*``
  terms (the index, the displacement field, a block's source region and libvips' ``mapim`` buffers where a block
  takes that path, the moving image's decoded tiles ``SOURCE_CACHE_BYTES`` and a block's maps).
- Projection: two float64 accumulators at the projection's size. QC: ~``QC_PER_PX`` per pixel at ``max_dim``.

The constants were measured on this project's machine (2 cores, 24 GB) with ``benchmarks/preflight_accuracy.py``
and ``/tmp/measure.py``-style runs (each step in a fresh process, peak ``ru_maxrss``); see
docs/memory-model.md. A ``SAFETY`` factor keeps the estimate at or above the measured peak. Disk: registered
outputs are estimated from the input's file size (same compression, plus the pyramid's third).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from slimreg.io.probe import ImageInfo
from slimreg.io.retile import copy_buffer_bytes, needs_tiled_copy, page_bytes
from slimreg.io.source_tiles import SOURCE_CACHE_BYTES
from slimreg.io.tiles import RENDER_BLOCK_PIXELS

if TYPE_CHECKING:
    from slimreg.register.settings import RegistrationSettings

MB = 1024**2
PROCESS_BASE = 68 * MB
# OpenCV and SciPy beyond PROCESS_BASE, for the tasks that analyse images and count nothing else for them (template,
# QC, report): with the wheels of 7 December 2026 (opencv-contrib 4.9.0.80, scipy 1.17.1, pyvips 3.2.0) such a
# process starts at 94-110 MB, and the three measured 17-20 % above their estimates (docs/memory-model.md)
ANALYSIS_IMPORTS = 42 * MB
VALIS_IMPORT = 1180 * MB
VALIS_PAIR_BASE = 1500 * MB
VALIS_PER_PX = 60
# each moving image beyond the first in one groupwise run: measured +10-60 MB at 5 % scale (docs/memory-model.md);
# at VALIS' 2048 px non-rigid size its fields both ways and warped copies take about 100 MB, counted twice over
VALIS_PER_IMAGE = 250 * MB
# The copy VALIS reads holds the tissue's box at VALIS' finest size; a box narrower than this share of the image's
# side is read coarser, which bounds the copy (8192 px a side at the medium preset).
VALIS_MIN_TISSUE_SHARE = 0.25
VALIS_COPY_PER_PX = 8  # the copy as read (float32 for a float image) and as written (uint16), one image at a time
# SimpleITK, four detectors' keypoints and the candidates' scores (measured with benchmarks/accuracy.py: the
# whole `slimreg register` of a real 1164 x 787 RGB pair peaks at 253 MB, of a 891 x 735 pair at 368 MB); SimpleITK
# (about 90 MB) is imported only for a torn section's pieces, and the bound keeps it for them
PAIR_OVERHEAD = 150 * MB
SIFT_PER_PX = 255
ECC_PER_PX = 120
# the light engine's diffeomorphic field, both directions side by side, per px at ``diffeomorphic_dim`` (one image):
# 184-193 measured by tracemalloc on the 20x kidney pair at 1434 and 2048 px, plus 8 for a brightfield pair's second
# grey (the darkness of both images, held through the step; docs/memory-model.md)
DIFFEOMORPHIC_PER_PX = 203
# and the field it starts from where it refines DeepFlow's or the pieces' (two float32 bands held throughout)
DIFFEOMORPHIC_START_PER_PX = 8
FIELD_CANDIDATES_PER_PX = 48  # held meanwhile, counted: four flows tried before it (8 B each), the placed pair, edges
# the search's two images described side by side (slimreg.register.initial.describe_both), per px of the pair at
# ``search_dim``: the peak above the images themselves measured 465 B/px on the 512 px nuclei pair, 340 and 233 on
# the lung pair at 445 and 890 px (one after the other 180, 190 and 123; docs/memory-model.md)
DESCRIBE_PER_PX = 480
WRITE_BASE = 12 * MB
WRITE_PER_TILE_BYTE = 4
WRITE_PER_BLOCK_BYTE = 2
# what a many-plane write keeps per plane (the reader's page offsets, a recording's per-frame table): 76 bytes per
# frame measured from 1000 to 100 000 frames (docs/memory-model.md, "Many planes"), and 16 bytes per tile offset and
# byte count
WRITE_PER_PLANE = 256
WRITE_PER_PLANE_TILE = 32
RESAMPLE_BASE = 33 * MB  # with WRITE_*: 45 MB + 12 B per tile byte + 8 B per block byte for a warp
RESAMPLE_PER_TILE_BYTE = 8
RESAMPLE_PER_BLOCK_BYTE = 6
# a warp rendered by remap (slimreg.warp.WarpedPlane) also holds the moving image's decoded tiles
# (``SOURCE_CACHE_BYTES``) and two float32 maps of a render block: 51-78 MB above the libvips pipeline's peak
# (docs/memory-model.md, "The warp in blocks")
REMAP_MAPS_BYTES = 8 * RENDER_BLOCK_PIXELS**2
PROJECT_PER_PX = 40
QC_PER_PX = 125
QC_OVERHEAD = 10 * MB
SAFETY = 1.1
# a step's processes may use its estimate times this before slimreg stops them (`slimreg run`'s tasks, the valis
# engine's VALIS child): the pre-flight predicts peaks within 1.1-1.5x (docs/memory-model.md)
BUDGET_MARGIN = 2.0
PYRAMID_DISK_FACTOR = 1.4
# rows of one plane a rewrite holds across the source's width: its peak grew by 21-37 MB from 2000 to 8000-16000 px
# wide (4 x uint16 and 1 x uint16, tiled; 1.2-3.8 KB per px of width), and 1.5 render blocks of 16-bit rows (3 KB
# per px) covers every measurement (docs/memory-model.md, "Re-run, 7 December 2026")
REWRITE_BAND_ROWS = 1.5 * RENDER_BLOCK_PIXELS
COMPRESSION_RATIO = {"none": 1.0, "deflate": 0.8, "lzw": 0.9, "zstd": 0.8, "jpeg": 0.2}


def in_reference_frame(info: ImageInfo, shape: tuple[int, int], tile_size: int) -> ImageInfo:
    """The header a registered copy of ``info`` will have: its channels, frames and pixel type, in the reference
    frame's ``shape`` (level-0 height, width) with slimreg's own tiles and pyramid, and a file size scaled by area.

    A registered copy is written in the reference's frame, not its source's: estimated from the moving image's own
    header, a 512 px image onto an 8192 px reference was predicted at 0.3 MB and wrote 89 MB, and the other way
    round 40 GB was predicted for a few MB (issue 41 item 12). QC's estimates read this header too."""
    from dataclasses import replace

    from slimreg.io.tiles import pyramid_shapes

    height, width = int(shape[0]), int(shape[1])
    area = (height * width) / max(1, info.width * info.height)
    return replace(info, width=width, height=height, levels=tuple(pyramid_shapes(height, width, tile_size)),
                   tile=(tile_size, tile_size), file_bytes=math.ceil(info.file_bytes * area))


def output_bytes(info: ImageInfo, compression: str) -> int:
    """Disk of a registered copy: the input's size when the compression family is the same, else from pixels."""
    same = info.compression.replace("adobe_", "") == compression or (
        compression == "none" and info.compression == "none")
    if same:
        return int(info.file_bytes * PYRAMID_DISK_FACTOR)
    return int(info.bytes_level0 * 4 / 3 * COMPRESSION_RATIO.get(compression, 1.0))
MAX_PLAUSIBLE_TASK_BYTES = 4 * 1024**4  # no single machine offers more than this


def working_pixels(info: ImageInfo, max_dim: int) -> int:
    """Pixels of a copy block-averaged by the integer factor that brings the long side to ``max_dim``."""
    factor = max(1, math.ceil(max(info.width, info.height) / max_dim))
    return (info.width // factor) * (info.height // factor)


def write_bytes(info: ImageInfo, tile_size: int, frames: int | None = None, *, resampled: bool = False) -> int:
    """Pyramidal write of one image (all channels and frames), whatever its size; ``resampled``: through a warp."""
    planes = (1 if info.is_rgb else info.channels) * (frames if frames is not None else info.frames)
    tile_bytes = tile_size**2 * (3 if info.is_rgb else 1) * np.dtype(info.dtype).itemsize
    block_bytes = tile_bytes * (max(tile_size, RENDER_BLOCK_PIXELS) // tile_size) ** 2
    level_tiles = -(-info.width // tile_size) * -(-info.height // tile_size) * 4 // 3 + 1  # every pyramid level
    total = (WRITE_BASE + WRITE_PER_TILE_BYTE * tile_bytes + WRITE_PER_BLOCK_BYTE * block_bytes
             + (WRITE_PER_PLANE + WRITE_PER_PLANE_TILE * level_tiles) * planes)
    if resampled:
        total += (RESAMPLE_BASE + RESAMPLE_PER_TILE_BYTE * tile_bytes + RESAMPLE_PER_BLOCK_BYTE * block_bytes
                  + SOURCE_CACHE_BYTES + REMAP_MAPS_BYTES)
    return int(total)


def tiled_copy_memory_bytes(info: ImageInfo) -> int:
    """Memory of making the tiled copy a writer reads a stripped image from (slimreg.io.retile), before it writes."""
    return copy_buffer_bytes(info) if needs_tiled_copy(info) else 0


def tiled_copy_disk_bytes(info: ImageInfo) -> int:
    """Scratch disk while a stripped image is written block by block: one page's tiled copy, at most its pixels."""
    return page_bytes(info) if needs_tiled_copy(info) else 0


def valis_copy_dim(info: ImageInfo, finest_dim: int, tissue_share: float = VALIS_MIN_TISSUE_SHARE) -> int:
    """Long side (px) of the copy the valis engine writes for VALIS: VALIS sizes its non-rigid step on the tissue's
    bounding box, not on the image (``max_non_rigid_registration_dim_px``), so where the box spans ``tissue_share``
    of the image's long side, the copy needs ``finest_dim / tissue_share`` px to give VALIS what it reads from the
    slide itself. Never above level 0; the integer block factor is the largest that keeps at least that."""
    long_side = max(info.width, info.height)
    needed = math.ceil(finest_dim / max(tissue_share, VALIS_MIN_TISSUE_SHARE))
    if needed >= long_side:
        return long_side
    return math.ceil(long_side / (long_side // needed))


def rewrite_bytes(info: ImageInfo, tile_size: int) -> int:
    """Pyramidal rewrite of a user's file as it is (a PUBLISH of the reference): the write, the tiled copy a
    file stored in strips is read from, and what reading the source holds across its width (``REWRITE_BAND_ROWS``)."""
    sample_bytes = (3 if info.is_rgb else 1) * np.dtype(info.dtype).itemsize
    return (write_bytes(info, tile_size) + tiled_copy_memory_bytes(info)
            + int(REWRITE_BAND_ROWS * info.width * sample_bytes))


def warp_bytes(info: ImageInfo, tile_size: int, frames: int | None = None) -> int:
    """Streamed warp + pyramidal write of one image (all channels and frames), whatever the output's size."""
    return write_bytes(info, tile_size, frames, resampled=True) + tiled_copy_memory_bytes(info)


def valis_run_bytes(reference: ImageInfo, moving: list[ImageInfo], settings: RegistrationSettings) -> int:
    """One VALIS run of the reference and ``moving`` (the valis engine's child process): a pair's cost, plus one
    image's share for each further moving image (VALIS keeps every image's processed copies and fields)."""
    images = [reference, *moving]
    pixels = sum(working_pixels(info, settings.processing_dim) for info in images)
    # the copies are written one at a time and freed before VALIS starts
    finest = settings.valis_finest_dim
    copy = max(working_pixels(info, valis_copy_dim(info, finest)) for info in images)
    run = VALIS_PAIR_BASE + VALIS_PER_IMAGE * (len(moving) - 1) + VALIS_PER_PX * pixels
    return int(VALIS_IMPORT + max(run, VALIS_COPY_PER_PX * copy))


def pair_bytes(reference: ImageInfo, moving: ImageInfo | list[ImageInfo], settings: RegistrationSettings) -> int:
    """Registration of one moving image (not counting the warp); with the valis engine, of a batch of them
    registered together (``valis_run_bytes``)."""
    if settings.engine == "valis":
        return valis_run_bytes(reference, moving if isinstance(moving, list) else [moving], settings)
    assert not isinstance(moving, list), "the light engine registers one moving image at a time"

    def pixels(dim: int) -> int:
        return working_pixels(reference, dim) + working_pixels(moving, dim)

    stages = [SIFT_PER_PX * pixels(settings.processing_dim) / 2, DESCRIBE_PER_PX * pixels(settings.search_dim)]
    # the mirror decoy's search runs beside the polish and the non-rigid step (slimreg.register.feature): one image
    # described, the rotation search's FFTs, refinements side by side, all at ``search_dim``; measured 146-250 B per
    # px of the pair there (docs/memory-model.md), counted at SIFT's 255
    decoy = 0.0 if settings.allow_mirror else SIFT_PER_PX * pixels(settings.search_dim)
    if settings.micro:
        stages.append(ECC_PER_PX * pixels(settings.micro_dim) / 2 + decoy)
    if settings.non_rigid:
        stages.append(SIFT_PER_PX * pixels(settings.non_rigid_dim) / 2 + decoy)
        # estimated on the reference's grid, while the flows' candidates are held at ``non_rigid_dim``
        stages.append((DIFFEOMORPHIC_PER_PX + DIFFEOMORPHIC_START_PER_PX)
                      * working_pixels(reference, settings.diffeomorphic_dim)
                      + FIELD_CANDIDATES_PER_PX * pixels(settings.non_rigid_dim) / 2 + decoy)
    return int(PAIR_OVERHEAD + max(stages))


def register_task_bytes(reference: ImageInfo, units: list[tuple[ImageInfo, list[ImageInfo]]],
                        settings: RegistrationSettings) -> int:
    """Peak of a REGISTER task: images are handled one at a time, so the largest image decides; the valis engine
    registers the batch's images in one VALIS run first."""
    peak = 0
    if settings.engine == "valis" and len(units) > 1:
        moving = [registration_info for registration_info, _ in units if registration_info.path != reference.path]
        peak = valis_run_bytes(reference, moving, settings) if moving else 0
    for registration_info, targets in units:
        peak = max(peak, pair_bytes(reference, registration_info, settings))
        for target in targets:
            peak = max(peak, warp_bytes(target, settings.tile_size))
    return int(SAFETY * (PROCESS_BASE + peak))

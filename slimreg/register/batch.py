"""REGISTER: one reference plus a batch of moving images -> registered OME-TIFFs and transform files.

Per moving image: the engine's transform, then a streamed full-resolution warp of every channel (and
frame) into the reference frame, then ``<stem>.transform.json``. An image that fails gets a clear error and
no output files; the others go on, and the step's exit status reports the failure.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimreg.atomic import write_json_atomic
from slimreg.errors import RegistrationError, SlimregError
from slimreg.io.read import TiffImage
from slimreg.memory import MemoryTracker
from slimreg.register.channel import OPTICAL_DENSITY, choose_channel
from slimreg.register.engine import get_engine
from slimreg.register.settings import RegistrationSettings
from slimreg.samplesheet import SampleRow
from slimreg.transform import Transform
from slimreg.warp import warp_file


@dataclass
class ImageResult:
    """What happened to one moving image."""

    image: str
    stem: str
    status: str  # "ok" | "failed"
    error: str | None = None
    registered: str | None = None
    transform: str | None = None
    seconds: float = 0.0
    quality: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchResult:
    reference: str
    settings: dict[str, Any]
    images: list[ImageResult]

    @property
    def failed(self) -> list[ImageResult]:
        return [r for r in self.images if r.status != "ok"]


def image_stem(path: str | Path) -> str:
    return SampleRow(0, "", Path(path), False, "", None).stem


def moving_channel_for(reference: TiffImage, reference_channel: int | str, moving: TiffImage,
                       settings: RegistrationSettings) -> int | str:
    """The moving image's channel that matches the reference's registration channel (by name)."""
    if reference_channel == OPTICAL_DENSITY or moving.info.is_rgb:
        if not (reference.info.is_rgb and moving.info.is_rgb):
            raise RegistrationError("is brightfield RGB while the reference is not (or the other way round); "
                                    "they cannot be registered on one channel.", moving.info.path,
                                    "register brightfield and fluorescence images in separate samples.")
        return choose_channel(moving.info, settings.channel)
    if settings.channel is not None:
        return choose_channel(moving.info, settings.channel)
    name = reference.info.channel_names[int(reference_channel)]
    names = [n.lower() for n in moving.info.channel_names]
    if name.lower() in names:
        return names.index(name.lower())
    if _generic_name(name) and int(reference_channel) < moving.info.channels:
        return int(reference_channel)  # unnamed channels: match by position
    raise RegistrationError(f"has no channel {name!r}, the reference's registration channel (channels: "
                            f"{', '.join(moving.info.channel_names)}).", moving.info.path,
                            "name the channel to register on with --channel.")


def _generic_name(name: str) -> bool:
    """Names like C0, C1 that a writer made up when the file carried none."""
    return name[:1].upper() == "C" and name[1:].isdigit()


def register_batch(reference_path: str | Path, moving_paths: list[str | Path], outdir: str | Path,
                   settings: RegistrationSettings, *, tracker: MemoryTracker | None = None,
                   keep_work: bool = False, include_reference: bool = False) -> BatchResult:
    """Register each moving image onto the reference; write outputs into ``outdir``."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    own_tracker = tracker is None
    tracker = tracker or MemoryTracker()
    reference = TiffImage(reference_path)
    reference_channel = choose_channel(reference.info, settings.channel)
    results: list[ImageResult] = []
    candidates: list[tuple[TiffImage, int | str, ImageResult]] = []
    for path in moving_paths:
        stem = image_stem(path)
        result = ImageResult(image=str(path), stem=stem, status="failed")
        results.append(result)
        try:
            moving = TiffImage(path)
            candidates.append((moving, moving_channel_for(reference, reference_channel, moving, settings), result))
        except SlimregError as error:
            result.error = str(error)

    workdir = Path(tempfile.mkdtemp(prefix=".slimreg-work-", dir=outdir))
    try:
        engine = get_engine(settings.engine)
        start = time.perf_counter()
        with tracker.task(f"register:{reference.path.name}"):
            transforms = engine.register_many(reference, [c[0] for c in candidates], reference_channel,
                                              [c[1] for c in candidates], settings, workdir) if candidates else []
        share = (time.perf_counter() - start) / max(1, len(candidates))
        for (moving, _, result), transform in zip(candidates, transforms, strict=True):
            result.seconds = share
            if isinstance(transform, Exception):
                result.error = str(transform)
                continue
            _write_outputs(reference, moving, transform, outdir, result, settings, tracker)
        if include_reference:
            identity = Transform(np.eye(3), None, (reference.info.height, reference.info.width),
                                 (reference.info.height, reference.info.width), {"engine": "identity"})
            ref_result = ImageResult(image=str(reference.path), stem=image_stem(reference.path), status="failed")
            _write_outputs(reference, reference, identity, outdir, ref_result, settings, tracker)
            results.insert(0, ref_result)
    finally:
        if not keep_work:
            shutil.rmtree(workdir, ignore_errors=True)
    batch = BatchResult(reference=str(reference.path), settings=settings.to_json(), images=results)
    write_json_atomic(outdir / f"{image_stem(reference.path)}.register.json",
                      {"reference": batch.reference, "settings": batch.settings,
                       "images": [asdict(r) for r in batch.images]})
    tracker.write(outdir / f"{image_stem(reference.path)}.register.memory.json", {"step": "register"})
    if own_tracker:
        tracker.close()
    return batch


def _write_outputs(reference: TiffImage, moving: TiffImage, transform: Transform, outdir: Path, result: ImageResult,
                   settings: RegistrationSettings, tracker: MemoryTracker) -> None:
    stem = result.stem
    transform.metadata.update({"reference": str(reference.path), "moving": str(moving.path),
                               "settings": settings.to_json(),
                               "reference_pixel_size_um": reference.info.pixel_size_um})
    registered = outdir / f"{stem}.ome.tif"
    start = time.perf_counter()
    try:
        with tracker.task(f"warp:{stem}"):
            warp_file(moving, transform, registered, reference_shape=(reference.info.height, reference.info.width),
                      pixel_size_um=reference.info.pixel_size_um, compression=settings.compression,
                      tile_size=settings.tile_size, interpolation=settings.interpolation)
        transform_path = transform.save(outdir / f"{stem}.transform.json")
    except SlimregError as error:
        result.error = str(error)
        registered.unlink(missing_ok=True)
        return
    result.status, result.registered, result.transform = "ok", str(registered), str(transform_path)
    result.seconds += time.perf_counter() - start
    result.quality = transform.metadata.get("quality", {})

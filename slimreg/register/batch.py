"""REGISTER: one reference plus a batch of moving images -> registered OME-TIFFs and transform files.

Per moving image: the engine's transform, then a streamed full-resolution warp of every channel (and
frame) into the reference frame, then ``<stem>.transform.json``. An image that fails gets a clear error and
no output files; the others go on, and the step's exit status reports the failure.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from slimreg.atomic import write_json_atomic
from slimreg.errors import RegistrationError, SlimregError, os_error_message
from slimreg.io.integrity import damaged_input_error, is_decode_error
from slimreg.io.read import TiffImage
from slimreg.io.vips import pyvips
from slimreg.memory import MemoryTracker
from slimreg.motion_records import frame_shifts_record
from slimreg.options import WORK_TILE_SIZE
from slimreg.register.channel import (
    OPTICAL_DENSITY,
    choose_channel,
    grey_brightfield_glass,
    is_grey_brightfield,
)
from slimreg.register.engine import get_engine
from slimreg.register.judgement import judge_transform
from slimreg.register.settings import RegistrationSettings
from slimreg.samplesheet import image_stem
from slimreg.transform import MOVING_GLASS, Transform
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
    # the file names this image writes, failed or not: a later task that misses one learns why from this log
    outputs: list[str] = field(default_factory=list)


@dataclass
class BatchResult:
    reference: str
    settings: dict[str, Any]
    images: list[ImageResult]

    @property
    def failed(self) -> list[ImageResult]:
        return [r for r in self.images if r.status != "ok"]


def moving_channel_for(reference: TiffImage, reference_channel: int | str, moving: TiffImage,
                       settings: RegistrationSettings) -> int | str:
    """The moving image's channel that matches the reference's registration channel (by name)."""
    if reference_channel == OPTICAL_DENSITY or moving.info.is_rgb:
        if reference.info.is_rgb and moving.info.is_rgb:
            return choose_channel(moving.info, settings.channel)
        if reference_channel == OPTICAL_DENSITY and is_grey_brightfield(moving):
            return OPTICAL_DENSITY  # its optical density, as the RGB reference's
        if moving.info.is_rgb:
            raise RegistrationError("is brightfield RGB while the reference is not; they cannot be registered on "
                                    "one channel.", moving.info.path,
                                    "make an RGB section the sample's reference (a brightfield scan stored as one "
                                    "grey channel is registered onto RGB ones), or register brightfield and "
                                    "fluorescence images in separate samples.")
        raise RegistrationError("is fluorescence (its glass is dark) while the reference is brightfield RGB; they "
                                "cannot be registered on one channel.", moving.info.path,
                                "register brightfield and fluorescence images in separate samples (a brightfield "
                                "scan stored as one grey channel, glass bright, is registered onto RGB ones).")
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


@dataclass
class MovingUnit:
    """One registration (a plain image, or a session through its projection) and the files it is applied to."""

    name: str
    registration_image: Path
    apply_to: list[Path]
    registered: list[Path]
    transform: Path
    scale: int = 1  # level-0 pixels of ``apply_to`` per pixel of ``registration_image``
    registered_projection: Path | None = None
    frame_shifts: list[Path | None] = field(default_factory=list)  # per file of apply_to: its motion shifts CSV
    frame_origins: list[tuple[str, int]] = field(default_factory=list)  # and its recording's name and first frame


def units_for_images(paths: list[str | Path], outdir: Path) -> list[MovingUnit]:
    """Plain images: each registers itself and is applied to itself; outputs side by side in ``outdir``."""
    return [MovingUnit(image_stem(p), Path(p), [Path(p)], [outdir / f"{image_stem(p)}.ome.tif"],
                       outdir / f"{image_stem(p)}.transform.json") for p in paths]


def register_images(reference_path: str | Path, moving_paths: list[str | Path], outdir: str | Path,
                   settings: RegistrationSettings, *, tracker: MemoryTracker | None = None,
                   keep_work: bool = False, include_reference: bool = False) -> BatchResult:
    """Register each moving image onto the reference; write outputs into ``outdir``."""
    outdir = Path(outdir)
    units = units_for_images(list(moving_paths), outdir)
    if include_reference:
        units.insert(0, MovingUnit(image_stem(reference_path), Path(reference_path), [Path(reference_path)],
                                   [outdir / f"{image_stem(reference_path)}.ome.tif"],
                                   outdir / f"{image_stem(reference_path)}.transform.json"))
    return register_units(reference_path, units, settings, log_dir=outdir, tracker=tracker, keep_work=keep_work)


def register_units(reference_path: str | Path, units: list[MovingUnit], settings: RegistrationSettings, *,
                   log_dir: Path, reference_scale: int = 1, reference_shape: tuple[int, int] | None = None,
                   tracker: MemoryTracker | None = None, keep_work: bool = False,
                   log_name: str | None = None) -> BatchResult:
    """Find each unit's transform against the reference and apply it to the unit's files (streamed)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    own_tracker = tracker is None
    tracker = tracker or MemoryTracker()
    reference = TiffImage(reference_path)
    reference_channel = choose_channel(reference.info, settings.channel)
    output_shape = tuple(reference_shape) if reference_shape else (reference.info.height, reference.info.width)
    output_pixel_size = _scaled_pixel_size(reference.info.pixel_size_um, reference_scale)
    results: list[ImageResult] = []
    candidates: list[tuple[MovingUnit, TiffImage, int | str, ImageResult]] = []
    opened: list[tuple[ImageResult, TiffImage]] = []  # every moving image whose header was read
    for unit in units:
        result = ImageResult(image=str(unit.registration_image), stem=unit.name, status="failed",
                             outputs=[path.name for path in (*unit.registered, unit.transform)])
        results.append(result)
        if Path(unit.registration_image).resolve() == Path(reference_path).resolve():
            candidates.append((unit, reference, reference_channel, result))
            continue
        try:
            moving = TiffImage(unit.registration_image)
            opened.append((result, moving))
            candidates.append((unit, moving, moving_channel_for(reference, reference_channel, moving, settings),
                               result))
        except Exception as error:
            result.error = str(image_error(error, unit.registration_image, "reading its header"))

    workdir = Path(tempfile.mkdtemp(prefix=".slimreg-work-", dir=log_dir))
    try:
        # BLAS on one thread for the whole step: the engines run their own work side by side on the task's CPUs
        # (a field's two directions, the decoy beside the non-rigid step), and a BLAS that splits each small
        # product over threads of its own beside them oversubscribes the CPUs (docs/accuracy.md, "Thirty-fourth
        # attempt")
        with threadpool_limits(limits=1, user_api="blas"):
            to_register = [c for c in candidates if c[1] is not reference]
            transforms: dict[int, Transform | Exception] = {}
            for unit, image, _, _ in candidates:
                if image is reference:
                    transforms[id(unit)] = Transform(np.eye(3), None, (reference.info.height, reference.info.width),
                                                     (reference.info.height, reference.info.width),
                                                     {"engine": "identity"})
            if to_register:
                engine = get_engine(settings.engine)
                with tracker.step(f"register:{reference.path.name}"):
                    # the whole batch in one call, as the engine is meant to run (VALIS registers a sample's images
                    # together); only if that call raises, one image at a time, so that the error is that image's
                    # failure, not its batch-mates'
                    start = time.perf_counter()
                    try:
                        found = engine.register_many(reference, [c[1] for c in to_register], reference_channel,
                                                     [c[2] for c in to_register], settings, workdir)
                    except MemoryError:  # the task's, not an image's: the runner retries it one preset lower
                        raise
                    except Exception:
                        found = None
                    if found is not None:
                        share = (time.perf_counter() - start) / len(to_register)
                        for (unit, _, _, result), transform in zip(to_register, found, strict=True):
                            transforms[id(unit)] = transform
                            result.seconds = share
                    for number, (unit, image, channel, result) in enumerate(to_register if found is None else []):
                        start = time.perf_counter()
                        try:
                            transforms[id(unit)] = engine.register_many(
                                reference, [image], reference_channel, [channel], settings,
                                workdir / f"unit{number}")[0]
                        except Exception as error:
                            transforms[id(unit)] = image_error(error, image.path, "registering it")
                        result.seconds = time.perf_counter() - start
            for unit, image, channel, result in candidates:
                transform = transforms[id(unit)]
                if not isinstance(transform, Exception) and image is not reference:
                    # whichever engine found it: the one rule that decides whether a result is kept
                    try:
                        judge_transform(reference, image, reference_channel, channel, transform, settings)
                    except RegistrationError as error:
                        transform = error
                if isinstance(transform, Exception):
                    result.error = str(transform)
                    continue
                if channel == OPTICAL_DENSITY and not image.info.is_rgb:
                    # a grey brightfield scan: the margins the warp adds are its glass, as an RGB section's are white
                    transform.metadata[MOVING_GLASS] = grey_brightfield_glass(image)
                try:
                    _write_outputs(reference, image, unit, transform, result, settings, tracker, reference_scale,
                                   output_shape, output_pixel_size)
                except Exception as error:  # _write_outputs removed what it had written
                    result.error = str(image_error(error, image.path, "writing its registered copy",
                                                   [Path(p) for p in unit.apply_to]))
    finally:
        if not keep_work:
            shutil.rmtree(workdir, ignore_errors=True)
    for result, image in opened:  # which series of a multi-series file was read, and how to pick another
        for info in dict.fromkeys([image.info, reference.info]):
            if result.error and info.other_series:
                result.error = f"{result.error} Note: {info.path}: {info.other_series}."
    batch = BatchResult(reference=str(reference.path), settings=settings.to_json(), images=results)
    name = log_name or f"{image_stem(reference.path)}.register"
    write_json_atomic(log_dir / f"{name}.json", {"reference": batch.reference, "settings": batch.settings,
                                                 "images": [asdict(r) for r in batch.images]})
    tracker.write(log_dir / f"{name}.memory.json", {"step": "register"})
    if own_tracker:
        tracker.close()
    return batch


def image_error(error: Exception, path: str | Path, doing: str, files: list[Path] | None = None) -> SlimregError:
    """One moving image's failure as one sentence that names its file, whatever was raised.

    Expected errors (no tissue, an implausible fit, a damaged tile) already name the file and their fix. Anything
    else is a defect slimreg did not foresee (a NaN that reached a statistic, a codec's own exception): it used to
    end the whole REGISTER task with a bare ``ValueError`` and no file named, losing every batch-mate's result.
    Now its traceback goes to stderr (the task's log) and the image fails alone; a full disk or a denied
    permission gets its usual fix (slimreg.errors.os_error_message), and a tile libvips cannot decode is found in
    ``path`` or ``files`` (the unit's other files) and named (slimreg.io.integrity)."""
    if isinstance(error, SlimregError):
        return error
    if isinstance(error, MemoryError):  # the task's, not the image's: the runner retries it one preset lower
        raise error
    if isinstance(error, OSError):
        return RegistrationError(f"failed while {doing}: {os_error_message(error)}", str(path))
    if isinstance(error, pyvips.Error) and is_decode_error(error):  # a damaged tile: find and name it
        damaged = damaged_input_error(error, [Path(path), *(files or [])])
        if damaged is not None:
            return damaged
    traceback.print_exc(file=sys.stderr)
    said = " ".join(str(error).split())  # one line: the summary shows a task's last line
    return RegistrationError(f"failed while {doing} ({type(error).__name__}: {said}); the other images "
                             "of its batch went on.", str(path),
                             "check the image (its pixel type and values); if it looks sound, please report this "
                             "with the task's log, which holds the traceback.")


def _scaled_pixel_size(pixel_size: tuple[float, float] | None, scale: int) -> tuple[float, float] | None:
    return None if pixel_size is None else (pixel_size[0] / scale, pixel_size[1] / scale)


def _write_outputs(reference: TiffImage, registration_image: TiffImage, unit: MovingUnit, transform: Transform,
                   result: ImageResult, settings: RegistrationSettings, tracker: MemoryTracker, reference_scale: int,
                   output_shape: tuple[int, int], pixel_size: tuple[float, float] | None) -> None:
    """Warp every file of the unit with the (level-0) transform, then save the transform; all or nothing."""
    transform.metadata.update({"reference": str(reference.path), "moving": str(registration_image.path),
                               "settings": settings.to_json(),
                               "reference_pixel_size_um": pixel_size, "registration_scale": unit.scale})
    first_target = TiffImage(unit.apply_to[0]) if unit.apply_to else registration_image
    level0 = transform
    if reference_scale != 1 or unit.scale != 1:
        level0 = transform.rescaled(reference_scale, unit.scale, output_shape,
                                    (first_target.info.height, first_target.info.width))
    written: list[Path] = []
    start = time.perf_counter()
    try:
        if unit.registered_projection is not None:
            with tracker.step(f"warp:{unit.name}:projection"):
                written.append(warp_file(registration_image, transform, unit.registered_projection,
                                         reference_shape=(reference.info.height, reference.info.width),
                                         pixel_size_um=reference.info.pixel_size_um, compression="deflate",
                                         tile_size=WORK_TILE_SIZE, interpolation=settings.interpolation))
        for source, target in zip(unit.apply_to, unit.registered, strict=True):
            with tracker.step(f"warp:{Path(target).name}"):
                written.append(warp_file(TiffImage(source), level0, target, reference_shape=output_shape,
                                         pixel_size_um=pixel_size, compression=settings.compression,
                                         tile_size=settings.tile_size, interpolation=settings.interpolation))
        shifts_files = unit.frame_shifts or [None] * len(unit.apply_to)
        origins = unit.frame_origins or [("", 0)] * len(unit.apply_to)
        corrected = [(source, shifts, *origin)
                     for source, shifts, origin in zip(unit.apply_to, shifts_files, origins, strict=True)
                     if shifts is not None]
        if corrected:
            level0.metadata["motion"] = frame_shifts_record(corrected)
        transform_path = level0.save(unit.transform)
    except BaseException as error:
        for path in written:  # all or nothing: a registered copy without its transform is not left behind
            Path(path).unlink(missing_ok=True)
        if not isinstance(error, SlimregError):
            raise
        result.error = str(error)
        return
    result.status, result.registered, result.transform = "ok", str(unit.registered[0]), str(transform_path)
    result.seconds += time.perf_counter() - start
    result.quality = transform.metadata.get("quality", {})

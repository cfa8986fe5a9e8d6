"""Headers of samplesheet files, read where each file is staged and handed to PLAN as small JSON files.

On cloud storage (S3, Google Cloud Storage, Azure Blob) PLAN cannot open the samplesheet's images by path, and
it should not have to stage whole-slide images just to read their headers. So the pipeline runs one PROBE task
per samplesheet file (image or landmarks) where Nextflow stages it; PROBE writes what the plan needs (the image's
:class:`~slimreg.io.probe.ImageInfo`, or the number of landmarks) and, if the file is unusable, the reason. PLAN
reads these headers instead of the files and reports every unusable file in one message.

Each header is keyed by ``given``: the text exactly as the samplesheet wrote it (a relative path, an absolute
one or a URL). The plan names samplesheet files by that text, and Nextflow maps it back to the staged file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slimreg.atomic import write_json_atomic
from slimreg.errors import InputError, SlimregError
from slimreg.io.probe import ImageInfo, probe
from slimreg.landmarks import read_landmarks

HEADER_FORMAT = "slimreg-header"
LANDMARK_SUFFIXES = (".csv",)


def describe_file(given: str, path: Path) -> dict[str, Any]:
    """What PLAN needs to know about one samplesheet file; an unusable file is described by its error."""
    header: dict[str, Any] = {"format": HEADER_FORMAT, "given": given, "name": Path(path).name}
    try:
        if Path(path).suffix.lower() in LANDMARK_SUFFIXES:
            header.update(kind="landmarks", count=len(read_landmarks(path)))
        else:
            header.update(kind="image", info=probe(path).to_json())
    except SlimregError as error:
        header.update(kind="unusable", error=_without_staged_path(str(error), path, given))
    return header


def _without_staged_path(message: str, staged: Path, given: str) -> str:
    """Errors name the file as the user wrote it, not as Nextflow staged it in a work folder."""
    return message.replace(str(staged), given)


def write_header(given: str, path: Path, out: Path) -> Path:
    return write_json_atomic(out, describe_file(given, path))


def read_headers(folder: str | Path) -> dict[str, dict[str, Any]]:
    """Every header under ``folder`` (any depth: Nextflow stages each in its own numbered folder), by ``given``."""
    headers: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(folder).rglob("*.json")):
        try:
            header = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise InputError(f"is not a readable header ({error}).", path, "run `slimreg probe` on the file "
                             "again.") from error
        if not isinstance(header, dict) or header.get("format") != HEADER_FORMAT:
            raise InputError("is not a slimreg header.", path, "write headers with `slimreg probe`.")
        headers[header["given"]] = header
    if not headers:
        raise InputError("holds no headers.", Path(folder), "write one per samplesheet file with `slimreg probe`.")
    return headers


def image_info_from_json(data: dict[str, Any]) -> ImageInfo:
    """The inverse of :meth:`ImageInfo.to_json` for what the plan uses (page indices are re-read at run time)."""
    values = {k: v for k, v in data.items() if k != "bytes_level0"}
    values["levels"] = tuple(tuple(level) for level in values["levels"])
    values["channel_names"] = tuple(values["channel_names"])
    for key in ("pixel_size_um", "tile"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    return ImageInfo(**values)

"""Completion records: what a finished task read and wrote, so that ``--resume`` skips a task only while its
inputs, settings, outputs and slimreg's own code are still the ones it finished with."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import slimreg.layout as layout
from slimreg._version import __version__
from slimreg.atomic import write_json_atomic
from slimreg.locations import resolve
from slimreg.plan_model import Plan, Task

FINGERPRINT_BYTES = 65536  # a TIFF's header and its last IFDs and tile index lie within this of either end


def completion_record(plan: Plan, task: Task, root: Path, preset: str | None) -> dict[str, Any]:
    """What a finished task depended on: its inputs' size and mtime, and its settings."""
    inputs = {}
    for path in task.inputs:
        resolved = resolve(path, root, must_exist=True)
        stat = resolved.stat() if resolved.exists() else None
        inputs[path] = [stat.st_size, int(stat.st_mtime_ns)] if stat else None
    settings = {"task_settings": task.settings, "params": task.params, "registration": plan.registration,
                "preset": preset, "code": code_digest()}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    return {"task": task.id, "inputs": inputs, "settings_sha256": digest, "outputs": task.outputs}


@functools.cache
def code_digest() -> str:
    """A SHA-256 of slimreg's own source files: a task finished by other code (an upgrade, a local change) is run
    again on ``--resume``, since its outputs may differ from what this code writes (a recording's pieces corrected
    by a bicubic warp before, a phase ramp after, would be merged into one stack). The version string alone does
    not change between commits."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256(__version__.encode())  # all there is of an install without its sources
    for source in sorted(package.rglob("*.py")):
        if source.name.startswith(".") or not source.is_file():
            continue  # an editor's lock file, a dangling link
        try:
            content = source.read_bytes()
        except OSError:
            continue
        digest.update(f"{source.relative_to(package)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def is_complete(plan: Plan, task: Task, root: Path) -> bool:
    """Whether a task's record matches its inputs, settings and outputs as they are now."""
    record_path = layout.task_record(root, task.id)
    if not record_path.is_file():
        return False
    try:
        record = json.loads(record_path.read_text())
    except (json.JSONDecodeError, OSError):
        return False
    if not all(resolve(p, root).exists() for p in task.outputs):
        return False
    if record.get("output_fingerprints") != {p: output_fingerprint(resolve(p, root)) for p in task.outputs}:
        return False  # an output was truncated, replaced or edited since the task finished
    expected = completion_record(plan, task, root, record.get("preset_used"))
    return record.get("inputs") == expected["inputs"] and record.get("settings_sha256") == expected["settings_sha256"]


def output_fingerprint(path: Path) -> list[Any]:
    """Size and a SHA-256 of the first and last 64 KiB: a TIFF's header, and where its tile index and last IFDs
    are written; a truncated or rewritten output no longer matches, and checking costs two small reads. A folder
    (an OME-Zarr): every file's name and size, and the root metadata's bytes."""
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file())
        digest = hashlib.sha256()
        for file in files:
            digest.update(f"{file.relative_to(path)}\0{file.stat().st_size}\n".encode())
        attributes = path / ".zattrs"
        if attributes.is_file():
            digest.update(attributes.read_bytes())
        return [sum(f.stat().st_size for f in files), digest.hexdigest()]
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(FINGERPRINT_BYTES))
        handle.seek(max(0, size - FINGERPRINT_BYTES))
        digest.update(handle.read(FINGERPRINT_BYTES))
    return [size, digest.hexdigest()]


def mark_complete(plan: Plan, task: Task, root: Path, preset: str | None) -> None:
    """Write a finished task's record (after its outputs are in place)."""
    record = completion_record(plan, task, root, preset)
    record["preset_used"] = preset
    record["output_fingerprints"] = {p: output_fingerprint(resolve(p, root)) for p in task.outputs
                                     if resolve(p, root).exists()}
    write_json_atomic(layout.task_record(root, task.id), record)

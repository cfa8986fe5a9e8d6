"""What this process may really use: the smaller of free RAM and its cgroup limit, and free disk.

SLURM (with cgroups) and containers cap a job below the machine's RAM through ``memory.max`` (cgroup v2) or
``memory.limit_in_bytes`` (v1); ``psutil.virtual_memory().available`` alone would overstate what a task may
take, and the kernel would kill it with exit 137.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus() -> int:
    """The CPUs this process may run on (a SLURM or container allotment, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class Resources:
    memory_bytes: int
    memory_source: str
    disk_bytes: int
    disk_path: str
    total_memory_bytes: int
    cgroup_limit_bytes: int | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value < 1 << 60 else None  # v1 reports "no limit" as a huge number


def cgroup_headroom(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")
                    ) -> tuple[int | None, int | None]:
    """(limit, limit - current usage) of this process's memory cgroup, or (None, None) if unlimited.

    Both hierarchies are read: v2 (``memory.max``; mounted at the root or at ``unified``) and v1
    (``memory/<own path>/memory.limit_in_bytes``, which SLURM and many container hosts still use). A limit set on
    any ancestor binds too, so every level from the process's own cgroup up to the mount is read, and the
    tightest headroom wins. Reclaimable page cache (``inactive_file``) does not count as used.
    """
    v2_path, v1_path = _own_cgroups(proc_cgroup)
    hierarchies = [(root, v2_path, "memory.max", "memory.current", "inactive_file"),
                   (root / "unified", v2_path, "memory.max", "memory.current", "inactive_file"),
                   (root / "memory", v1_path, "memory.limit_in_bytes", "memory.usage_in_bytes",
                    "total_inactive_file")]
    tightest: tuple[int, int] | None = None
    for mount, own, limit_name, usage_name, cache_name in hierarchies:
        if own is None or not mount.is_dir():
            continue
        directory = mount / own.lstrip("/")
        if not directory.is_dir():  # a cgroup namespace shows the process's own cgroup as the mount itself
            directory = mount
        while True:
            limit = _read_int(directory / limit_name)
            if limit is not None:
                usage = max(0, (_read_int(directory / usage_name) or 0) - _stat_value(directory, cache_name))
                headroom = max(0, limit - usage)
                if tightest is None or headroom < tightest[1]:
                    tightest = (limit, headroom)
            if directory == mount or mount not in directory.parents:
                break
            directory = directory.parent
    return tightest if tightest is not None else (None, None)


def _own_cgroups(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's (v2 path, v1 memory-controller path), as /proc/self/cgroup names them."""
    v2_path = v1_path = None
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return "/", None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2_path = parts[2]
        elif "memory" in parts[1].split(","):
            v1_path = parts[2]
    return v2_path, v1_path


def _stat_value(directory: Path, key: str) -> int:
    try:
        for line in (directory / "memory.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def available_resources(outdir: str | Path) -> Resources:
    """Memory this process may use now and free disk where ``outdir`` is (or will be)."""
    memory = psutil.virtual_memory()
    limit, headroom = cgroup_headroom()
    if headroom is not None and headroom < memory.available:
        usable, source = headroom, f"cgroup limit {limit / 1024**3:.1f} GB minus current use"
    else:
        usable, source = memory.available, "free RAM"
    target = existing_parent(Path(outdir))
    return Resources(memory_bytes=int(usable), memory_source=source, disk_bytes=int(shutil.disk_usage(target).free),
                     disk_path=str(target), total_memory_bytes=int(memory.total), cgroup_limit_bytes=limit)


SIZE_UNITS = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def parse_size(text: str, name: str = "size") -> int:
    """Bytes of a size written as Nextflow writes memory (``128.GB``, ``15 GB``, ``512MB``) or a plain number."""
    import re

    from slimreg.errors import ParameterError

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*\.?\s*([KMGT]?B)?\s*", str(text), flags=re.IGNORECASE)
    if not match:
        raise ParameterError(f"{name} {text!r} is not a size.", fix="write it like 128.GB, 15 GB or 512MB.")
    value = float(match.group(1)) * SIZE_UNITS[(match.group(2) or "").upper()]
    if value <= 0:
        raise ParameterError(f"{name} must be positive, got {text!r}.")
    return int(value)

"""What this process may really use: the smaller of free RAM and its cgroup limit, and free disk.

SLURM (with cgroups) and containers cap a job below the machine's RAM through ``memory.max`` (cgroup v2) or
``memory.limit_in_bytes`` (v1); ``psutil.virtual_memory().available`` alone would overstate what a task may
take, and the kernel would kill it with exit 137.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")


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


def cgroup_headroom(root: Path = CGROUP_ROOT) -> tuple[int | None, int | None]:
    """(limit, limit - current usage) of this process's memory cgroup, or (None, None) if unlimited."""
    own = _own_cgroup_dir(root)
    candidates = [(own / "memory.max", own / "memory.current"), (root / "memory.max", root / "memory.current"),
                  (root / "memory" / "memory.limit_in_bytes", root / "memory" / "memory.usage_in_bytes")]
    for limit_path, usage_path in candidates:
        limit = _read_int(limit_path)
        if limit is not None:
            usage = _read_int(usage_path) or 0
            return limit, max(0, limit - usage)
    return None, None


def _own_cgroup_dir(root: Path) -> Path:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3 and parts[0] == "0":
                return root / parts[2].lstrip("/")
    except OSError:
        pass
    return root


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

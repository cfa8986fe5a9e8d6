"""Software versions, read from package metadata (never by importing heavy packages such as VALIS or torch)."""

from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("numpy", "pyvips", "pyvips-binary", "tifffile", "opencv-contrib-python-headless", "scikit-image",
            "scipy", "psutil", "valis-wsi", "torch")


def software_versions() -> dict[str, str]:
    from slimreg._version import __version__

    versions = {"slimreg": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        import pyvips

        versions["libvips"] = ".".join(str(pyvips.version(i)) for i in range(3))
    except (ImportError, OSError):
        pass
    return versions


def versions_yaml(process: str) -> str:
    """nf-core style ``versions.yml`` content for one process."""
    lines = [f'"{process}":'] + [f"    {name}: {version}" for name, version in software_versions().items()]
    return "\n".join(lines) + "\n"

"""Import VALIS without touching the network.

``import valis`` builds module-level defaults (a DISK detector, a LightGlue matcher) whose constructors
download weights through the torch hub cache. While VALIS is imported, kornia's loader is replaced: weights
already in the cache (or in ``SLIMREG_WEIGHTS_DIR``) load as usual; missing ones yield an untrained
placeholder that slimreg never uses, because it then passes VALIS a weights-free matcher. A socket guard
turns any connection attempt into an error and records it, so tests can prove that nothing went out.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

DISK_WEIGHTS = "depth-save.pth"
LIGHTGLUE_DISK_WEIGHTS = "disk_lightglue.pth"
network_attempts: list[str] = []


def weights_dir() -> Path:
    """The folder holding torch hub checkpoints: under ``SLIMREG_WEIGHTS_DIR`` if set, else under torch's hub cache.

    Found without importing torch, by torch's own rule (``torch.hub.get_dir``: ``$TORCH_HOME/hub``, TORCH_HOME
    defaulting to ``$XDG_CACHE_HOME/torch`` and XDG_CACHE_HOME to ``~/.cache``): the engine asks in the task's own
    process, where importing torch to ask kept about 0.55 GB resident for the rest of the task, beside the VALIS
    child that imports it anyway."""
    configured = os.environ.get("SLIMREG_WEIGHTS_DIR")
    if configured:
        hub = Path(configured).expanduser()  # as torch.hub.set_dir expands it
    elif "torch" in sys.modules:  # already loaded: a set_dir of its own counts
        hub = Path(sys.modules["torch"].hub.get_dir())
    else:
        torch_home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
        hub = Path(os.path.expanduser(torch_home)) / "hub"
    return hub / "checkpoints"


def deep_weights_available() -> bool:
    folder = weights_dir()
    return (folder / DISK_WEIGHTS).is_file() and (folder / LIGHTGLUE_DISK_WEIGHTS).is_file()


@contextlib.contextmanager
def no_network() -> Iterator[None]:
    """Refuse (and record) every outgoing connection while the block runs."""
    original_connect = socket.socket.connect
    original_create = socket.create_connection

    def refuse(*args: Any, **kwargs: Any) -> None:
        target = args[1] if len(args) > 1 else kwargs.get("address", args[0] if args else "?")
        network_attempts.append(str(target))
        raise OSError(f"slimreg blocks network access during registration (tried {target})")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.socket.connect = original_connect  # type: ignore[method-assign]
        socket.create_connection = original_create  # type: ignore[assignment]


def _cached_only_loader(original: Any, placeholder: Any) -> Any:
    def load(url: Any, *args: Any, file_name: str | None = None, **kwargs: Any) -> Any:
        first = url[0] if isinstance(url, list | tuple) else url
        name = file_name or os.path.basename(str(first))
        if (weights_dir() / name).is_file():
            return original(url, *args, file_name=file_name, **kwargs) if file_name else original(url, *args, **kwargs)
        return placeholder()
    return load


def import_valis() -> ModuleType:
    """``valis.registration``, imported offline (see the module docstring)."""
    if "valis.registration" in sys.modules:
        return sys.modules["valis.registration"]
    configured = os.environ.get("SLIMREG_WEIGHTS_DIR")
    if configured:  # where kornia's loaders look for the weights ``weights_dir`` found
        import torch

        torch.hub.set_dir(configured)
    import kornia.feature.disk.disk as disk_module
    import kornia.feature.lightglue as lightglue_module

    original_disk = disk_module.load_state_dict_from_url
    original_lightglue = lightglue_module.load_state_dict_from_url
    disk_module.load_state_dict_from_url = _cached_only_loader(
        original_disk, lambda: {"extractor": disk_module.DISK().state_dict()})
    lightglue_module.load_state_dict_from_url = _cached_only_loader(original_lightglue, lambda: None)
    try:
        with no_network():
            import valis.registration as registration
    finally:
        disk_module.load_state_dict_from_url = original_disk
        lightglue_module.load_state_dict_from_url = original_lightglue
    return registration

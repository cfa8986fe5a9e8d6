"""Where the valis engine looks for DISK/LightGlue weights, found without importing torch in the task's process."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ASK = ("import sys; from slimreg.register.valis_offline import weights_dir, deep_weights_available; "
       "deep_weights_available(); print(weights_dir()); print('torch' in sys.modules)")


def _ask(env: dict[str, str]) -> tuple[str, bool]:
    clean = {key: value for key, value in os.environ.items()
             if key not in ("SLIMREG_WEIGHTS_DIR", "TORCH_HOME", "XDG_CACHE_HOME")}
    result = subprocess.run([sys.executable, "-c", ASK], capture_output=True, text=True, check=True,
                            env={**clean, **env})
    folder, imported = result.stdout.split()
    return folder, imported == "True"


@pytest.mark.parametrize(("env", "expected"), [
    ({"SLIMREG_WEIGHTS_DIR": "/data/hub"}, "/data/hub/checkpoints"),
    ({"SLIMREG_WEIGHTS_DIR": "~/weights", "HOME": "/home/analyst"}, "/home/analyst/weights/checkpoints"),
    ({"TORCH_HOME": "/opt/torch"}, "/opt/torch/hub/checkpoints"),
    ({"XDG_CACHE_HOME": "/scratch/cache"}, "/scratch/cache/torch/hub/checkpoints"),
    ({"HOME": "/home/analyst"}, "/home/analyst/.cache/torch/hub/checkpoints"),
], ids=["slimreg", "slimreg-home", "torch-home", "xdg", "home"])
def test_the_weights_folder_is_torchs_without_torch(env: dict[str, str], expected: str) -> None:
    """Asking costs no torch import (it kept about 0.55 GB resident in the task's process for the whole task)."""
    folder, imported = _ask(env)
    assert Path(folder) == Path(expected) and not imported


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed (the valis extra)")
def test_the_rule_is_torchs_own(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("SLIMREG_WEIGHTS_DIR", "XDG_CACHE_HOME")}
    env["TORCH_HOME"] = str(tmp_path / "torch")
    torch_says = subprocess.run([sys.executable, "-c", "import torch; print(torch.hub.get_dir())"],
                                capture_output=True, text=True, check=True, env=env).stdout.strip()
    assert _ask({"TORCH_HOME": env["TORCH_HOME"]})[0] == str(Path(torch_says) / "checkpoints")

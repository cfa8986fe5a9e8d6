"""Demo data carries exact truth; the CLI gives clear errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from slimreg.demo import make_demo_data
from slimreg.io import open_image, probe
from slimreg.landmarks import read_landmarks
from tests.conftest import DEMO_SIZE


def _patches(image: np.ndarray, points: np.ndarray, radius: int = 12) -> np.ndarray:
    offsets = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    rows = points[:, 1, None, None] + dy
    cols = points[:, 0, None, None] + dx
    return ndimage.map_coordinates(image.astype(float), [rows, cols], order=1)


def _patch_correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean(axis=(1, 2), keepdims=True)
    b = b - b.mean(axis=(1, 2), keepdims=True)
    return float(np.median((a * b).sum(axis=(1, 2)) / np.sqrt((a * a).sum(axis=(1, 2)) * (b * b).sum(axis=(1, 2)))))


def test_landmarks_follow_the_known_transform(demo_dir: Path) -> None:
    reference = open_image(demo_dir / "mif_round0.ome.tif").region(0, 0, DEMO_SIZE, DEMO_SIZE, channel=0)
    ref_points = read_landmarks(demo_dir / "mif_round0.landmarks.csv")
    for index in (1, 2, 3):
        moving = open_image(demo_dir / f"mif_round{index}.ome.tif").region(0, 0, DEMO_SIZE, DEMO_SIZE, channel=0)
        mov_points = read_landmarks(demo_dir / f"mif_round{index}.landmarks.csv")
        assert np.median(np.hypot(*(mov_points - ref_points).T)) > 5  # the images really are misaligned
        matched = _patch_correlation(_patches(reference, ref_points), _patches(moving, mov_points))
        unmatched = _patch_correlation(_patches(reference, ref_points), _patches(moving, ref_points))
        assert matched > 0.85 > unmatched


def test_demo_is_deterministic(tmp_path: Path) -> None:
    first = make_demo_data(tmp_path / "a", size=256, frames=4, seed=5).parent
    second = make_demo_data(tmp_path / "b", size=256, frames=4, seed=5).parent
    for name in ("mif_round3.ome.tif", "calcium_s2_part2.ome.tif"):
        a = open_image(first / name).region(0, 0, 256, 256, channel=0)
        b = open_image(second / name).region(0, 0, 256, 256, channel=0)
        assert np.array_equal(a, b)
    assert (first / "mif_round3.landmarks.csv").read_text() == (second / "mif_round3.landmarks.csv").read_text()


def _slimreg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slimreg.cli", *args], capture_output=True, text=True, check=False)


def test_cli_info_and_demo(tmp_path: Path) -> None:
    result = _slimreg("demo-data", str(tmp_path), "--size", "256", "--frames", "4")
    assert result.returncode == 0, result.stderr
    info = json.loads(_slimreg("info", str(tmp_path / "mif_round2.ome.tif")).stdout)
    assert info["channel_names"] == ["DAPI", "FOXP3", "CD68"]
    assert info["pixel_size_um"] == [0.5, 0.5] and info["width"] == 256
    assert probe(tmp_path / "calcium_s1.ome.tif").frames == 4
    assert _slimreg("validate", str(tmp_path / "samplesheet.csv")).returncode == 0
    assert _slimreg("--version").stdout.startswith("slimreg ")


def test_cli_errors_are_one_message_and_exit_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    for args, expected in ((["info", str(tmp_path / "none.tif")], "none.tif: file not found"),
                           (["validate", str(empty)], "samplesheet is empty"),
                           (["demo-data", str(tmp_path / "d"), "--size", "10"], "--size must be at least")):
        result = _slimreg(*args)
        assert result.returncode == 2
        assert expected in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())
    debug = _slimreg("--debug", "info", str(tmp_path / "none.tif"))
    assert "Traceback" in debug.stderr

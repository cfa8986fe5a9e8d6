"""Shared fixtures: demo data is generated once per test session (small, deterministic)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from benchmarks.realdata import SectionPair, section_pairs
from slimreg.demo import make_demo_data

DEMO_SIZE = 768
# `slimreg run` options for tests of the runner's plumbing: the light engine at its lowest preset, sessions cut into
# pieces of five frames, tasks in one process (the mode is not what those tests are about)
FAST = {"engine": "feature", "preset": "low", "max_frames": 5, "mode": "serial"}


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo series (mIF rounds, H&E sections, a two-session stack) with its samplesheet."""
    outdir = tmp_path_factory.mktemp("demo")
    make_demo_data(outdir, size=DEMO_SIZE, frames=12, seed=0)
    return outdir


@pytest.fixture(scope="session")
def demo_sheet(demo_dir: Path) -> Path:
    return demo_dir / "samplesheet.csv"


def sheet_of_samples(demo_sheet: Path, *samples: str) -> Path:
    """The demo samplesheet cut to ``samples`` (beside it, so its relative paths hold): tests that exercise one
    sample's tasks do not pay for the others'."""
    lines = demo_sheet.read_text().splitlines()
    sheet = demo_sheet.parent / f"only_{'_'.join(samples)}.csv"
    kept = [line for line in lines[1:] if line.split(",", 1)[0] in samples]
    assert kept, f"the demo has no sample {samples}"
    sheet.write_text("\n".join([lines[0], *kept]) + "\n")
    return sheet


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SectionPair]:
    """The shared real section pairs (../shared/data/real-sections), one direction each, as OME-TIFF with landmarks."""
    return {p.name: p for p in section_pairs(tmp_path_factory.mktemp("real"), both_directions=False)}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Test files with a slow test first, each file keeping its own order. pytest-xdist hands out whole files in
    collection order (pyproject: ``--dist loadfile --no-loadscope-reorder``), so the long files start at once and the
    short ones fill the end: no worker is left running a long file alone that happened to come last."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)
    if importlib.util.find_spec("valis") is None:  # the default install: VALIS is the valis extra
        skip = pytest.mark.skip(reason='needs VALIS: pip install -e ".[valis,test]" on Python 3.11 (README step 1)')
        for item in items:
            if item.get_closest_marker("valis"):
                item.add_marker(skip)

"""Shared fixtures: demo data is generated once per test session (small, deterministic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimreg.demo import make_demo_data

DEMO_SIZE = 768


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

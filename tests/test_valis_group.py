"""The valis engine registers a batch of moving images in one VALIS run, as VALIS' authors run a sample, and falls back
to one run per image if that run fails; its memory estimate grows with the batch (no VALIS needed: the child process
is replaced by a recorder, and the light engine by one that finds nothing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slimreg.errors import RegistrationError
from slimreg.estimate import (
    BUDGET_MARGIN,
    VALIS_PER_IMAGE,
    pair_bytes,
    register_task_bytes,
    valis_run_bytes,
)
from slimreg.io import TiffImage, write_array
from slimreg.register import valis_engine
from slimreg.register.channel import OPTICAL_DENSITY
from slimreg.register.feature import FeatureEngine
from slimreg.register.settings import RegistrationSettings
from slimreg.transform import Transform

MEDIUM = RegistrationSettings.from_preset("medium", engine="valis")


def section(path: Path, seed: int) -> TiffImage:
    rng = np.random.default_rng(seed)
    rgb = np.full((600, 800, 3), 240, np.uint8)
    rgb[100:500, 150:650] = np.kron(rng.integers(60, 200, size=(50, 63, 3), dtype=np.uint8),
                                    np.ones((8, 8, 1), np.uint8))[:400, :500]
    write_array(rgb, path, is_rgb=True)
    return TiffImage(path)


@pytest.fixture
def sample(tmp_path: Path) -> tuple[TiffImage, list[TiffImage]]:
    return section(tmp_path / "ref.ome.tif", 0), [section(tmp_path / f"m{i}.ome.tif", i + 1) for i in range(3)]


def test_a_groupwise_run_costs_a_pair_plus_each_further_image(sample: tuple[TiffImage, list[TiffImage]]) -> None:
    reference, moving = sample
    infos = [image.info for image in moving]
    one = pair_bytes(reference.info, infos[0], MEDIUM)
    assert one == valis_run_bytes(reference.info, infos[:1], MEDIUM)
    three = pair_bytes(reference.info, infos, MEDIUM)
    assert three > one + 2 * VALIS_PER_IMAGE
    units = [(info, [info]) for info in infos]
    assert register_task_bytes(reference.info, units, MEDIUM) > register_task_bytes(reference.info, units[:1], MEDIUM)
    # the reference's own unit (--include-reference) is not registered: it adds nothing to VALIS' run
    with_reference = [(reference.info, [reference.info]), *units]
    assert register_task_bytes(reference.info, with_reference, MEDIUM) == \
        register_task_bytes(reference.info, units, MEDIUM)


class Recorder:
    """Stands in for ``run_within_budget``: records each child run; the groupwise one fails if told to."""

    def __init__(self, group_fails: bool):
        self.group_fails = group_fails
        self.calls: list[tuple[str, int, int]] = []  # function, images, budget

    def __call__(self, function: Any, args: tuple[Any, ...], budget: int, what: str, path: str) -> tuple[Any, int]:
        images = len(args[1]) if isinstance(args[1], list) else 1
        self.calls.append((function.__name__, images, budget))
        if function is valis_engine.register_group_offline:
            if self.group_fails:
                raise RegistrationError("VALIS registration failed: no features", path)
            return [fake_result(k) for k in range(images)], 3 * 2**30
        return fake_result(0), 2**30


def fake_result(shift: float) -> Transform:
    affine = np.array([[1.0, 0, shift], [0, 1.0, 0], [0, 0, 1]])
    return Transform(affine, None, (600, 800), (600, 800), metadata={"engine": "valis", "quality": {}})


@pytest.mark.parametrize("group_fails", [False, True])
def test_a_batch_is_one_valis_run_and_a_failed_run_falls_back_to_one_per_image(
        sample: tuple[TiffImage, list[TiffImage]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        group_fails: bool) -> None:
    reference, moving = sample
    recorder = Recorder(group_fails)
    monkeypatch.setattr(valis_engine, "run_within_budget", recorder)

    def no_light_result(*args: Any, **kwargs: Any) -> Any:
        raise RegistrationError("no tissue found", args[1].path)

    monkeypatch.setattr(FeatureEngine, "register_pair_and_decoy", no_light_result)
    # the matcher's description looks for torch's weights: the default install has no torch
    monkeypatch.setattr(valis_engine.ValisEngine, "_matcher_description", staticmethod(lambda: "a matcher"))
    logged: list[str] = []
    results = valis_engine.ValisEngine(log=logged.append).register_many(
        reference, moving, OPTICAL_DENSITY, [OPTICAL_DENSITY] * 3, MEDIUM, tmp_path / "work")
    group_budget = int(BUDGET_MARGIN * valis_run_bytes(reference.info, [m.info for m in moving], MEDIUM))
    assert recorder.calls[0] == ("register_group_offline", 3, group_budget)
    assert all(isinstance(result, Transform) for result in results)
    if group_fails:
        assert [call[:2] for call in recorder.calls[1:]] == [("register_pair_offline", 1)] * 3
        assert any("groupwise run of 3 images failed" in line for line in logged)
        assert all(result.metadata["quality"]["peak_memory_bytes"] == 2**30 for result in results)
    else:
        assert len(recorder.calls) == 1
        # each image gets its own result from the one run, in the batch's order
        assert [result.affine[0, 2] for result in results] == [0.0, 1.0, 2.0]
        assert all(result.metadata["quality"]["valis_group_size"] == 4.0 for result in results)

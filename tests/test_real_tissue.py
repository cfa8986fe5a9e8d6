"""Registration on real tissue (../shared/data): accuracy bounds on expert landmarks, as VALIS used plainly or
better, and as well once the moving section is turned, mirrored, put on a glass slide, halved or enlarged to whole-slide
size; QC that agrees with the landmarks; the valis engine's choice between VALIS' result and the light engine's.

Refusals (other tissue, a mirror image without the flag, one failure in a batch) are in test_real_tissue_refusals.py;
bent and torn sections, IF rounds and calcium frames in test_real_tissue_motion.py. Each file is one unit of work for
pytest-xdist, so the three run side by side.
"""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import numpy as np
import pytest

from benchmarks.realdata import SectionPair, available, landmark_errors, reference_diagonal, section_pairs
from benchmarks.robustness import variant_pair
from slimreg.errors import RegistrationError
from slimreg.io.read import TiffImage
from slimreg.qc import run_qc
from slimreg.register.channel import choose_channel
from slimreg.register.settings import RegistrationSettings
from slimreg.transform import Transform, similarity_matrix
from slimreg.warp import warp_file
from tests.real_sections import BOUNDS, SETTINGS, VALIS_PLAINLY, register, rotated_copy

pytestmark = [pytest.mark.skipif(not available(), reason="the shared real data (../shared/data) is not here"),
              pytest.mark.slow]


@pytest.fixture(scope="module")
def results(pairs: dict[str, SectionPair]) -> dict[str, Transform]:
    """The light engine's result on each shared pair, registered once for every test of this file."""
    return {name: register(pair.reference, pair.moving) for name, pair in pairs.items()}

@pytest.mark.parametrize("name", list(BOUNDS))
def test_feature_engine_registers_real_sections(pairs: dict[str, SectionPair], results: dict[str, Transform],
                                               name: str) -> None:
    pair = pairs[name]
    before, after = np.median(landmark_errors(None, pair)), np.median(landmark_errors(results[name], pair))
    assert after < BOUNDS[name] < before / 4
    assert after / reference_diagonal(pair) < 0.015


@pytest.mark.parametrize("name", list(VALIS_PLAINLY))
def test_feature_engine_is_as_accurate_as_valis_used_plainly(pairs: dict[str, SectionPair],
                                                             results: dict[str, Transform], name: str) -> None:
    # lung H&E <- proSPC: 5.73 px while refinement dropped the reference tissue a pose carries off the moving image,
    # 5.58 once it counted it, 5.55 with every start refined both ways (VALIS used plainly: 5.56)
    after = np.median(landmark_errors(results[name], pairs[name]))
    assert after < 1.02 * VALIS_PLAINLY[name], after


@pytest.mark.parametrize(("degrees", "mirror"), [(137.0, False), (250.0, True)])
def test_rotated_and_mirrored_sections_register_as_well_as_upright(
        pairs: dict[str, SectionPair], results: dict[str, Transform], tmp_path: Path, degrees: float,
        mirror: bool) -> None:
    name = "kidney_HE <- kidney_PanCK"
    pair = pairs[name]
    path, points = rotated_copy(pair, tmp_path, degrees, mirror)
    turned = SectionPair(name, pair.reference, path, pair.reference_landmarks, points)
    settings = RegistrationSettings.from_preset("medium", engine="feature", allow_mirror=mirror)
    upright = np.median(landmark_errors(results[name], pair))
    assert np.median(landmark_errors(None, turned)) > 200  # the copy starts far from the answer
    assert np.median(landmark_errors(register(pair.reference, path, settings), turned)) < upright + 1.5


@pytest.mark.parametrize("variant", ["on-slide", "half", "rotated", "grey"])
def test_sections_register_as_well_on_a_glass_slide_at_half_size_turned_a_quarter_and_grey(
        pairs: dict[str, SectionPair], results: dict[str, Transform], tmp_path: Path, variant: str) -> None:
    """How unseen slides differ (benchmarks/robustness.py): mostly glass around the section (its working image
    is then cut to the tissue, and where it lies unregistered no tissue overlaps), a lower pyramid level, a
    quarter turn (the coarse edges and the outline search find it), a brightfield scan stored as one grey channel
    (registered on its optical density; refused as fluorescence until stop 68). Errors are compared at full size."""
    name = "kidney_HE <- kidney_PanCK"
    pair = pairs[name]
    changed = variant_pair(pair, variant, tmp_path)
    upright = np.median(landmark_errors(results[name], pair))
    size = TiffImage(changed.reference).info.width / TiffImage(pair.reference).info.width
    after = np.median(landmark_errors(register(changed.reference, changed.moving), changed)) / size
    assert after < upright + 1.5


def test_qc_verdict_agrees_with_landmarks(pairs: dict[str, SectionPair], results: dict[str, Transform],
                                         tmp_path: Path) -> None:
    """The engine's result passes QC; the same result shifted by 2 % of the image fails it."""
    name = "kidney_HE <- kidney_PanCK"
    pair = pairs[name]
    landmarks = {}
    for label, points in (("reference", pair.reference_landmarks), ("moving", pair.moving_landmarks)):
        landmarks[label] = tmp_path / f"{label}.csv"
        with open(landmarks[label], "w", newline="") as handle:
            csv.writer(handle).writerows([("x", "y"), *points.tolist()])
    good = results[name]
    shape = good.reference_shape
    wrong = Transform(good.affine @ similarity_matrix(1.0, 0.0, 0.02 * shape[1], -0.02 * shape[0]),
                      good.displacement, shape, good.moving_shape)
    verdicts = {}
    for label, transform in (("good", good), ("wrong", wrong)):
        transform.save(tmp_path / f"{label}.transform.json")
        warp_file(TiffImage(pair.moving), transform, tmp_path / f"{label}.ome.tif", reference_shape=shape,
                  pixel_size_um=None)
        result = run_qc(pair.reference, tmp_path / f"{label}.ome.tif", tmp_path / "qc", original_path=pair.moving,
                        transform_path=tmp_path / f"{label}.transform.json",
                        landmarks_reference=landmarks["reference"], landmarks_moving=landmarks["moving"],
                        max_dim=1024)
        verdicts[label] = result
    assert verdicts["good"].status == "pass", verdicts["good"].reasons
    assert verdicts["wrong"].status == "fail"
    # the image measure alone (no landmarks) already says so
    assert not any("landmark" in r for r in verdicts["wrong"].reasons[:1])


def test_the_valis_engine_keeps_valis_result_unless_the_light_one_is_clearly_better(
        pairs: dict[str, SectionPair], results: dict[str, Transform]) -> None:
    """The valis engine's choice between VALIS' result and the light engine's, on a real pair, without VALIS:
    a VALIS result that places the tissue where the light one does gives their mean; one shifted 40 px is replaced,
    and the replacement lands where the landmarks say; a VALIS failure falls back to the light result.

    The light engine's result is this module's own registration of the pair (``results``), handed to each
    choice rather than computed three more times: what is under test is the choice."""
    from slimreg.register.channel import registration_image
    from slimreg.register.valis_engine import MIDWAY, ValisEngine, disagreement_sigmas

    name = "kidney_HE <- kidney_PanCK"
    pair, good = pairs[name], results[name]

    def light() -> Transform:
        return Transform(good.affine.copy(), good.displacement, good.reference_shape, good.moving_shape,
                         copy.deepcopy(good.metadata))

    ref, mov = TiffImage(pair.reference), TiffImage(pair.moving)
    channels = choose_channel(ref.info, None), choose_channel(mov.info, None)
    engine = ValisEngine(log=lambda text: None)

    def as_valis(transform: Transform) -> Transform:
        return Transform(transform.affine.copy(), transform.displacement, transform.reference_shape,
                         transform.moving_shape, metadata={"engine": "valis", "quality": {"peak_memory_bytes": 1}})

    # a VALIS result that places the tissue where the light one does is kept (the user asked for VALIS)
    same = engine._better(ref, mov, *channels, SETTINGS, as_valis(good), light())
    assert same.metadata["chosen"] == "VALIS"
    assert same.metadata["quality"]["light_valis_disagreement_sigmas"] == 0.0
    # one 3.5 px away (0.75 edge sigma, 1.5 px of the judging copy) is a draw between two placements that agree:
    # the map halfway between them is kept
    near = as_valis(good)
    near.affine[:2, 2] += 2.5
    mean = engine._better(ref, mov, *channels, SETTINGS, near, light())
    assert mean.metadata["chosen"] == MIDWAY and mean.metadata["engine"] == "valis"
    assert mean.metadata["quality"]["peak_memory_bytes"] == 1  # VALIS' run is still what it cost
    halfway = (near.pull(pair.reference_landmarks) + good.pull(pair.reference_landmarks)) / 2
    assert np.abs(mean.pull(pair.reference_landmarks) - halfway).max() < 0.05
    shifted = as_valis(good)
    shifted.affine[:2, 2] += 40.0
    replaced = engine._better(ref, mov, *channels, SETTINGS, shifted, light())
    assert replaced.metadata["chosen"] == "light engine (scored clearly higher)"
    assert np.median(landmark_errors(replaced, pair)) < BOUNDS[name]
    fallback = engine._better(ref, mov, *channels, SETTINGS, RegistrationError("VALIS found nothing", pair.moving),
                              light())
    assert fallback.metadata["chosen"] == "light engine (VALIS failed)"
    # how far apart two results are: in edge sigmas of the judging copy, at level 0 (the kidney H&E's long side 1164 px
    # and sigma a 250th of it: 4.66 px)
    search_copy = registration_image(ref, channels[0], SETTINGS.search_dim)
    moved = as_valis(good)
    moved.affine[:2, 2] += (3.0, 4.0)  # 5 moving px; the map barely scales (moving and reference px alike)
    apart = disagreement_sigmas(search_copy, good, moved)
    assert apart == pytest.approx(5.0 / (1164 / 250) / np.sqrt(abs(np.linalg.det(good.affine[:2, :2]))), rel=0.02)


def test_whole_slide_sized_sections_register_as_well_as_small_ones(tmp_path_factory: pytest.TempPathFactory,
                                                                   pairs: dict[str, SectionPair],
                                                                   results: dict[str, Transform]) -> None:
    """The kidney pair enlarged 20x (23280 x 15740 px, JPEG tiles as scanners write them): the working images
    differ from the small pair's, and refining only the best-scoring starts once lost the true pose here (609 px,
    worse than the unregistered 581 px). The result must match the small pair's, scaled."""
    name = "kidney_HE <- kidney_PanCK"
    big = next(p for p in section_pairs(tmp_path_factory.mktemp("x20"), both_directions=False, upscale=20)
               if p.name == name)
    transform = register(big.reference, big.moving)
    before, after = np.median(landmark_errors(None, big)), np.median(landmark_errors(transform, big))
    small_rtre = np.median(landmark_errors(results[name], pairs[name])) / reference_diagonal(pairs[name])
    assert after < before / 4
    assert after / reference_diagonal(big) < 1.5 * small_rtre < 0.015

"""Registration on real tissue (../shared/data): accuracy bounds on expert landmarks, rotations and mirror images,
clear failures for images that do not belong, QC that agrees with the landmarks, one failure staying one failure.

The bounds come from benchmarks/accuracy.py runs (docs/accuracy.md), where VALIS used plainly reached 3.78 px on
the kidney pair; each bound here is below 1.5 % of the reference's diagonal (the project's target).
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.realdata import (
    SectionPair,
    available,
    calcium_frames,
    convert_if_rounds,
    landmark_affine_fit,
    landmark_errors,
    reference_diagonal,
    section_pairs,
)
from benchmarks.robustness import variant_pair
from slimreg.errors import RegistrationError
from slimreg.io import write_array
from slimreg.io.read import TiffImage
from slimreg.qc import run_qc
from slimreg.register.channel import OPTICAL_DENSITY, choose_channel
from slimreg.register.feature import FeatureEngine, to_level0, to_working
from slimreg.register.refine import refine_both_ways
from slimreg.register.settings import RegistrationSettings
from slimreg.register.similarity import AlignmentScorer
from slimreg.register.tissue_crop import tissue_image
from slimreg.transform import Transform, similarity_matrix
from slimreg.warp import warp_file

pytestmark = pytest.mark.skipif(not available(), reason="the shared real data (../shared/data) is not here")

SETTINGS = RegistrationSettings.from_preset("medium", engine="feature")
# median landmark error bound per pair (px): measured 3.64 (kidney) and 5.58 (lung), VALIS plainly 3.78 / 5.56
BOUNDS = {"kidney_HE <- kidney_PanCK": 4.5, "lung-lesion_HE <- lung-lesion_proSPC": 7.5}
# VALIS used plainly on the same pairs (benchmarks/accuracy.py, docs/accuracy.md, median px): the project's target is
# to be no worse. The light engine is held to it within 2 %, room for numeric differences between machines.
VALIS_PLAINLY = {"kidney_HE <- kidney_PanCK": 3.78, "lung-lesion_HE <- lung-lesion_proSPC": 5.56}


def register(reference: Path, moving: Path, settings: RegistrationSettings = SETTINGS) -> Transform:
    ref, mov = TiffImage(reference), TiffImage(moving)
    return FeatureEngine().register_pair(ref, mov, choose_channel(ref.info, None), choose_channel(mov.info, None),
                                         settings)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SectionPair]:
    return {p.name: p for p in section_pairs(tmp_path_factory.mktemp("real"), both_directions=False)}


@pytest.fixture(scope="module")
def results(pairs: dict[str, SectionPair]) -> dict[str, Transform]:
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


def _rotated_copy(pair: SectionPair, folder: Path, degrees: float, mirror: bool) -> tuple[Path, np.ndarray]:
    """The moving section turned by ``degrees`` (and mirrored) on a larger white canvas, with its landmarks."""
    rgb = TiffImage(pair.moving).region(0, 0, 100000, 100000, channel=None)
    height, width = rgb.shape[:2]
    side = int(np.hypot(height, width)) + 40
    flip = np.array([[-1.0, 0, width - 1], [0, 1, 0], [0, 0, 1]]) if mirror else np.eye(3)
    turn = similarity_matrix(1.0, degrees, (side - width) / 2, (side - height) / 2,
                             centre=((width - 1) / 2, (height - 1) / 2))
    push = turn @ flip  # original moving px -> new image px
    turned = cv2.warpAffine(rgb, push[:2], (side, side), flags=cv2.INTER_LINEAR, borderValue=(255, 255, 255))
    path = write_array(turned, folder / f"turned{degrees:.0f}{'m' if mirror else ''}.ome.tif", is_rgb=True)
    points = pair.moving_landmarks @ push[:2, :2].T + push[:2, 2]
    return path, points


@pytest.mark.parametrize(("degrees", "mirror"), [(137.0, False), (250.0, True)])
def test_rotated_and_mirrored_sections_register_as_well_as_upright(
        pairs: dict[str, SectionPair], results: dict[str, Transform], tmp_path: Path, degrees: float,
        mirror: bool) -> None:
    name = "kidney_HE <- kidney_PanCK"
    pair = pairs[name]
    path, points = _rotated_copy(pair, tmp_path, degrees, mirror)
    turned = SectionPair(name, pair.reference, path, pair.reference_landmarks, points)
    settings = RegistrationSettings.from_preset("medium", engine="feature", allow_mirror=mirror)
    upright = np.median(landmark_errors(results[name], pair))
    assert np.median(landmark_errors(None, turned)) > 200  # the copy starts far from the answer
    assert np.median(landmark_errors(register(pair.reference, path, settings), turned)) < upright + 1.5


@pytest.mark.parametrize("variant", ["on-slide", "half", "rotated"])
def test_sections_register_as_well_on_a_glass_slide_at_half_size_and_turned_a_quarter(
        pairs: dict[str, SectionPair], results: dict[str, Transform], tmp_path: Path, variant: str) -> None:
    """How unseen slides differ (benchmarks/robustness.py): mostly glass around the section (its working image
    is then cut to the tissue, and where it lies unregistered no tissue overlaps), a lower pyramid level, a
    quarter turn (the coarse edges and the outline search find it). Errors are compared at full size."""
    name = "kidney_HE <- kidney_PanCK"
    pair = pairs[name]
    changed = variant_pair(pair, variant, tmp_path)
    upright = np.median(landmark_errors(results[name], pair))
    size = TiffImage(changed.reference).info.width / TiffImage(pair.reference).info.width
    after = np.median(landmark_errors(register(changed.reference, changed.moving), changed)) / size
    assert after < upright + 1.5


def test_a_bent_section_is_followed_by_a_field_not_only_an_affine(pairs: dict[str, SectionPair],
                                                                   tmp_path: Path) -> None:
    """The moving section bent smoothly (benchmarks/robustness.py ``warped``): no affine can follow it (the affine
    fitted to the landmarks leaves 6.24 px; the engine's affine alone 15.68 px), the DeepFlow field does (5.40 px
    measured)."""
    pair = pairs["kidney_HE <- kidney_PanCK"]
    bent = variant_pair(pair, "warped", tmp_path)
    transform = register(bent.reference, bent.moving)
    assert transform.displacement is not None
    assert transform.metadata["quality"]["non_rigid_field"] == "deepflow"
    assert np.median(landmark_errors(transform, bent)) < 7.0


def test_a_torn_section_gets_one_correction_per_piece(pairs: dict[str, SectionPair], tmp_path: Path) -> None:
    """The moving section cut in two and the right piece moved away and turned (benchmarks/robustness.py ``torn``),
    on the lung pair whose moved piece neither refinement nor the feature detectors find: one affine leaves 20.51 px
    (the affine fitted to the landmarks 11.98), the per-piece step without the shift search 15.80, with it 6.09
    measured (VALIS used plainly 27.37)."""
    forward = pairs["lung-lesion_HE <- lung-lesion_proSPC"]
    pair = SectionPair("lung-lesion_proSPC <- lung-lesion_HE", forward.moving, forward.reference,
                       forward.moving_landmarks, forward.reference_landmarks)
    torn_pair = variant_pair(pair, "torn", tmp_path)
    transform = register(torn_pair.reference, torn_pair.moving)
    assert transform.metadata["quality"]["non_rigid_field"] == "pieces"
    assert np.median(landmark_errors(transform, torn_pair)) < 8.0


def test_refinement_of_a_cut_section_offers_a_pose_near_its_landmarks_and_the_score_prefers_it(
        pairs: dict[str, SectionPair], tmp_path: Path) -> None:
    """The moving section cut to its left 70 % (benchmarks/robustness.py ``partial``), its tissue running into the
    image's border: from the affine fitted to the landmarks (3.5 px), refinement with zeros beyond the moving image at
    every level drifted to a squashed pose 21.5 px off; with them at the finest level only it stayed at 4.5 px.
    The edge score, which picks between the two, must prefer the pose near the landmarks."""
    cut = variant_pair(pairs["kidney_HE <- kidney_PanCK"], "partial", tmp_path)
    search_dim = SETTINGS.processing_dim // 2
    ref, ref_mask = tissue_image(TiffImage(cut.reference), OPTICAL_DENSITY, search_dim)
    mov, mov_mask = tissue_image(TiffImage(cut.moving), OPTICAL_DENSITY, search_dim)
    design = np.hstack([cut.reference_landmarks, np.ones((len(cut.reference_landmarks), 1))])
    fitted, *_ = np.linalg.lstsq(design, landmark_affine_fit(cut, least_distances=True), rcond=None)
    start = to_working(np.vstack([fitted.T, [0, 0, 1]]), ref, mov)
    scorer = AlignmentScorer(ref.array, ref_mask)

    def error(pull: np.ndarray) -> float:
        mapped = design @ to_level0(pull, ref, mov)[:2].T
        return float(np.median(np.hypot(*(mapped - cut.moving_landmarks).T)))

    poses = refine_both_ways(ref.array, mov.array, ref_mask, start, scorer.sigma)
    preferred = max(poses, key=lambda pull: scorer.score(mov.array, pull, mov_mask, ring=False).value)
    assert error(start) < 4.0
    assert error(preferred) < 6.0, [error(pull) for pull in poses]


def test_a_mirrored_section_is_refused_without_the_flag(pairs: dict[str, SectionPair], tmp_path: Path) -> None:
    pair = pairs["kidney_HE <- kidney_PanCK"]
    path, points = _rotated_copy(pair, tmp_path, 0.0, True)
    try:
        transform = register(pair.reference, path)
    except RegistrationError:
        return  # a clear failure is right
    assert np.linalg.det(transform.affine[:2, :2]) > 0  # never a silent mirror image
    assert np.median(landmark_errors(transform, SectionPair("m", pair.reference, path, pair.reference_landmarks,
                                                            points))) > 20


def test_other_tissue_blank_and_saturated_images_fail_clearly(pairs: dict[str, SectionPair], tmp_path: Path) -> None:
    """A section of the other organ, onto each reference of each stain. Kidney H&E onto the lung proSPC reference
    once passed: its best pose stood 5.4 sd above shifted copies, with 58 % of its tissue on the lung slide's glass
    (similarity.MIN_SHARED_TISSUE)."""
    kidney, lung = pairs["kidney_HE <- kidney_PanCK"], pairs["lung-lesion_HE <- lung-lesion_proSPC"]
    for reference, moving in ((kidney.reference, lung.moving), (lung.reference, kidney.moving),
                              (kidney.moving, lung.reference), (lung.moving, kidney.reference)):
        with pytest.raises(RegistrationError, match=r"stands out|did not beat|other image's glass") as wrong:
            register(reference, moving)
        assert moving.name.split(".")[0] in str(wrong.value) and "Fix:" in str(wrong.value)
    # the lung proSPC section off-centre on a blank slide, onto the kidney H&E reference: its best pose stands 6.8 sd
    # above shifted copies and keeps 90 % of the smaller tissue on the other's, but fits no better than the same
    # search fits its mirror image (0.065 against 0.059)
    on_slide = variant_pair(SectionPair("other", kidney.reference, lung.moving, lung.moving_landmarks,
                                        lung.moving_landmarks), "on-slide", tmp_path)
    with pytest.raises(RegistrationError, match="mirror image") as wrong:
        register(on_slide.reference, on_slide.moving)
    assert on_slide.moving.name.split(".")[0] in str(wrong.value) and "Fix:" in str(wrong.value)
    for value in (255, 0):
        flat = write_array(np.full((600, 800, 3), value, np.uint8), tmp_path / f"flat{value}.ome.tif", is_rgb=True)
        with pytest.raises(RegistrationError, match="no tissue"):
            register(kidney.reference, flat)


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


def test_qc_fails_a_section_of_other_tissue_placed_where_it_scores_best(pairs: dict[str, SectionPair],
                                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                         ) -> None:
    """QC judges by the engines' rule, shared tissue included: kidney H&E, placed onto the lung proSPC reference at
    the pose the light engine scores best (its judgement switched off to get that pose), stands out from shifted
    copies but leaves most of its tissue on the lung slide's glass, and QC says so without landmarks."""
    import slimreg.register.feature as feature

    kidney, lung = pairs["kidney_HE <- kidney_PanCK"], pairs["lung-lesion_HE <- lung-lesion_proSPC"]
    monkeypatch.setattr(feature, "check_result", lambda *args, **kwargs: None)
    other = register(lung.moving, kidney.reference, RegistrationSettings.from_preset(
        "medium", engine="feature", non_rigid=False, micro=False))
    other.save(tmp_path / "other.transform.json")
    warp_file(TiffImage(kidney.reference), other, tmp_path / "other.ome.tif", reference_shape=other.reference_shape,
              pixel_size_um=None)
    result = run_qc(lung.moving, tmp_path / "other.ome.tif", tmp_path / "qc", original_path=kidney.reference,
                    transform_path=tmp_path / "other.transform.json", max_dim=1024)
    assert result.status == "fail"
    assert any("glass" in reason for reason in result.reasons), result.reasons


def test_if_rounds_and_calcium_frames_register(tmp_path: Path) -> None:
    rounds = convert_if_rounds(tmp_path)
    first_second = register(rounds[0], rounds[1])
    assert abs(first_second.affine[0, 2]) + abs(first_second.affine[1, 2]) > 5  # the rounds really were apart
    frames = calcium_frames()
    forward, backward = register(frames[0], frames[1]), register(frames[1], frames[0])
    grid = np.stack(np.meshgrid(np.arange(40, 500, 40), np.arange(40, 380, 40)), axis=-1).reshape(-1, 2).astype(float)
    # the frames move locally by 0-15 px: both directions must find a field, and the two fields, estimated
    # independently, must undo each other (measured: 1.1 px apart, where each moves the tissue by 4-5 px;
    # fields of noise that size would be about 6 px apart)
    assert [t.metadata["quality"]["non_rigid_used"] for t in (forward, backward)] == [1.0, 1.0]
    inconsistency = np.median(np.hypot(*(backward.pull(forward.pull(grid)) - grid).T))
    moved = np.median(np.hypot(*forward.displacement.at(grid).T))
    assert inconsistency < 2.0 and moved > 2 * inconsistency, (inconsistency, moved)


def test_one_failed_image_does_not_block_the_others_qc_or_the_report(pairs: dict[str, SectionPair],
                                                                     tmp_path: Path) -> None:
    from slimreg.runner import run_job

    kidney, lung = pairs["kidney_HE <- kidney_PanCK"], pairs["lung-lesion_HE <- lung-lesion_proSPC"]
    sheet = tmp_path / "samples.csv"
    sheet.write_text(f"sample,image,reference\nkidney,{kidney.reference},true\nkidney,{kidney.moving},false\n"
                     f"kidney,{lung.moving},false\n")
    summary = run_job(sheet, tmp_path / "out", engine="feature", batch_size=3)
    assert not summary.ok
    assert (tmp_path / "out" / "qc" / "kidney" / "kidney_PanCK_qc.json").is_file()
    qc = json.loads((tmp_path / "out" / "qc" / "kidney" / "kidney_PanCK_qc.json").read_text())
    assert qc["status"] == "pass"
    page = (tmp_path / "out" / "report" / "report.html").read_text()
    assert page.index("lung-lesion_proSPC") < page.index("kidney_PanCK")  # the failure is listed first
    assert "Fix:" in page


def test_the_valis_engine_keeps_valis_result_unless_the_light_one_is_clearly_better(
        pairs: dict[str, SectionPair], results: dict[str, Transform], monkeypatch: pytest.MonkeyPatch) -> None:
    """The valis engine's choice between VALIS' result and the light engine's, on a real pair, without VALIS:
    a VALIS result as good as the light one is kept (the user asked for VALIS); one shifted 40 px is replaced,
    and the replacement lands where the landmarks say; a VALIS failure falls back to the light result.

    The light engine's result is this module's own registration of the pair (``results``), handed back to each
    choice rather than computed three more times: what is under test is the choice."""
    from slimreg.errors import RegistrationError
    from slimreg.register.valis_engine import ValisEngine

    name = "kidney_HE <- kidney_PanCK"
    pair, good = pairs[name], results[name]
    monkeypatch.setattr(FeatureEngine, "register_pair", lambda *args, **kwargs: Transform(
        good.affine.copy(), good.displacement, good.reference_shape, good.moving_shape, copy.deepcopy(good.metadata)))
    ref, mov = TiffImage(pair.reference), TiffImage(pair.moving)
    channels = choose_channel(ref.info, None), choose_channel(mov.info, None)
    engine = ValisEngine(log=lambda text: None)

    def as_valis(transform: Transform) -> Transform:
        return Transform(transform.affine.copy(), transform.displacement, transform.reference_shape,
                         transform.moving_shape, metadata={"engine": "valis", "quality": {"peak_memory_bytes": 1}})

    kept = engine._better(ref, mov, *channels, SETTINGS, as_valis(good))
    assert kept.metadata["chosen"] == "VALIS"
    shifted = as_valis(good)
    shifted.affine[:2, 2] += 40.0
    replaced = engine._better(ref, mov, *channels, SETTINGS, shifted)
    assert replaced.metadata["chosen"] == "light engine (scored clearly higher)"
    assert np.median(landmark_errors(replaced, pair)) < BOUNDS[name]
    fallback = engine._better(ref, mov, *channels, SETTINGS, RegistrationError("VALIS found nothing", pair.moving))
    assert fallback.metadata["chosen"] == "light engine (VALIS failed)"


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

"""Refusals on real tissue (../shared/data): a section of other tissue, a blank or saturated image, a mirror image
without the flag, each a clear failure with no output, and no refusal of symmetric tissue for fitting like its mirror
image; QC failing a wrong placement without landmarks; one failed image in a batch leaving the others' QC and the
report intact; refinement of a cut section offering the pose the score must prefer over a squashed one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.realdata import SectionPair, available, landmark_affine_fit, landmark_errors
from benchmarks.robustness import variant_pair
from slimreg.errors import RegistrationError
from slimreg.io import write_array
from slimreg.io.read import TiffImage
from slimreg.qc import run_qc
from slimreg.register.channel import OPTICAL_DENSITY
from slimreg.register.pose import to_level0, to_working
from slimreg.register.refine import EDGE_SCALES, refine_both_ways, tissue_at_border
from slimreg.register.settings import RegistrationSettings
from slimreg.register.similarity import AlignmentScorer
from slimreg.register.tissue_crop import tissue_image
from slimreg.warp import warp_file
from tests.real_sections import BOUNDS, SETTINGS, register, rotated_copy

pytestmark = [pytest.mark.skipif(not available(), reason="the shared real data (../shared/data) is not here"),
              pytest.mark.slow]


def test_a_mirrored_section_is_refused_without_the_flag(pairs: dict[str, SectionPair], tmp_path: Path) -> None:
    pair = pairs["kidney_HE <- kidney_PanCK"]
    path, points = rotated_copy(pair, tmp_path, 0.0, True)
    try:
        transform = register(pair.reference, path)
    except RegistrationError:
        return  # a clear failure is right
    assert np.linalg.det(transform.affine[:2, :2]) > 0  # never a silent mirror image
    assert np.median(landmark_errors(transform, SectionPair("m", pair.reference, path, pair.reference_landmarks,
                                                            points))) > 20


@pytest.mark.parametrize("name", ["lung-lesion_HE <- lung-lesion_proSPC", "kidney_HE <- kidney_PanCK"])
def test_a_symmetric_section_is_not_refused_for_fitting_like_its_mirror_image(pairs: dict[str, SectionPair],
                                                                               tmp_path: Path, name: str) -> None:
    """Bilaterally symmetric tissue (benchmarks/robustness.py ``symmetric``, like a coronal brain section): its mirror
    image is the same tissue, so the mirror decoy fits exactly as well as the right pose, and every such pair was
    refused. The lung pair's pose comes from the rotation search: the moving image matches itself through the
    reflection the two poses imply, inside its tissue (slimreg.register.symmetry), so the decoy is set aside and the
    right pose kept (4.97 px measured). The kidney pair's pose is corroborated by detectors that agree, so no decoy is
    searched for it (slimreg.register.mirror.MIN_CORROBORATING; 2.48 px)."""
    pair = variant_pair(pairs[name], "symmetric", tmp_path)
    transform = register(pair.reference, pair.moving)
    quality = transform.metadata["quality"]
    if name.startswith("lung"):
        # measured only where the decoy fitted within the noise of the result, i.e. where the mirror rule would refuse
        assert quality["mirror_self_symmetry_significance"] >= 4.0
    else:
        assert "pose_corroborated_by" in quality and "mirror_edge_correlation" not in quality
    assert np.median(landmark_errors(transform, pair)) < BOUNDS[name]


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


def test_no_two_detectors_corroborate_a_pose_of_other_tissue(pairs: dict[str, SectionPair], tmp_path: Path) -> None:
    """The light engine searches no mirror decoy for a pose that two detectors' fits corroborate
    (slimreg.register.mirror.MIN_CORROBORATING), so that must not happen between images of different tissue: every
    section onto every section of the other organ, and the IF rounds and calcium frames onto each other, as they are
    and the moving section on a glass slide. The same tissue is corroborated where it is the same stain (IF rounds)."""
    from benchmarks.realdata import calcium_frames, convert_if_rounds
    from slimreg.register.channel import choose_channel
    from slimreg.register.mirror import corroborated
    from slimreg.register.plausibility import expected_scale
    from slimreg.register.pose import best_pose

    kidney, lung = pairs["kidney_HE <- kidney_PanCK"], pairs["lung-lesion_HE <- lung-lesion_proSPC"]
    on_slide = variant_pair(SectionPair("other", kidney.reference, lung.moving, lung.moving_landmarks,
                                        lung.moving_landmarks), "on-slide", tmp_path)
    rounds, frames = convert_if_rounds(tmp_path), calcium_frames()
    unrelated = [*((first, second) for first in (kidney.reference, kidney.moving)
                   for second in (lung.reference, lung.moving, on_slide.moving)),
                 *((second, first) for first in (kidney.reference, kidney.moving) for second in (lung.reference,
                                                                                                 lung.moving)),
                 *((first, second) for first in rounds[:2] for second in frames),
                 *((second, first) for first in rounds[:2] for second in frames)]

    def corroborating(reference: Path, moving: Path) -> tuple[str, ...]:
        """As the engine searches: optical density for the RGB sections, the nuclear channel otherwise."""
        ref_image, mov_image = TiffImage(reference), TiffImage(moving)
        ref, ref_mask = tissue_image(ref_image, choose_channel(ref_image.info, None), SETTINGS.search_dim)
        mov, mov_mask = tissue_image(mov_image, choose_channel(mov_image.info, None), SETTINGS.search_dim)
        return best_pose(AlignmentScorer(ref.array, ref_mask), ref, mov, mov_mask, SETTINGS,
                         expected_scale(ref_image, mov_image)).corroborated_by

    assert not any(corroborated(corroborating(reference, moving)) for reference, moving in unrelated)
    assert corroborated(corroborating(rounds[0], rounds[1]))


def test_qc_fails_a_section_of_other_tissue_placed_where_it_scores_best(pairs: dict[str, SectionPair],
                                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                         ) -> None:
    """QC judges by the engines' rule, shared tissue included: kidney H&E, placed onto the lung proSPC reference at
    the pose the light engine scores best (its judgement switched off to get that pose), stands out from shifted
    copies but leaves most of its tissue on the lung slide's glass, and QC says so without landmarks."""
    import slimreg.register.feature as feature
    import tests.real_sections as real_sections

    kidney, lung = pairs["kidney_HE <- kidney_PanCK"], pairs["lung-lesion_HE <- lung-lesion_proSPC"]
    monkeypatch.setattr(feature, "check_result", lambda *args, **kwargs: None)
    monkeypatch.setattr(real_sections, "judge_transform", lambda *args, **kwargs: None)  # the batch's, likewise
    other = register(lung.moving, kidney.reference, RegistrationSettings.from_preset(
        "medium", engine="feature", non_rigid=False, micro=False))
    other.save(tmp_path / "other.transform.json")
    warp_file(TiffImage(kidney.reference), other, tmp_path / "other.ome.tif", reference_shape=other.reference_shape,
              pixel_size_um=None)
    result = run_qc(lung.moving, tmp_path / "other.ome.tif", tmp_path / "qc", original_path=kidney.reference,
                    transform_path=tmp_path / "other.transform.json", max_dim=1024)
    assert result.status == "fail"
    assert any("glass" in reason for reason in result.reasons), result.reasons


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
    # run_job's result says the same per image: the kidney section registered with QC pass, the lung one refused
    images = {image.image: image for image in summary.images}
    assert images["kidney_PanCK"].registered and images["kidney_PanCK"].qc == "pass"
    assert not images["lung-lesion_proSPC"].registered and images["lung-lesion_proSPC"].qc is None
    assert "Fix:" in images["lung-lesion_proSPC"].error
    page = (tmp_path / "out" / "report" / "report.html").read_text()
    assert page.index("lung-lesion_proSPC") < page.index("kidney_PanCK")  # the failure is listed first
    assert "Fix:" in page


def test_refinement_of_a_cut_section_offers_a_pose_near_its_landmarks_and_the_score_prefers_it(
        pairs: dict[str, SectionPair], tmp_path: Path) -> None:
    """The moving section cut to its left 70 % (benchmarks/robustness.py ``partial``), its tissue running into the
    image's border: from the affine fitted to the landmarks (3.5 px), refinement with zeros beyond the moving image at
    every level drifted to a squashed pose 21.5 px off; with them at the finest level only it stayed at 4.5 px.
    The edge score, which picks between the two, must prefer the pose near the landmarks. The uncut section's tissue
    stays clear of its image's border, where both schedules see the same images: it is refined one way only."""
    whole = pairs["kidney_HE <- kidney_PanCK"]
    cut = variant_pair(whole, "partial", tmp_path)
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

    poses = refine_both_ways(ref.array, mov.array, ref_mask, start, scorer.sigma, moving_mask=mov_mask)
    assert len(poses) == 2 * len(EDGE_SCALES)  # each schedule's pose after each edge scale
    uncut, uncut_mask = tissue_image(TiffImage(whole.moving), OPTICAL_DENSITY, search_dim)
    assert tissue_at_border(mov_mask, scorer.sigma) and not tissue_at_border(uncut_mask, scorer.sigma)
    assert len(refine_both_ways(ref.array, uncut.array, ref_mask, start, scorer.sigma,
                                moving_mask=uncut_mask)) == len(EDGE_SCALES)
    preferred = max(poses, key=lambda pull: scorer.score(mov.array, pull, mov_mask, ring=False).value)
    assert error(start) < 4.0
    assert error(preferred) < 6.0, [error(pull) for pull in poses]

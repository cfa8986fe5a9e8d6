"""REGISTER with the feature engine on demo data with known transforms; landmarks mapped by saved files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slimreg.cli import main
from slimreg.io import open_image, probe, write_array
from slimreg.landmarks import read_landmarks
from slimreg.register.batch import register_images
from slimreg.register.settings import RegistrationSettings
from slimreg.transform import Transform
from tests.conftest import DEMO_SIZE

pytestmark = pytest.mark.slow


def landmark_errors(demo_dir: Path, reference: str, moving: str, transform_path: Path,
                    affine_only: bool = False) -> np.ndarray:
    """Landmark errors of a saved result; ``affine_only``: through its affine alone, which the engine fits before
    and independently of the non-rigid step (so this is the result with the non-rigid step switched off)."""
    transform = Transform.load(transform_path)
    if affine_only:
        transform = Transform(transform.affine, None, transform.reference_shape, transform.moving_shape)
    truth = read_landmarks(demo_dir / f"{reference}.landmarks.csv")
    mapped = transform.push(read_landmarks(demo_dir / f"{moving}.landmarks.csv"))
    return np.hypot(*(mapped - truth).T)


@pytest.fixture(scope="module")
def feature_results(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("feature")
    settings = RegistrationSettings.from_preset("medium", engine="feature", non_rigid=True)
    moving = [demo_dir / f"mif_round{i}.ome.tif" for i in (1, 2, 3)]
    batch = register_images(demo_dir / "mif_round0.ome.tif", moving, folder, settings)
    assert not batch.failed, [r.error for r in batch.failed]
    he = register_images(demo_dir / "he_section0.ome.tif", [demo_dir / "he_section1.ome.tif"], folder, settings)
    assert not he.failed
    return folder


@pytest.mark.parametrize("moving", ["mif_round1", "mif_round2"])
def test_similarity_and_affine_cases_are_subpixel(demo_dir: Path, feature_results: Path,
                                                  moving: str) -> None:
    errors = landmark_errors(demo_dir, "mif_round0", moving, feature_results / f"{moving}.transform.json")
    assert np.median(errors) <= 0.5
    before = np.hypot(*(read_landmarks(demo_dir / f"{moving}.landmarks.csv")
                        - read_landmarks(demo_dir / "mif_round0.landmarks.csv")).T)
    assert np.median(before) > 5  # the test starts far from the answer


@pytest.mark.parametrize(("reference", "moving"), [("mif_round0", "mif_round3"), ("he_section0", "he_section1")])
def test_nonrigid_cases_beat_affine(demo_dir: Path, feature_results: Path, reference: str,
                                    moving: str) -> None:
    saved = feature_results / f"{moving}.transform.json"
    nonrigid = landmark_errors(demo_dir, reference, moving, saved)
    affine = landmark_errors(demo_dir, reference, moving, saved, affine_only=True)
    # the synthetic H&E warp is met less closely than the fluorescence one (bounds as measured before the
    # flow-agreement rule, which both pairs pass)
    assert np.median(nonrigid) <= (1.5 if reference.startswith("he") else 1.0)
    assert np.median(nonrigid) < np.median(affine)
    assert (feature_results / f"{moving}.displacement.npz").is_file()


def test_registered_image_is_in_the_reference_frame(demo_dir: Path, feature_results: Path) -> None:
    registered = feature_results / "mif_round3.ome.tif"
    info = probe(registered)
    assert (info.width, info.height) == (DEMO_SIZE, DEMO_SIZE)
    assert info.channel_names == ("DAPI", "PD1", "Ki67") and info.dtype == "uint16"
    assert info.pixel_size_um == pytest.approx((0.5, 0.5)) and info.tile == (DEMO_SIZE, DEMO_SIZE)  # 1024, clamped
    reference = open_image(demo_dir / "mif_round0.ome.tif").region(0, 0, DEMO_SIZE, DEMO_SIZE).astype(float)
    original = open_image(demo_dir / "mif_round3.ome.tif").region(0, 0, DEMO_SIZE, DEMO_SIZE).astype(float)
    warped = open_image(registered).region(0, 0, DEMO_SIZE, DEMO_SIZE).astype(float)
    assert np.corrcoef(reference.ravel(), warped.ravel())[0, 1] > 0.95 > np.corrcoef(reference.ravel(),
                                                                                      original.ravel())[0, 1]
    rgb = probe(feature_results / "he_section1.ome.tif")
    assert rgb.is_rgb and rgb.pixel_size_um == pytest.approx((0.25, 0.25))


def test_textureless_image_fails_alone_with_no_output(demo_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    blank = write_array(np.full((3, 400, 400), 1000, np.uint16), tmp_path / "blank.ome.tif",
                        channel_names=["DAPI", "CD3", "panCK"])
    out = tmp_path / "out"
    status = main(["register", "--engine", "feature", "--reference", str(demo_dir / "mif_round0.ome.tif"),
                   "--moving", str(blank), str(demo_dir / "mif_round1.ome.tif"), "--outdir", str(out)])
    assert status == 1
    assert "blank.ome.tif" in capsys.readouterr().err
    assert not list(out.glob("blank*")) and (out / "mif_round1.ome.tif").is_file()
    assert not list(out.glob(".*partial*")) and not list(out.glob(".slimreg-work-*"))


def test_missing_registration_channel_is_named(demo_dir: Path, tmp_path: Path) -> None:
    settings = RegistrationSettings.from_preset("low", engine="feature", channel="CD3")
    batch = register_images(demo_dir / "mif_round0.ome.tif", [demo_dir / "mif_round1.ome.tif"], tmp_path, settings)
    assert batch.failed and "has no channel 'CD3'" in batch.failed[0].error
    assert "mif_round1.ome.tif" in batch.failed[0].error
    assert not list(tmp_path.glob("mif_round1*"))


def test_flow_is_trusted_only_where_two_estimates_agree() -> None:
    """A real smooth motion is found alike from intensities and from edges; what two unrelated images give is not."""
    from scipy import ndimage

    from slimreg.register.fields import FLOW_AGREEMENT, field_candidates
    from slimreg.register.similarity import AlignmentScorer

    rng = np.random.default_rng(7)
    size = 256

    def random_texture() -> np.ndarray:
        smooth = ndimage.gaussian_filter(rng.random((size, size)), 3).astype(np.float32)
        return (smooth - smooth.min()) / (smooth.max() - smooth.min())

    texture = random_texture()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # a bulge of up to 4 px, as tissue moves between frames
    bulge = 4 * np.exp(-((xx - 128) ** 2 + (yy - 128) ** 2) / (2 * 50.0**2)).astype(np.float32)
    moved = ndimage.map_coordinates(texture, [yy - bulge, xx - bulge], order=1, mode="reflect").astype(np.float32)
    region = np.ones((size, size), bool)
    scorer = AlignmentScorer(texture, region)
    for candidate in field_candidates(scorer, moved, region):
        assert candidate.disagreement < FLOW_AGREEMENT, candidate.smoothing
        # the kept field points back along the bulge (placed(p + flow(p)) = reference(p))
        assert candidate.flow[128, 128, 0] == pytest.approx(bulge[128, 128], abs=1.0)
    unrelated = random_texture()
    assert all(c.disagreement > FLOW_AGREEMENT for c in field_candidates(scorer, unrelated, region))


def test_a_single_flow_is_trusted_only_when_its_motion_is_resolvable() -> None:
    """A bend of a few edge sigmas is kept as a candidate and found; sub-sigma motion is not (it cannot be told
    from noise by edge measures)."""
    from scipy import ndimage

    from slimreg.register.fields import deformation_candidates
    from slimreg.register.similarity import AlignmentScorer

    rng = np.random.default_rng(11)
    size = 256
    smooth = ndimage.gaussian_filter(rng.random((size, size)), 3).astype(np.float32)
    texture = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    region = np.ones((size, size), bool)
    scorer = AlignmentScorer(texture, region)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for amplitude, resolvable in ((3.0, True), (0.3, False)):
        # the placed image shows, at p, the reference at p - bend(p); the field must point back along it
        bend_x = amplitude * np.sin(2 * np.pi * yy / size)
        placed = ndimage.map_coordinates(texture, [yy, xx - bend_x], order=1, mode="reflect").astype(np.float32)
        candidate, finer = deformation_candidates(scorer, placed, region)
        # the finer smoothing of the same flow stands or falls with it
        assert candidate.admissible is resolvable and finer.admissible is resolvable, (amplitude, candidate.motion)
        assert finer.smoothing < candidate.smoothing
        if resolvable:
            inner = (slice(32, -32), slice(32, -32))
            for field in (candidate, finer):
                assert np.median(np.abs(field.flow[..., 0][inner] - bend_x[inner])) < 0.5


def _two_pieces(height: int, width: int, left_box: tuple[slice, slice], right_box: tuple[slice, slice],
                shift: tuple[int, int], seed: int, smoothing: float) -> tuple[np.ndarray, ...]:
    """Two pieces of one smooth random texture: the reference with both where they belong, and the placed image
    with the right piece moved by ``shift`` (x, y) px. Returns the reference, both pieces' masks, the right piece
    alone as placed, its mask as placed, and the placed image."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random((height, width)), smoothing).astype(np.float32)
    texture = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    left, right = np.zeros((height, width), bool), np.zeros((height, width), bool)
    left[left_box], right[right_box] = True, True
    reference = np.where(left | right, texture, 0).astype(np.float32)
    moved_right = np.roll(right, shift[::-1], axis=(0, 1))
    alone = np.roll(np.where(right, texture, 0), shift[::-1], axis=(0, 1)).astype(np.float32)
    placed = (np.where(left, texture, 0) + alone).astype(np.float32)
    return reference, left, right, alone, moved_right, placed


def test_a_piece_moved_far_is_found_by_the_shift_search() -> None:
    """A piece moved 56 px (the image is 800 px wide, so the search runs on a grid of 2 px): the shift search
    finds it to within one grid step, and the piece's correction then lands it exactly."""
    from scipy import ndimage

    from slimreg.register.pieces import piece_field, shift_start
    from slimreg.register.similarity import AlignmentScorer

    shift_x, shift_y = -40, 40
    reference, left, right, alone, moved_right, placed = _two_pieces(
        600, 800, np.s_[60:540, 40:330], np.s_[60:500, 420:740], (shift_x, shift_y), seed=7, smoothing=3.0)
    scorer = AlignmentScorer(reference, left | right)
    step = max(1, round(scorer.sigma / 2))
    assert step == 2
    start = shift_start(scorer, alone, moved_right)
    assert np.allclose(start[:2, :2], np.eye(2)) and np.abs(start[:2, 2] - (shift_x, shift_y)).max() <= step
    found = piece_field(scorer, placed, left | moved_right, 1.0, "affine")
    assert found is not None
    inner = ndimage.binary_erosion(right, iterations=10)
    assert np.median(found[0][inner, 0]) == pytest.approx(shift_x, abs=0.5)
    assert np.median(found[0][inner, 1]) == pytest.approx(shift_y, abs=0.5)


def test_a_piece_no_search_finds_is_found_from_the_dense_flow(monkeypatch: pytest.MonkeyPatch) -> None:
    """A piece moved by (9, -7) px where neither the shift search (made to find nothing here) nor any detector (no
    keypoints) proposes a start: without a dense flow the piece stays where the affine put it; with a flow that
    follows it, the piece gets its correction."""
    from scipy import ndimage

    from slimreg.register import pieces
    from slimreg.register.initial import Described
    from slimreg.register.similarity import AlignmentScorer

    shift_x, shift_y = 9, -7
    reference, left, right, _, moved_right, placed = _two_pieces(
        260, 340, np.s_[40:220, 30:150], np.s_[40:220, 190:310], (shift_x, shift_y), seed=5, smoothing=2.5)
    scorer = AlignmentScorer(reference, left | right)
    monkeypatch.setattr(pieces, "shift_start", lambda *args: np.eye(3))
    empty = {"none": Described(np.zeros((0, 2), np.float32), None)}
    assert pieces.piece_field(scorer, placed, left | moved_right, 1.0, "affine", (empty, empty)) is None
    dense = np.zeros((*reference.shape, 2), np.float32)
    dense[right] = (shift_x, shift_y)  # placed(p + flow(p)) = reference(p) on the moved piece
    found = pieces.piece_field(scorer, placed, left | moved_right, 1.0, "affine", (empty, empty), dense)
    assert found is not None
    inner = ndimage.binary_erosion(right, iterations=8)
    assert np.median(found[0][inner, 0]) == pytest.approx(shift_x, abs=0.5)
    assert np.median(found[0][inner, 1]) == pytest.approx(shift_y, abs=0.5)


def test_pieces_that_moved_apart_each_get_their_own_correction() -> None:
    """Two pieces of tissue, one moved by (6, 4) px after the affine: the field moves that piece back and leaves the
    other where it is; one piece alone, or pieces that did not move, give no field."""
    from scipy import ndimage

    from slimreg.register.pieces import piece_field
    from slimreg.register.similarity import AlignmentScorer

    shift_x, shift_y = 6, 4
    reference, left, right, _, moved_right, placed = _two_pieces(
        260, 340, np.s_[40:220, 30:150], np.s_[40:220, 190:310], (shift_x, shift_y), seed=5, smoothing=2.5)
    scorer = AlignmentScorer(reference, left | right)
    found = piece_field(scorer, placed, left | moved_right, 1.0, "affine")
    assert found is not None
    flow, motion = found
    inner_right, inner_left = ndimage.binary_erosion(right, iterations=8), ndimage.binary_erosion(left, iterations=8)
    # placed(p + flow(p)) = reference(p): the right piece is pulled from (6, 4) px further on
    assert np.median(flow[inner_right, 0]) == pytest.approx(shift_x, abs=0.5)
    assert np.median(flow[inner_right, 1]) == pytest.approx(shift_y, abs=0.5)
    assert np.abs(flow[inner_left]).max() < 0.5
    assert motion == pytest.approx(np.hypot(shift_x, shift_y) / scorer.sigma, rel=0.15)
    assert piece_field(scorer, reference, left | right, 1.0, "affine") is None  # nothing moved
    assert piece_field(AlignmentScorer(np.where(left, reference, 0).astype(np.float32), left),
                       np.roll(np.where(left, reference, 0), (4, 6), axis=(0, 1)).astype(np.float32),
                       np.roll(left, (4, 6), axis=(0, 1)), 1.0, "affine") is None  # one piece: the affine's job


def _grid_of_pieces(rows: int, columns: int, moved: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                               np.ndarray]:
    """``rows`` x ``columns`` square pieces of one smooth random texture, 64 px apart on a 300 x 420 px image (each
    large enough to be placed alone): the reference, its mask, and the placed image and mask with the first piece
    moved by ``moved`` (x, y) px."""
    from scipy import ndimage

    rng = np.random.default_rng(11)
    smooth = ndimage.gaussian_filter(rng.random((300, 420)), 2.5).astype(np.float32)
    texture = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    masks = []
    for row in range(rows):
        for column in range(columns):
            mask = np.zeros(texture.shape, bool)
            mask[20 + row * 140: 20 + row * 140 + 110, 16 + column * 134: 16 + column * 134 + 110] = True
            masks.append(mask)
    everything = np.any(masks, axis=0)
    first = np.roll(masks[0], moved[::-1], axis=(0, 1))
    placed = (np.where(everything & ~masks[0], texture, 0)
              + np.roll(np.where(masks[0], texture, 0), moved[::-1], axis=(0, 1))).astype(np.float32)
    return np.where(everything, texture, 0).astype(np.float32), everything, placed, (everything & ~masks[0]) | first


@pytest.mark.parametrize("moved", [(0, 0), (6, 4)])
def test_refinements_do_not_grow_with_the_number_of_pieces(monkeypatch: pytest.MonkeyPatch,
                                                           moved: tuple[int, int]) -> None:
    """Pieces the affine already placed (no start moves them resolvably) are not refined: the tissue of a nuclei
    image lies in many components, and refining each from several starts took minutes. So two pieces and six cost
    the same number of SimpleITK refinements: none where nothing moved, those of the one moved piece where one did,
    which still gets its correction."""
    from slimreg.register import pieces
    from slimreg.register.similarity import AlignmentScorer

    original, calls = pieces.refine_affine, []

    def counting(*args: object, **kwargs: object) -> np.ndarray:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(pieces, "refine_affine", counting)
    counts = []
    for rows, columns in ((1, 2), (2, 3)):
        calls.clear()
        reference, mask, placed, placed_mask = _grid_of_pieces(rows, columns, moved)
        assert len(pieces.pieces_of(placed_mask)[1]) == rows * columns
        found = pieces.piece_field(AlignmentScorer(reference, mask), placed, placed_mask, 1.0, "affine")
        counts.append(len(calls))
        if moved == (0, 0):
            assert found is None
        else:
            assert found is not None
            first = np.zeros(mask.shape, bool)
            first[30:120, 26:116] = True  # inside the first piece as it belongs
            assert np.median(found[0][first, 0]) == pytest.approx(moved[0], abs=0.5)
            assert np.median(found[0][first, 1]) == pytest.approx(moved[1], abs=0.5)
    assert counts[0] == counts[1]
    assert counts[0] == 0 if moved == (0, 0) else counts[0] >= 2


def test_a_collapsed_fit_is_no_start_for_a_piece() -> None:
    """A detector's fit can collapse onto a line (a few matches in a row; seen on the torn kidney pair): it places
    nothing, so it is dropped rather than inverted, and a piece with no other proposal is left to the affine."""
    from slimreg.register.pieces import piece_starts
    from slimreg.register.similarity import AlignmentScorer

    image = np.zeros((120, 160), np.float32)
    piece = np.zeros(image.shape, bool)
    piece[30:90, 40:120] = True
    scorer = AlignmentScorer(np.where(piece, 1.0, 0.0).astype(np.float32), piece)
    collapsed = np.array([[0.5, 1.0, 3.0], [1.0, 2.0, -4.0], [0.0, 0.0, 1.0]])  # determinant 0
    shifted = np.array([[1.0, 0.0, 12.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert piece_starts(scorer, [collapsed], piece, 1.0) == []
    starts = piece_starts(scorer, [collapsed, shifted], piece, 1.0)
    assert len(starts) == 2 and np.allclose(starts[0], np.eye(3)) and np.allclose(starts[1], shifted)


def test_the_shift_start_is_also_turned_a_step_either_way_about_where_it_lands_the_piece() -> None:
    """The shift search finds where a piece lies, not how it turned: its start is also refined turned by the step
    that moves the piece's farthest pixel two edge sigmas (the coarse edges' blur), about the piece's centre as the
    shift lands it, so that the piece stays where the search found it."""
    from slimreg.register.pieces import turned_starts

    piece = np.zeros((200, 300), bool)
    piece[50:150, 100:200] = True  # centre (149.5, 99.5); its corners are the farthest pixels
    farthest = np.hypot(49.5, 49.5)
    shift = np.array([[1.0, 0.0, 30.0], [0.0, 1.0, -12.0], [0.0, 0.0, 1.0]])
    sigma = 3.5
    turned = turned_starts(shift, piece, sigma)
    assert len(turned) == 2
    centre = np.array([149.5, 99.5, 1.0])
    landed = np.linalg.inv(shift) @ centre  # where the shift lands the piece's centre (reference px)
    corner = np.array([199.0, 149.0, 1.0])
    for start in turned:
        assert np.allclose(start @ landed, centre)  # the centre still lands where the shift put it
        linear = start[:2, :2]
        assert np.allclose(linear @ linear.T, np.eye(2))  # a turn, no scale
        moved = np.linalg.inv(start) @ corner - np.linalg.inv(shift) @ corner
        assert np.hypot(*moved[:2]) == pytest.approx(2 * sigma, rel=1e-3)  # an arc of 2 sigma, as a chord
    angles = sorted(np.degrees(np.arctan2(start[1, 0], start[0, 0])) for start in turned)
    assert angles[0] == pytest.approx(-angles[1]) and angles[1] == pytest.approx(np.degrees(2 * sigma / farthest))


def test_refinements_side_by_side_find_the_poses_one_at_a_time_finds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starts refined side by side come back in order and at the same poses as refined one after another, so a
    search finds the same result on any number of CPUs."""
    from scipy import ndimage

    from slimreg.register import refine

    rows, columns = np.mgrid[0:120, 0:160]
    blobs = np.zeros((120, 160), np.float32)  # four round cells of different sizes: one clear optimum
    for row, column, radius in [(40, 50, 10), (70, 90, 14), (50, 115, 7), (85, 45, 6)]:
        blobs += (rows - row) ** 2 + (columns - column) ** 2 < radius**2
    blobs = ndimage.gaussian_filter(blobs, 1.0).astype(np.float32)
    moved = ndimage.shift(blobs, (2.5, -3.0)).astype(np.float32)
    mask = ndimage.binary_dilation(blobs > 0.1, iterations=6)
    starts = [np.eye(3), np.array([[1.0, 0, -1.0], [0, 1, 1.0], [0, 0, 1]]),
              np.array([[1.02, 0, 0], [0, 0.98, 1.0], [0, 0, 1]])]

    def refined(workers: int) -> list[list[np.ndarray]]:
        monkeypatch.setattr(refine, "usable_cpus", lambda: workers)
        return refine.side_by_side(starts, lambda start: refine.refine_both_ways(
            blobs, moved, mask, start, 2.0, moving_mask=mask))

    one_at_a_time, side_by_side = refined(1), refined(3)
    assert len(side_by_side) == len(starts)
    for alone, together in zip(one_at_a_time, side_by_side, strict=True):
        assert len(alone) == len(together)
        for a, b in zip(alone, together, strict=True):
            np.testing.assert_array_equal(a, b)
    # each start was refined, not passed through: all reach the known shift (content moved by x -3, y +2.5)
    for pull in (pull for pulls in side_by_side for pull in pulls):
        assert pull[:2, 2] == pytest.approx([-3.0, 2.5], abs=0.15)



def test_deepflow_is_estimated_unless_two_flows_agree_the_tissue_stayed_still(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two flows that agree the tissue moved less than one edge sigma (a slight bend) measured it twice below what
    DeepFlow's fields are tried for, so DeepFlow is not estimated; where they agree on a bend of a few sigmas it still
    is (on VALIS' IHC slide 5, whose pieces moved apart, DeepFlow's field beats the agreeing flows)."""
    from scipy import ndimage

    from slimreg.io.read import TiffImage
    from slimreg.register import feature
    from slimreg.register.feature import FeatureEngine
    from slimreg.register.fields import FLOW_AGREEMENT, RESOLVABLE_MOTION_SIGMAS

    original, calls = feature.deformation_candidates, []

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(feature, "deformation_candidates", counting)
    rng = np.random.default_rng(5)
    size = 384
    smooth = ndimage.gaussian_filter(rng.random((size, size)), 3)
    texture = ((smooth - smooth.min()) / (smooth.max() - smooth.min()) * 60000).astype(np.uint16)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    reference = TiffImage(write_array(texture, tmp_path / "reference.ome.tif"))
    settings = RegistrationSettings.from_preset("medium", engine="feature")
    # bends of 0.5 and 8 px: a third of an edge sigma (384 / 250 px) and a few sigmas over most of the tissue
    for amplitude, estimated in ((0.5, False), (8.0, True)):
        calls.clear()
        bent = ndimage.map_coordinates(texture.astype(np.float64), [yy, xx - amplitude * np.sin(2 * np.pi * yy / size)],
                                       order=1, mode="reflect")
        name = f"bent{amplitude}"
        image = TiffImage(write_array(bent.astype(np.uint16), tmp_path / f"{name}.ome.tif"))
        _, stats = FeatureEngine()._non_rigid(reference, image, 0, 0, np.eye(3), settings)
        agree = [stats[f"non_rigid_flow_disagreement_{s}"] < FLOW_AGREEMENT for s in (0.02, 0.08)]
        motion = [stats[f"non_rigid_flow_motion_sigmas_{s}"] for s in (0.02, 0.08)]
        assert any(agree), (name, stats)
        assert all(m < RESOLVABLE_MOTION_SIGMAS for m in motion) is not estimated, (name, motion)
        assert bool(calls) is estimated, name


def test_deepflow_is_estimated_at_full_size_only_where_half_size_finds_motion(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the two flows give no agreeing estimate (as across stains), DeepFlow is first estimated at half size: a
    pair that did not move is not given to full-size DeepFlow, a bend of a few sigmas is. Images too small for the
    half size's edge sigma to keep its share of the side are not screened: DeepFlow runs there as it did before."""
    from dataclasses import replace

    from scipy import ndimage

    from slimreg.io.read import TiffImage
    from slimreg.register import feature
    from slimreg.register.feature import FeatureEngine
    from slimreg.register.fields import DEEPFLOW_SCREEN_SHARE, RESOLVABLE_MOTION_SIGMAS

    original_candidates, original_flows, calls = feature.deformation_candidates, feature.field_candidates, []

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original_candidates(*args, **kwargs)

    def disagreeing(*args: object, **kwargs: object) -> object:
        return [replace(c, disagreement=float("inf")) for c in original_flows(*args, **kwargs)]

    monkeypatch.setattr(feature, "deformation_candidates", counting)
    monkeypatch.setattr(feature, "field_candidates", disagreeing)
    settings = RegistrationSettings.from_preset("medium", engine="feature")
    rng = np.random.default_rng(5)
    # at 488 px the half size's edge sigma would be held at 1 px instead of 0.98 px: motion in sigmas would read low
    for size, amplitude, screened_out in ((512, 0.0, True), (512, 8.0, False), (488, 0.0, False)):
        assert size <= settings.non_rigid_dim
        calls.clear()
        smooth = ndimage.gaussian_filter(rng.random((size, size)), 3)
        texture = ((smooth - smooth.min()) / (smooth.max() - smooth.min()) * 60000).astype(np.uint16)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
        reference = TiffImage(write_array(texture, tmp_path / f"reference{size}.ome.tif"))
        bent = ndimage.map_coordinates(texture.astype(np.float64), [yy, xx - amplitude * np.sin(2 * np.pi * yy / size)],
                                       order=1, mode="reflect")
        image = TiffImage(write_array(bent.astype(np.uint16), tmp_path / f"bent{size}_{amplitude}.ome.tif"))
        _, stats = FeatureEngine()._non_rigid(reference, image, 0, 0, np.eye(3), settings)
        screened = stats.get("non_rigid_deepflow_half_size_motion_sigmas")
        if size < 500:
            assert screened is None, stats
        else:
            assert (screened < DEEPFLOW_SCREEN_SHARE * RESOLVABLE_MOTION_SIGMAS) is screened_out, (size, stats)
        assert bool(calls) is not screened_out, (size, amplitude)
        assert ("non_rigid_deepflow_motion_sigmas" in stats) is not screened_out


def test_a_grey_brightfield_section_registers_onto_an_rgb_one_as_its_colour_original_does(
        demo_dir: Path, feature_results: Path, tmp_path: Path) -> None:
    """The demo's second H&E section stored as one grey channel (a monochrome camera's scan): registered on its
    optical density, as close to the known answer as the colour original, and its margins filled with its glass
    (refused as fluorescence until stop 68)."""
    import cv2

    from slimreg.io import write_array
    from slimreg.io.read import TiffImage

    rgb = TiffImage(demo_dir / "he_section1.ome.tif").region(0, 0, 100000, 100000, channel=None)
    grey = write_array(cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2GRAY)[None],
                       tmp_path / "he_grey.ome.tif", channel_names=["grey"])
    settings = RegistrationSettings.from_preset("medium", engine="feature", non_rigid=True)
    batch = register_images(demo_dir / "he_section0.ome.tif", [grey], tmp_path / "out", settings)
    assert not batch.failed, [r.error for r in batch.failed]
    transform_path = tmp_path / "out" / "he_grey.transform.json"
    glass = Transform.load(transform_path).metadata["moving_glass"]
    assert glass > 200  # the demo's white glass
    grey_errors = landmark_errors(demo_dir, "he_section0", "he_section1", transform_path)
    colour_errors = landmark_errors(demo_dir, "he_section0", "he_section1",
                                    feature_results / "he_section1.transform.json")
    assert np.median(grey_errors) < np.median(colour_errors) + 0.5

"""The real images in ../shared/data as slimreg inputs, and how results on them are scored.

Used by benchmarks/accuracy.py and by the tests that hold registration to accuracy bounds on real tissue.
The images are converted once into OME-TIFF (what a user brings), next to their landmarks.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SLIMREG_SHARED_DATA", REPO.parent / "shared" / "data"))

SECTION_PAIRS = (("kidney_HE", "kidney_PanCK"), ("lung-lesion_HE", "lung-lesion_proSPC"))
IF_ROUNDS = ("processed_CD20_FOXP3_CD3", "processed_CD4_CD68_CD3", "processed_CD8_FOXP3_CD20")
CALCIUM_FRAMES = ("spinalImaging01_ref", "spinalImaging01_template")


def available() -> bool:
    return (SHARED_DATA / "real-sections" / "kidney_HE.jpg").is_file()


def shared_data_missing() -> bool:
    """True, having said so on stderr, when the shared real data is not here (a benchmark then exits 2)."""
    if available():
        return False
    print("the shared real data is not here; set SLIMREG_SHARED_DATA to its folder", file=sys.stderr)
    return True


@dataclass(frozen=True)
class SectionPair:
    """A reference and a moving section with corresponding landmarks (same row = same structure)."""

    name: str
    reference: Path
    moving: Path
    reference_landmarks: np.ndarray
    moving_landmarks: np.ndarray


def _read_points(path: Path) -> np.ndarray:
    return np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)


def convert_sections(workdir: Path, upscale: int = 1, layout: str = "tiles") -> dict[str, Path]:
    """Each real section as an RGB OME-TIFF in ``workdir`` (made once); ``upscale`` > 1 makes whole-slide-sized
    copies (bilinear, streamed through libvips and slimreg's tile writer; JPEG tiles as scanners write them).
    ``layout="strips"``: the copies as plain TIFFs in deflate strips without a pyramid, as files converted from a
    JPEG or exported by image tools come."""
    import cv2
    import pyvips

    from slimreg.io import OmeMetadata, write_array, write_planes

    folder = SHARED_DATA / "real-sections"
    workdir.mkdir(parents=True, exist_ok=True)
    out = {}
    for names in SECTION_PAIRS:
        for name in names:
            target = workdir / f"{name}{f'_x{upscale}' if upscale > 1 else ''}.ome.tif"
            if layout == "strips":
                target = target.with_name(target.name.replace(".ome.tif", "_strips.tif"))
            if not target.is_file() and upscale == 1:
                rgb = cv2.cvtColor(cv2.imread(str(folder / f"{name}.jpg")), cv2.COLOR_BGR2RGB)
                write_array(rgb, target, is_rgb=True)
            elif not target.is_file():
                source = str(folder / f"{name}.jpg")

                def plane(source: str = source) -> pyvips.Image:
                    return pyvips.Image.new_from_file(source).resize(upscale, kernel="linear")

                first = plane()
                if layout == "strips":
                    first.tiffsave(str(target), compression="deflate", bigtiff=True)
                    out[name] = target
                    continue
                write_planes([plane], target, OmeMetadata(width=first.width, height=first.height, dtype="uint8",
                                                          channel_names=("RGB",), is_rgb=True),
                             compression="jpeg", tile_size=1024)
            out[name] = target
    return out


# A series slimreg was not built on: ANHIR's lung-lesion_3, one lesion cut five times and stained five ways, at 5 %
# scale, with landmarks by two annotators (github.com/Borda/dataset-histology-landmarks, BSD-3). It is not in
# ../shared: ``--histology-landmarks`` names a copy of that repository. Measure on it; tune nothing to it.
LESION3 = Path("lung-lesion_3")
LESION3_REFERENCE = "He"
LESION3_STAINS = ("CD31-3", "Cc10-5", "Ki67-7", "proSPC-4")
LESION3_ANNOTATORS = ("user-PS", "user-JB")  # PS marked all five stains, JB two of them
# the annotations are at 50 % scale, the images at 5 %: ANHIR scales coordinates by the ratio of the scales
LESION3_ANNOTATION_SCALE = 0.1


def _lesion3_name(stain: str) -> str:
    return f"29-041-Izd2-w35-{stain}-les3"


def lesion3_landmarks(root: Path, stain: str, annotator: str = LESION3_ANNOTATORS[0]) -> np.ndarray | None:
    """One annotator's landmarks of one stain, in the 5 % image's px (None where that annotator marked none)."""
    path = root / "annotations" / LESION3 / f"{annotator}_scale-50pc" / f"{_lesion3_name(stain)}.csv"
    if not path.is_file():
        return None
    return np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)[:, 1:3] * LESION3_ANNOTATION_SCALE


def lesion3_pairs(root: Path, workdir: Path) -> list[SectionPair]:
    """Each stain of lung-lesion_3 onto its H&E (the reference), as RGB OME-TIFFs made once in ``workdir``, with the
    first annotator's landmarks. Raises FileNotFoundError, naming the folder, where ``root`` is not that repository."""
    import cv2

    from slimreg.io import write_array

    folder = root / "dataset" / LESION3 / "scale-5pc"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not found; --histology-landmarks must name a copy of "
                                "github.com/Borda/dataset-histology-landmarks")
    workdir.mkdir(parents=True, exist_ok=True)
    images = {}
    for stain in (LESION3_REFERENCE, *LESION3_STAINS):
        target = images[stain] = workdir / f"les3_{stain.split('-')[0]}.ome.tif"
        if not target.is_file():
            rgb = cv2.cvtColor(cv2.imread(str(folder / f"{_lesion3_name(stain)}.jpg")), cv2.COLOR_BGR2RGB)
            write_array(rgb, target, is_rgb=True)
    reference_points = lesion3_landmarks(root, LESION3_REFERENCE)
    return [SectionPair(f"{images[LESION3_REFERENCE].name.split('.')[0]} <- {images[stain].name.split('.')[0]}",
                        images[LESION3_REFERENCE], images[stain], reference_points, lesion3_landmarks(root, stain))
            for stain in LESION3_STAINS]


def annotator_disagreement(root: Path) -> dict[str, float]:
    """Per stain both annotators marked: the median distance (5 % px) between their landmarks of the same
    structures, the floor below which a registration's landmark error says nothing."""
    found = {}
    for stain in (LESION3_REFERENCE, *LESION3_STAINS):
        first, second = (lesion3_landmarks(root, stain, annotator) for annotator in LESION3_ANNOTATORS)
        if first is not None and second is not None:
            count = min(len(first), len(second))
            found[stain.split("-")[0]] = float(np.median(np.hypot(*(first[:count] - second[:count]).T)))
    return found


def section_pairs(workdir: Path, both_directions: bool = True, upscale: int = 1,
                  layout: str = "tiles") -> list[SectionPair]:
    """Every real section pair (H&E as reference, and the other way round with ``both_directions``); landmarks
    scaled with ``upscale`` by the centre rule."""
    images = convert_sections(workdir, upscale, layout)
    folder = SHARED_DATA / "real-sections"
    pairs = []
    for first, second in SECTION_PAIRS:
        a, b = (( _read_points(folder / f"{n}.landmarks.csv") + 0.5) * upscale - 0.5 for n in (first, second))
        count = min(len(a), len(b))  # the README: the first rows correspond
        orders = ((first, second, a, b), (second, first, b, a)) if both_directions else ((first, second, a, b),)
        for ref, mov, ref_points, mov_points in orders:
            pairs.append(SectionPair(f"{ref} <- {mov}", images[ref], images[mov], ref_points[:count],
                                     mov_points[:count]))
    return pairs


def convert_if_rounds(workdir: Path) -> list[Path]:
    """The CyCIF rounds as one-channel uint8 OME-TIFFs whose channel is named DAPI (their nuclear stain)."""
    import cv2

    from slimreg.io import write_array

    out = []
    for name in IF_ROUNDS:
        target = workdir / f"{name}.ome.tif"
        if not target.is_file():
            grey = cv2.imread(str(SHARED_DATA / "if-rounds" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
            write_array(grey, target, channel_names=["DAPI"])
        out.append(target)
    return out


def calcium_frames() -> list[Path]:
    """The two calcium frames exactly as shipped (ImageJ float32 TIFFs)."""
    return [SHARED_DATA / "calcium" / f"{name}.tif" for name in CALCIUM_FRAMES]


def landmark_errors(pull: object, pair: SectionPair) -> np.ndarray:
    """ANHIR scoring as the data's README states it: reference landmarks through the pull map, distance to the
    moving image's landmarks (moving px). ``pull`` is a Transform or None (unregistered)."""
    mapped = pair.reference_landmarks if pull is None else pull.pull(pair.reference_landmarks)  # type: ignore
    return np.hypot(*(mapped - pair.moving_landmarks).T)


def landmark_affine_fit(pair: SectionPair, least_distances: bool = False) -> np.ndarray:
    """The reference landmarks through the affine fitted to the landmark pairs themselves (moving px): the floor
    of any affine registration. Least squares, or, with ``least_distances``, the affine minimising the sum of
    distances (iteratively reweighted least squares), which a median error rewards more."""
    design = np.hstack([pair.reference_landmarks, np.ones((len(pair.reference_landmarks), 1))])
    weights = np.ones(len(design))
    for _ in range(100 if least_distances else 1):
        solution, *_ = np.linalg.lstsq(design * weights[:, None], pair.moving_landmarks * weights[:, None],
                                       rcond=None)
        residual = np.hypot(*(design @ solution - pair.moving_landmarks).T)
        weights = 1 / np.sqrt(np.maximum(residual, 1e-3))  # squared weights 1 / distance: least distances
    return design @ solution


def reference_diagonal(pair: SectionPair) -> float:
    from slimreg.io import probe

    info = probe(pair.reference)
    return float(np.hypot(info.width, info.height))

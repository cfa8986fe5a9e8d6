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

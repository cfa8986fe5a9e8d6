"""Initial alignment candidates: several detectors and a detector-free rotation search.

No single detector survives every stain pair (measured on the shared real pairs, docs/accuracy.md: SIFT
finds the kidney pair but not the lung pair, ORB neither), so every detector below proposes a similarity
fit, and a search that needs no features at all proposes more: the moving tissue's centroid is put on the
reference's, every rotation is tried, and for each FFT cross-correlation finds the shift that correlates
the edge maps best and the shift that overlaps the tissue outlines best (any offset, any angle). The caller
scores all candidates with one stain-robust measure and refines every plausible one. All matrices here are
pull maps between working frames: reference working px -> moving working px.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import fft, ndimage

from slimreg.register.preprocess import edge_map, pull_onto, to_uint8
from slimreg.resources import usable_cpus

ROTATION_STEP_DEG = 6.0  # search step; refinement absorbs half a step (3 degrees) easily
# Two scale estimates within this share of each other agree: half a rotation step moves the tissue's edge by
# sin(3 degrees), about 5 % of its radius, and a scale 5 % off moves it as far, which refinement absorbs alike.
SCALE_AGREEMENT = float(np.sin(np.radians(ROTATION_STEP_DEG / 2)))
RATIO_TEST = 0.9  # Lowe's ratio: loose, because RANSAC sorts out the rest
MIN_INLIERS = 6
# Each detector keeps its strongest keypoints up to SIFT's own cap: matching compares every pair of descriptors, so
# an image full of texture (1024 px nuclei: 14 000-17 000 FAST and BRISK keypoints at the search's 512 px) cost
# seconds per match and its description seconds per image, while a similarity has four parameters and RANSAC needs
# a few dozen true matches (docs/accuracy.md, "Eighth attempt").
MAX_KEYPOINTS = 4000
TEBLID_WINDOW = 6.25  # BoostDesc's default window for FAST's 7 px keypoints, kept when TEBLID replaced it
COUNT_ROUNDING_MARGIN = 0.25  # an FFT's overlap count this far from a whole number is not trusted to round right


@dataclass(frozen=True)
class Candidate:
    """A proposed pull matrix (reference working px -> moving working px) and where it came from."""

    name: str
    pull: np.ndarray


def _detectors() -> dict[str, Callable[[], tuple[object | None, object]]]:
    """Detector + descriptor pairs (weights-free, in opencv-contrib), each built on demand. BRISK detects, then
    describes only its strongest keypoints: detecting and describing at once described all of them (14 000-17 000
    on 512 px nuclei images), for the same descriptors of the kept ones. AKAZE and SIFT detect and describe at
    once: apart, each would build its scale space twice. FAST's corners are described by TEBLID (binary
    descriptors boosted on box averages, BoostDesc's successor) over BoostDesc's window: BoostDesc took 0.5-0.7 s
    per 512 px image, TEBLID 6 ms, and its fits matched as many inliers or more on four of the five shared pairs
    and agreed with AKAZE's on the lung pair where BoostDesc's fell 200 px off (docs/accuracy.md, "Twenty-sixth
    attempt")."""
    return {
        "akaze": lambda: (None, cv2.AKAZE_create(threshold=1e-4)),
        "sift": lambda: (None, cv2.SIFT_create(nfeatures=MAX_KEYPOINTS)),
        "brisk": lambda: (cv2.BRISK_create(thresh=10),) * 2,
        "fast+teblid": lambda: (cv2.FastFeatureDetector_create(threshold=10),
                                cv2.xfeatures2d.TEBLID_create(TEBLID_WINDOW, cv2.xfeatures2d.TEBLID_SIZE_256_BITS)),
    }


@dataclass(frozen=True)
class Described:
    """One detector's keypoints (x, y, working px) and descriptors of one image."""

    points: np.ndarray
    descriptors: np.ndarray | None


def describe(image: np.ndarray, mask: np.ndarray, mirror: bool = False) -> dict[str, Described]:
    """Every detector's keypoints and descriptors of ``image`` within ``mask`` (mirrored with ``mirror``), detected
    once so that one description serves several fits: the main search and its mirror decoy share the reference's,
    and every piece of torn tissue is fitted from one description of the whole pair (slimreg.register.pieces), so
    detection does not grow with the number of pieces (on 1024 px nuclei images detection and matching took 2-3 s
    per piece)."""
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    image8 = clahe.apply(to_uint8(image))
    if mirror:
        image8, mask = image8[:, ::-1].copy(), mask[:, ::-1].copy()
    described = {}
    for name, build in _detectors().items():
        detector, descriptor = build()
        keypoints, descriptors = _describe(detector, descriptor, image8, mask)
        described[name] = Described(np.float32([k.pt for k in keypoints]).reshape(-1, 2), descriptors)
    return described


def describe_both(reference: np.ndarray, reference_mask: np.ndarray, moving: np.ndarray,
                  moving_mask: np.ndarray) -> tuple[dict[str, Described], dict[str, Described]]:
    """``describe`` of both images side by side, OpenCV's threads split between them; the same keypoints and
    descriptors as one after the other (OpenCV's parallel loops split work, not results).

    BRISK, most of AKAZE and the keypoints' conversion to arrays run on one thread, so one after the other each
    image's single-threaded part left a core idle: the 512 px `nuclei` pair's descriptions took 1.01-1.10 s, side by
    side 0.61-1.02 s; the kidney pair's 0.54-0.56 s and 0.30-0.34 s (docs/accuracy.md, "Twenty-fourth attempt" and
    "Twenty-sixth attempt"). Both images' working memory is
    held at once (``slimreg.estimate.DESCRIBE_PER_PX``). Called where nothing else in the process uses OpenCV (the
    start of a pair's registration): the thread count is the process's, restored on return."""
    threads = cv2.getNumThreads()
    if threads < 2:
        return describe(reference, reference_mask), describe(moving, moving_mask)
    cv2.setNumThreads(threads // 2)
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="slimreg-describe") as beside:
            pending = beside.submit(describe, reference, reference_mask)
            moving_described = describe(moving, moving_mask)
            return pending.result(), moving_described
    finally:
        cv2.setNumThreads(threads)


def fit_similarity(reference: Described, moving: Described, threshold: float,
                   reference_keep: np.ndarray | None = None,
                   moving_keep: np.ndarray | None = None) -> tuple[np.ndarray, int] | None:
    """The similarity (pull matrix, reference -> moving working px) that the matches between two descriptions
    agree on (RANSAC, at least ``MIN_INLIERS`` inliers) and its inlier count, or None. ``reference_keep`` and
    ``moving_keep``: boolean masks (image-sized) of the keypoints to match, the rest being ignored."""
    ref_points, ref_descriptors = _kept(reference, reference_keep)
    mov_points, mov_descriptors = _kept(moving, moving_keep)
    if ref_descriptors is None or mov_descriptors is None or min(len(ref_points), len(mov_points)) < MIN_INLIERS:
        return None
    norm = cv2.NORM_HAMMING if ref_descriptors.dtype == np.uint8 else cv2.NORM_L2
    pairs = cv2.BFMatcher(norm).knnMatch(ref_descriptors, mov_descriptors, k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < RATIO_TEST * n.distance]
    if len(good) < MIN_INLIERS:
        return None
    src = np.float32([ref_points[m.queryIdx] for m in good])
    dst = np.float32([mov_points[m.trainIdx] for m in good])
    matrix, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=threshold,
                                                  maxIters=20000, confidence=0.9999, refineIters=50)
    if matrix is None or inliers is None or int(inliers.sum()) < MIN_INLIERS:
        return None
    return np.vstack([matrix, [0, 0, 1]]), int(inliers.sum())


def _kept(described: Described, keep: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The keypoints (and their descriptors) of ``described`` that lie where ``keep`` is set (all without it)."""
    if keep is None or described.descriptors is None or not len(described.points):
        return described.points, described.descriptors
    columns, rows = (np.rint(described.points[:, axis]).astype(int) for axis in (0, 1))
    inside = (columns >= 0) & (columns < keep.shape[1]) & (rows >= 0) & (rows < keep.shape[0])
    chosen = np.zeros(len(columns), bool)
    chosen[inside] = keep[rows[inside], columns[inside]]
    return described.points[chosen], described.descriptors[chosen]


def relocated(described: dict[str, Described], matrix: np.ndarray) -> dict[str, Described]:
    """The same keypoints and descriptors with their positions mapped by the 3x3 ``matrix`` (into another frame)."""
    return {name: Described((d.points.astype(np.float64) @ matrix[:2, :2].T + matrix[:2, 2]).astype(np.float32),
                            d.descriptors) for name, d in described.items()}


def feature_candidates(reference: np.ndarray, moving: np.ndarray, reference_mask: np.ndarray,
                       moving_mask: np.ndarray, mirror: bool = False,
                       reference_described: dict[str, Described] | None = None,
                       moving_described: dict[str, Described] | None = None) -> Iterator[Candidate]:
    """One similarity fit per detector whose matches agree (RANSAC, at least ``MIN_INLIERS`` inliers).
    ``reference_described``, ``moving_described``: the images' ``describe`` where the caller has it already (the
    moving image's unmirrored)."""
    references = reference_described or describe(reference, reference_mask)
    movings = moving_described if moving_described is not None and not mirror else describe(moving, moving_mask,
                                                                                              mirror)
    flip = np.array([[-1.0, 0, moving.shape[1] - 1], [0, 1, 0], [0, 0, 1]]) if mirror else np.eye(3)
    threshold = max(2.0, max(reference.shape) / 200)
    for name in _detectors():
        found = fit_similarity(references[name], movings[name], threshold)
        if found is not None:
            pull, inliers = found
            yield Candidate(f"{name}{' mirrored' if mirror else ''} ({inliers} inliers)", flip @ pull)


def _describe(detector: object | None, descriptor: object, image: np.ndarray,
              mask: np.ndarray) -> tuple[list, np.ndarray | None]:
    """Keypoints (the ``MAX_KEYPOINTS`` strongest) and their descriptors; ``detector`` None: the descriptor's own."""
    mask8 = mask.astype(np.uint8)
    try:
        if detector is None:
            keypoints, descriptors = descriptor.detectAndCompute(image, mask8)  # type: ignore[attr-defined]
            strongest = _strongest(keypoints)
            return [keypoints[i] for i in strongest], None if descriptors is None else descriptors[strongest]
        keypoints = detector.detect(image, mask8)  # type: ignore[attr-defined]
        return descriptor.compute(image, [keypoints[i] for i in _strongest(keypoints)])  # type: ignore[attr-defined]
    except cv2.error:
        return [], None


def _strongest(keypoints: list | tuple) -> np.ndarray:
    """Indices of the ``MAX_KEYPOINTS`` keypoints of highest response, in their detector's order."""
    if len(keypoints) <= MAX_KEYPOINTS:
        return np.arange(len(keypoints))
    responses = np.array([k.response for k in keypoints])
    return np.sort(np.argsort(-responses, kind="stable")[:MAX_KEYPOINTS])


def rotation_search(reference: np.ndarray, moving: np.ndarray, reference_mask: np.ndarray,
                    moving_mask: np.ndarray, sigma: float, mirror: bool = False, keep: int = 3,
                    step_deg: float = ROTATION_STEP_DEG, expected_scale: float | None = None) -> list[Candidate]:
    """Centroid-to-centroid, every rotation, the best FFT shifts for each: the ``keep`` best by edge correlation
    and the ``keep`` best by outline overlap (intersection over union of the tissue masks).

    The moving image is scaled by the square root of the tissue areas' ratio, so sections imaged at
    another magnification start at the right size. ``expected_scale`` (moving working px per reference working px,
    as the pixel sizes imply; the caller passes it where the two masks were found at different resolutions) is
    searched too where the two disagree by more than ``SCALE_AGREEMENT``: a tissue mask's area depends on the
    resolution it is found at where tissue is porous (a symmetric lung section read at 2/3 of its partner's
    resolution: area ratio 0.764, pixel sizes 0.667, the right pose 0.663), and pixel sizes can be missing or
    wrong, so neither estimate is trusted alone.
    """
    if not reference_mask.any() or not moving_mask.any():
        return []
    area_scale = float(np.sqrt(moving_mask.sum() / reference_mask.sum()))
    scales = [area_scale]
    if expected_scale is not None and abs(np.log(expected_scale / area_scale)) > np.log(1 + SCALE_AGREEMENT):
        scales.append(expected_scale)
    frames = _SearchFrames.of(reference_mask, edge_map(reference, sigma), edge_map(moving, sigma), moving_mask)
    found: list[Candidate] = []
    for scale in scales:  # the second scale's best of each kind only: each start costs two refinements
        found.extend(_rotation_search_at(frames, scale, mirror, keep if scale == area_scale else 1, step_deg))
    return found


@dataclass(frozen=True)
class _SearchFrames:
    """What every rotation and scale of one search shares: the reference's padded FFTs, the moving edge map and
    mask, and both tissues' centroids."""

    shape: tuple[int, int]
    padded: tuple[int, int]
    reference_mask: np.ndarray
    reference_fft: np.ndarray
    reference_mask_fft: np.ndarray
    moving_edges: np.ndarray
    moving_mask: np.ndarray
    centre_reference: np.ndarray
    centre_moving: np.ndarray
    workers: int  # FFT threads: the CPUs this process may run on, asked once per search

    @classmethod
    def of(cls, reference_mask: np.ndarray, reference_edges: np.ndarray, moving_edges: np.ndarray,
           moving_mask: np.ndarray) -> _SearchFrames:
        height, width = reference_mask.shape
        # at least twice the grid, so that no shift wraps around, and of a length the FFT factors well: a
        # 970 px side padded to 1940 = 2^2 * 5 * 97 is several times slower than 1944 = 2^3 * 3^5
        padded = (fft.next_fast_len(2 * height, real=True), fft.next_fast_len(2 * width, real=True))
        masked = reference_edges.astype(np.float32) * reference_mask
        centred = np.where(reference_mask, masked - masked[reference_mask].mean(), np.float32(0))
        workers = usable_cpus()
        return cls((height, width), padded, reference_mask, fft.rfft2(centred, padded, workers=workers),
                   fft.rfft2(reference_mask.astype(np.float32), padded, workers=workers), moving_edges, moving_mask,
                   np.array(ndimage.center_of_mass(reference_mask))[::-1],
                   np.array(ndimage.center_of_mass(moving_mask))[::-1], workers)

    def correlate(self, spectrum: np.ndarray, placed: np.ndarray) -> np.ndarray:
        """Cross-correlation, at every shift, of a reference spectrum with an image placed on the grid, in single
        precision (half the time of double; the search keeps whole-pixel shifts only)."""
        moving_spectrum = fft.rfft2(placed.astype(np.float32, copy=False), self.padded, workers=self.workers)
        np.conjugate(moving_spectrum, out=moving_spectrum)
        moving_spectrum *= spectrum
        return fft.irfft2(moving_spectrum, self.padded, workers=self.workers)

    def overlap(self, valid: np.ndarray) -> np.ndarray:
        """The count of tissue pixels the reference and a placed mask share, at every shift: rounded, so that equal
        overlaps tie exactly and the first wins, whatever rounding the FFT (its length, its threads) leaves. Single
        precision is within 0.03 of the counts at the search's size (1e5 tissue px); where the rounding is in doubt
        (over a quarter of a count off a whole number, larger masks) the correlation is made again in double."""
        counts = self.correlate(self.reference_mask_fft, valid)
        whole = np.rint(counts)
        if float(np.abs(counts - whole).max()) < COUNT_ROUNDING_MARGIN:
            return whole.astype(np.float64)  # the intersection over union as exact as the counts
        spectrum = fft.rfft2(self.reference_mask.astype(np.float64), self.padded, workers=self.workers)
        return np.rint(fft.irfft2(spectrum * np.conj(fft.rfft2(valid.astype(np.float64), self.padded,
                                                                  workers=self.workers)),
                                  self.padded, workers=self.workers))


def _rotation_search_at(frames: _SearchFrames, scale: float, mirror: bool, keep: int,
                        step_deg: float) -> list[Candidate]:
    """``rotation_search`` with the moving image at one ``scale``."""
    reference_mask, padded = frames.reference_mask, frames.padded
    min_overlap = 0.25 * reference_mask.sum()
    found: list[tuple[float, Candidate]] = []
    outlines: list[tuple[float, Candidate]] = []
    for mirrored in (False, True) if mirror else (False,):
        for degrees in np.arange(0.0, 360.0, step_deg):
            angle = np.radians(degrees)
            linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            if mirrored:
                linear = linear @ np.diag([-1.0, 1.0])
            pull = np.eye(3)
            pull[:2, :2], pull[:2, 2] = linear, frames.centre_moving - linear @ frames.centre_reference
            placed, valid = pull_onto(frames.moving_edges, frames.moving_mask, pull, frames.shape)
            if not valid.any():
                continue
            centred = np.where(valid, placed - placed[valid].mean(), 0.0)
            correlation = frames.correlate(frames.reference_fft, centred)
            overlap = frames.overlap(valid)
            label = f"{degrees:.0f} deg{' mirrored' if mirrored else ''}"
            # the shift that overlaps the two tissue outlines best (intersection over union): serial sections
            # share their outline whatever the stain shows inside it
            union = reference_mask.sum() + valid.sum() - overlap
            iy, ix = np.unravel_index(int(np.argmax(overlap / np.maximum(union, 1.0))), overlap.shape)
            outlines.append((float(overlap[iy, ix] / max(union[iy, ix], 1.0)),
                             Candidate(f"outline search {label}", _shifted(pull, iy, ix, padded))))
            correlation /= np.maximum(overlap, min_overlap)
            iy, ix = np.unravel_index(int(np.argmax(correlation)), correlation.shape)
            found.append((float(correlation[iy, ix]), Candidate(f"rotation search {label}",
                                                                _shifted(pull, iy, ix, padded))))
    return [*_distinct([c for _, c in sorted(found, key=lambda item: -item[0])], keep),
            *_distinct([c for _, c in sorted(outlines, key=lambda item: -item[0])], keep)]


def _shifted(pull: np.ndarray, iy: int, ix: int, padded: tuple[int, int]) -> np.ndarray:
    """``pull`` moved by the FFT shift at (iy, ix) of a correlation padded to ``padded`` (at least twice the grid:
    indices past the middle are negative shifts)."""
    dy, dx = (iy if iy < padded[0] // 2 else iy - padded[0]), (ix if ix < padded[1] // 2 else ix - padded[1])
    return pull @ np.array([[1.0, 0, -dx], [0, 1, -dy], [0, 0, 1]])


def _distinct(candidates: list[Candidate], keep: int) -> list[Candidate]:
    """The first ``keep`` candidates whose rotations differ by more than two search steps."""
    chosen: list[Candidate] = []
    for candidate in candidates:
        angle = np.degrees(np.arctan2(candidate.pull[1, 0], candidate.pull[0, 0]))
        if all(abs((angle - np.degrees(np.arctan2(c.pull[1, 0], c.pull[0, 0])) + 180) % 360 - 180)
               > 2 * ROTATION_STEP_DEG for c in chosen):
            chosen.append(candidate)
        if len(chosen) == keep:
            break
    return chosen

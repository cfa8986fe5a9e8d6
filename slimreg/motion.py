"""Per-frame motion estimation: a recording's template, each frame's rigid shift against it (and, piecewise, its
patches' residual shifts), frames moved back, and CaImAn's quality numbers. Frames in, numbers and frames out: the
files (which frames, written where, streamed) are slimreg.recording's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import fft, ndimage

from slimreg.errors import InputError

# 20 gives 0.05 px: measured median error 0.06 px on real frames (skimage, 20 ms per 128x256 frame) where
# cv2.phaseCorrelate's 5x5 centroid gives 0.18 px (1 ms): the target is 0.1 px, so skimage it is
UPSAMPLE = 20
# frames averaged into the template: enough to average out activity and noise, few enough to read quickly
TEMPLATE_FRAMES = 50
# NoRMCorre's defaults are 128 px patches with 64 px steps on 512 px frames: a quarter of the frame, half overlap
PATCH_FRACTION = 4
# smaller patches of a dim two-photon frame hold too few cells for a reliable peak
MIN_PATCH = 64
# a patch may move at most this far from the frame's rigid shift (NoRMCorre's max_deviation_rigid is 3)
MAX_PATCH_DEVIATION = 3.0
# a frame whose pixels spread less than this is blank (a dropped frame: all zero or one constant)
BLANK_STD = 1e-6
MODES = ("rigid", "piecewise")
# Gaussian smoothing (px) of frame and template before correlating: suite2p's default smooth_sigma, 1.15
SMOOTH_SIGMA = 1.15
# FFTs of one frame use one core: chunks are processed on one core and the benchmark compares on 2 cores
FFT_WORKERS = 1
# mirror padding (px) around a frame shifted in the Fourier domain, faded to the frame's mean across it: wide enough
# that the fade is smooth (a half cosine over 16 px rings at under 1 % of the jump it replaces), small against a frame
SHIFT_PAD = 16


@dataclass
class FrameShift:
    """One frame's estimated motion (how far its content moved from the template), and what kind of frame."""

    frame: int
    dy: float
    dx: float
    status: str = "ok"  # ok | blank | nan
    patch_dy: np.ndarray | None = None
    patch_dx: np.ndarray | None = None


def frame_status(frame: np.ndarray) -> str:
    """'nan' for a frame with non-finite pixels, 'blank' for a constant one, else 'ok': neither can be aligned."""
    if not np.isfinite(frame).all():
        return "nan"
    return "blank" if float(frame.std()) < BLANK_STD else "ok"


def estimate_shift(template: np.ndarray, frame: np.ndarray) -> tuple[float, float]:
    """(dy, dx) the frame's content moved from the template, to 1/UPSAMPLE px (cross-correlation, not phase:
    robust to the shot noise of dim two-photon frames)."""
    return shift_against(template_spectrum(template), frame)


def template_spectrum(template: np.ndarray) -> np.ndarray:
    """Conjugate FFT of the template times a Gaussian low-pass: correlating smoothed frames (as suite2p and
    NoRMCorre do) keeps single-frame shot noise from pulling the peak; applied once here, it costs nothing."""
    spectrum = np.conj(fft.fft2(template.astype(np.float32), workers=FFT_WORKERS))
    fy = fft.fftfreq(template.shape[0])[:, None]
    fx = fft.fftfreq(template.shape[1])[None, :]
    # both images smoothed by SMOOTH_SIGMA: their product's filter is the square, exp(-4 pi^2 sigma^2 f^2)
    return (spectrum * np.exp(-4 * np.pi ** 2 * SMOOTH_SIGMA ** 2 * (fy ** 2 + fx ** 2))).astype(np.complex64)


def shift_against(template_fft_conj: np.ndarray, frame: np.ndarray) -> tuple[float, float]:
    """``estimate_shift`` with the template's FFT computed once per recording, in single precision: the same
    result as skimage's phase_cross_correlation(normalization=None), at about a third of the time."""
    product = fft.fft2(frame.astype(np.float32), workers=FFT_WORKERS) * template_fft_conj
    correlation = np.abs(fft.ifft2(product, workers=FFT_WORKERS))
    peak = np.array(np.unravel_index(int(np.argmax(correlation)), correlation.shape), np.float64)
    sizes = np.array(correlation.shape)
    peak[peak > sizes // 2] -= sizes[peak > sizes // 2]
    # refine in a 1.5 px window around the integer peak by a matrix-multiply DFT (Guizar-Sicairos 2008)
    region = int(np.ceil(UPSAMPLE * 1.5))
    offset = np.trunc(region / 2.0)  # toward zero (np.fix, deprecated in numpy 2.5)
    start = offset - np.round(peak * UPSAMPLE)
    refined = np.abs(upsampled_dft(np.conj(product).astype(np.complex128), region, start))
    fine = np.array(np.unravel_index(int(np.argmax(refined)), refined.shape), np.float64)
    shift = np.round(peak * UPSAMPLE) / UPSAMPLE + (fine - offset) / UPSAMPLE
    return float(shift[0]), float(shift[1])


def upsampled_dft(data: np.ndarray, region: int, start: np.ndarray) -> np.ndarray:
    """The inverse DFT of ``data`` on a ``region``-square grid UPSAMPLE times finer, from ``start`` (in fine
    pixels): two small matrix products (skimage's _upsampled_dft, written for 2-D: 20 ms -> under 1 ms)."""
    rows, cols = data.shape
    freq_r = fft.ifftshift(np.arange(rows)) - rows // 2
    freq_c = fft.ifftshift(np.arange(cols)) - cols // 2
    kernel_r = np.exp(-2j * np.pi / (rows * UPSAMPLE) * (np.arange(region) - start[0])[:, None] * freq_r[None, :])
    kernel_c = np.exp(-2j * np.pi / (cols * UPSAMPLE) * freq_c[:, None] * (np.arange(region) - start[1])[None, :])
    return kernel_r @ data @ kernel_c


def apply_shift(frame: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """The frame moved back by (dy, dx) in the Fourier domain, which changes each spatial frequency's phase and none
    of its amplitude: the frame's noise is left as it was, as NoRMCorre's FFT shifts leave it, for the cell
    extraction and spike inference that read it next. A bicubic warp low-passes every subpixel-shifted frame: on
    the shared two-photon movie it lowered the mean image's crispness below the uncorrected mean's while raising
    each frame's correlation with the mean through the smoothing alone (docs/motion.md, "Interpolation").

    The frame is mirror-padded and the padding faded to the frame's mean, so that the FFT's periodic extension is
    continuous and no jump between opposite edges rings into the frame; the strips that come from beyond the frame
    copy the nearest row or column moved in from inside, as a replicated border would. A plane with non-finite
    pixels (another channel than the one checked) is moved by a bicubic warp instead, which keeps a NaN local
    where the FFT would spread it over the whole plane."""
    if not np.isfinite(frame).all():
        matrix = np.float32([[1, 0, -dx], [0, 1, -dy]])
        return cv2.warpAffine(frame.astype(np.float32, copy=False), matrix, frame.shape[::-1],
                              flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    pad = SHIFT_PAD
    height, width = frame.shape
    # at least SHIFT_PAD on every side, and a length the FFT factors well (512 + 32 = 2^5 * 17 is not)
    after = [fft.next_fast_len(length + 2 * pad, real=True) - length - pad for length in (height, width)]
    padded = np.pad(frame.astype(np.float32, copy=False), ((pad, after[0]), (pad, after[1])), mode="reflect")
    level = float(frame.mean())
    fade = [_fade(length, pad, extra) for length, extra in zip((height, width), after, strict=True)]
    padded = level + (padded - level) * fade[0][:, None] * fade[1][None, :]
    spectrum = fft.rfft2(padded, workers=FFT_WORKERS)
    # the phase ramp is separable: two vectors instead of an exponential per frequency
    spectrum *= np.exp(2j * np.pi * dy * fft.fftfreq(padded.shape[0])).astype(np.complex64)[:, None]
    spectrum *= np.exp(2j * np.pi * dx * fft.rfftfreq(padded.shape[1])).astype(np.complex64)[None, :]
    moved = fft.irfft2(spectrum, padded.shape, workers=FFT_WORKERS)[pad:pad + height, pad:pad + width]
    rows, cols = _inside(height, dy), _inside(width, dx)
    return np.ascontiguousarray(moved[rows][:, cols], dtype=np.float32)


def _fade(length: int, before: int, after: int) -> np.ndarray:
    """1 over the frame, falling as a half cosine to 0 across each padding: the padded frame then meets its own
    periodic copy at one level on every side."""
    def ramp(width: int) -> np.ndarray:
        return 0.5 * (1 - np.cos(np.pi * (np.arange(width) + 0.5) / width)) if width else np.zeros(0)
    return np.concatenate([ramp(before), np.ones(length), ramp(after)[::-1]]).astype(np.float32)


def _inside(length: int, shift: float) -> np.ndarray:
    """Index of each output row (column) after a move back by ``shift``: itself where it samples inside the frame,
    else the nearest one that does (output i samples input i + shift)."""
    first = min(length - 1, max(0, int(np.ceil(-shift))))
    last = max(first, min(length - 1, int(np.floor(length - 1 - shift))))
    return np.clip(np.arange(length), first, last)


def build_template(frame_at: Callable[[int], np.ndarray], total: int, path: Path,
                   count: int = TEMPLATE_FRAMES) -> np.ndarray:
    """Mean of a spread-out subset of good frames, each re-registered to that mean and averaged again (once).

    ``frame_at(i)``: frame ``i`` of ``total`` (the registration channel, float32); ``path`` names the recording
    in the error raised when every sampled frame is blank or NaN. Frames are read twice rather than held: memory
    is a few frames whatever ``count`` (slimreg.kinds.template's estimate)."""
    picks = np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(int))
    good, total_sum = [], None
    for index in picks:
        frame = frame_at(int(index))
        if frame_status(frame) == "ok":
            good.append(int(index))
            total_sum = frame.astype(np.float64) if total_sum is None else total_sum + frame
    if total_sum is None:
        raise InputError("every frame sampled for the template is blank or NaN.", path=path,
                         fix="check the recording: it holds no image to align its frames to.")
    first = (total_sum / len(good)).astype(np.float32)
    aligned = np.zeros(first.shape, np.float64)
    for index in good:
        frame = frame_at(index)
        aligned += apply_shift(frame, *estimate_shift(first, frame))
    return (aligned / len(good)).astype(np.float32)


@dataclass
class PatchGrid:
    """Overlapping patches (NoRMCorre-style) and the per-pixel interpolation of their shifts."""

    shape: tuple[int, int]
    size: int
    stride: int
    starts_y: list[int]
    starts_x: list[int]

    @classmethod
    def for_shape(cls, shape: tuple[int, int]) -> PatchGrid:
        size = max(MIN_PATCH, min(shape) // PATCH_FRACTION)
        stride = size // 2
        starts = [_starts(length, size, stride) for length in shape]
        return cls(shape, size, stride, starts[0], starts[1])

    def patch_shifts(self, template: np.ndarray, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each patch's (dy, dx) residual after the rigid shift, clipped to MAX_PATCH_DEVIATION."""
        dy = np.zeros((len(self.starts_y), len(self.starts_x)), np.float32)
        dx = np.zeros_like(dy)
        for i, y in enumerate(self.starts_y):
            for j, x in enumerate(self.starts_x):
                t = template[y:y + self.size, x:x + self.size]
                f = frame[y:y + self.size, x:x + self.size]
                if float(f.std()) < BLANK_STD or float(t.std()) < BLANK_STD:
                    continue  # nothing to align in a flat patch: it follows the rigid shift
                dy[i, j], dx[i, j] = estimate_shift(t, f)
        return np.clip(dy, -MAX_PATCH_DEVIATION, MAX_PATCH_DEVIATION), np.clip(
            dx, -MAX_PATCH_DEVIATION, MAX_PATCH_DEVIATION)

    def field(self, grid: np.ndarray) -> np.ndarray:
        """Patch values (at patch centres) interpolated bilinearly to every pixel, held flat past the outer
        centres: a smooth field with no step at patch borders."""
        ys = (np.arange(self.shape[0]) - (self.starts_y[0] + self.size / 2 - 0.5)) / self.stride
        xs = (np.arange(self.shape[1]) - (self.starts_x[0] + self.size / 2 - 0.5)) / self.stride
        gy, gx = np.meshgrid(np.clip(ys, 0, grid.shape[0] - 1), np.clip(xs, 0, grid.shape[1] - 1), indexing="ij")
        return ndimage.map_coordinates(grid, [gy, gx], order=1, mode="nearest").astype(np.float32)


def _starts(length: int, size: int, stride: int) -> list[int]:
    """Patch starts covering [0, length): every ``stride``, the last one flush with the edge."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    return starts if starts[-1] == length - size else [*starts, length - size]


def piecewise_shifts(frame: np.ndarray, template: np.ndarray, grid: PatchGrid, dy: float,
                     dx: float) -> tuple[np.ndarray, np.ndarray]:
    """Each patch's residual shift once the frame is moved back by its rigid (dy, dx)."""
    return grid.patch_shifts(template, apply_shift(frame, dy, dx))


def apply_frame_shift(frame: np.ndarray, shift: FrameShift, grid: PatchGrid | None) -> np.ndarray:
    """The frame (any channel of it) moved back by its shift: rigid (``apply_shift``), or rigid and then its patch
    residuals interpolated to a per-pixel field and applied by cv2.remap with the Lanczos kernel, which of OpenCV's
    kernels smooths least. Blank and NaN frames are returned as they are."""
    if shift.status != "ok":
        return frame
    moved = apply_shift(frame, shift.dy, shift.dx)
    if grid is None or shift.patch_dy is None or shift.patch_dx is None:
        return moved
    rows, cols = np.indices(frame.shape, dtype=np.float32)
    return cv2.remap(moved, cols + grid.field(shift.patch_dx), rows + grid.field(shift.patch_dy),
                     cv2.INTER_LANCZOS4, borderMode=cv2.BORDER_REPLICATE)


def frame_shifts(frames: np.ndarray, start: int, template_fft_conj: np.ndarray, template: np.ndarray,
                 grid: PatchGrid | None) -> list[FrameShift]:
    """Each frame's shift against the template (and its patch residuals with a grid); blank and NaN frames get 0."""
    shifts = []
    for k, frame in enumerate(frames):
        status = frame_status(frame)
        if status != "ok":
            shifts.append(FrameShift(start + k, 0.0, 0.0, status))
            continue
        dy, dx = shift_against(template_fft_conj, frame)
        patches = piecewise_shifts(frame, template, grid, dy, dx) if grid is not None else (None, None)
        shifts.append(FrameShift(start + k, dy, dx, status, *patches))
    return shifts


def crispness(image: np.ndarray) -> float:
    """CaImAn's crispness: Frobenius norm of the mean image's gradient magnitude (higher = sharper)."""
    gy, gx = np.gradient(image.astype(np.float64))
    return float(np.linalg.norm(np.hypot(gy, gx)))


def correlations_with(mean: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Pearson correlation of each of ``frames`` with ``mean`` (NaN for a flat or non-finite frame): the mean centred
    and normalised once, each frame by one dot product, in float64 sums (np.corrcoef per frame, which copies both
    to float64 and builds a covariance matrix, took 15 % of a 512 px recording's correction)."""
    reference = mean.astype(np.float64).ravel()
    out = np.full(len(frames), np.nan)
    if not np.isfinite(reference).all():
        return out
    reference -= reference.mean()
    norm = float(np.linalg.norm(reference))
    if norm == 0:
        return out
    reference /= norm
    for index, frame in enumerate(frames):
        values = frame.ravel().astype(np.float64)
        if not np.isfinite(values).all():
            continue
        centred = values - values.mean()
        spread = float(np.linalg.norm(centred))
        if spread > 0:
            out[index] = float(np.dot(centred, reference)) / spread
    return out

"""Regular-step gradient descent on the correlation of two images, over an affine or similarity pose.

The algorithm of slimreg's SimpleITK refinements (``ImageRegistrationMethod`` with the correlation metric, a fixed
mask, linear interpolation, ``RegularStepGradientDescent`` and scales from physical shift), written with NumPy and
OpenCV; the pose search, its mirror decoy's and the polish run it (slimreg.register.refine). Per level the fixed
image's sample points (its grid shrunk by the level's factor, those on the mask) and their offsets from the centre
are found once, so an iteration is one interpolation of the moving image and its gradient at the mapped points and
a few small matrix products, where ITK walks every point of the domain through virtual calls: 3.1 ms against
16.4 ms per iteration on 183 000 points. From the same start it lands where ITK lands, within 0.02 px on a known
pose (tests/test_regular_step.py); on real pairs, whose optima are flat, the search's winners land a fraction of a
pixel apart (docs/accuracy.md, "Seventh attempt").

What is kept from ITK, because the search's capture and stopping depend on it:
- per level, both images smoothed at full resolution (Gaussian, sigma ``log2(shrink)`` px), the fixed image sampled
  on its grid shrunk by ``shrink`` (ITK's ``ShrinkImageFilter`` geometry), the moving gradient a Gaussian
  derivative of sigma 1 px of the smoothed moving image;
- samples whose mapped point leaves the moving image do not count (the caller pads it with zeros where they should);
- the metric ``-(sum f m)^2 / (sum f^2 sum m^2)`` over values centred on the counted samples, and its derivative;
- parameter scales: the squared largest shift of the domain's corners per unit of each parameter;
- steps of fixed length along the scaled gradient, shortened by ``relaxation`` when the direction turns back,
  stopping at ``iterations``, at a step below ``min_step`` or at a scaled gradient below ``gradient_tolerance``
  (that last rule ends most runs).
"""

from __future__ import annotations

import contextlib
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

GRADIENT_SIGMA = 1.0  # px: ITK's default for the moving image's gradient (its pixel spacing)
REMAP_WIDTH = 1024  # sample points per row of the maps handed to OpenCV
# samples per pass of an iteration: its buffers (about 100 bytes per sample) stay near 13 MB at any image size, and
# the search's levels (up to about 70 000 samples at 512 px) take one pass
CHUNK = 128 * REMAP_WIDTH
SCALE_VARIATION = 0.01  # the parameter change whose shift sets a parameter's scale (ITK's default)


class NoOverlap(RuntimeError):
    """Every sample point mapped outside the moving image: no pose can be scored from here."""


@dataclass
class Pose:
    """An affine pose about ``centre``: x -> matrix (x - centre) + centre + translation (ITK's parametrisation).
    ``similarity``: parameters are (scale, angle, tx, ty) instead of the matrix's four entries and (tx, ty)."""

    matrix: np.ndarray
    translation: np.ndarray
    centre: np.ndarray
    similarity: bool = False

    def parameters(self) -> np.ndarray:
        if self.similarity:
            scale = float(np.sqrt(abs(np.linalg.det(self.matrix))))
            angle = float(np.arctan2(self.matrix[1, 0], self.matrix[0, 0]))
            return np.array([scale, angle, *self.translation])
        return np.concatenate([self.matrix.ravel(), self.translation])

    def with_parameters(self, values: np.ndarray) -> Pose:
        if self.similarity:
            scale, angle = values[0], values[1]
            matrix = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            return Pose(matrix, np.asarray(values[2:4], float), self.centre, True)
        return Pose(np.asarray(values[:4], float).reshape(2, 2), np.asarray(values[4:6], float), self.centre, False)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) x, y points mapped."""
        return (points - self.centre) @ self.matrix.T + self.centre + self.translation

    def chain(self, affine_gradient: np.ndarray) -> np.ndarray:
        """The gradient over this pose's parameters from one over (a00, a01, a10, a11, tx, ty)."""
        if not self.similarity:
            return affine_gradient
        scale, angle = self.parameters()[:2]
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        turning = scale * np.array([[-np.sin(angle), -np.cos(angle)], [np.cos(angle), -np.sin(angle)]])
        by_matrix = affine_gradient[:4].reshape(2, 2)
        return np.array([np.sum(by_matrix * rotation), np.sum(by_matrix * turning), *affine_gradient[4:]])


def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    image = np.ascontiguousarray(image, dtype=np.float32)
    if sigma <= 0:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)


def _gradient(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d/dx and d/dy of ``image`` by a derivative of a Gaussian of sigma 1 px, as ITK's default moving-image gradient
    (a recursive Gaussian) takes them: a blur and then central differences gave a slope that disagrees with the
    interpolated values, and the descent stopped 0.12 px from a pose it otherwise finds to 0.01 px
    (tests/test_regular_step.py)."""
    radius = math.ceil(4 * GRADIENT_SIGMA)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    gaussian = np.exp(-0.5 * (offsets / GRADIENT_SIGMA) ** 2)
    gaussian /= gaussian.sum()
    # OpenCV correlates: the kernel x g(x) / sigma^2 is minus the Gaussian's derivative, i.e. the derivative taken
    derivative = offsets * gaussian / GRADIENT_SIGMA**2
    smooth = np.ascontiguousarray(image, dtype=np.float32)
    gaussian32, derivative32 = gaussian.astype(np.float32), derivative.astype(np.float32)
    along_x = cv2.sepFilter2D(smooth, -1, derivative32, gaussian32, borderType=cv2.BORDER_REPLICATE)
    along_y = cv2.sepFilter2D(smooth, -1, gaussian32, derivative32, borderType=cv2.BORDER_REPLICATE)
    return along_x, along_y


def _shrunk_grid(shape: tuple[int, int], shrink: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column positions (full-resolution pixels) of the grid ITK's ShrinkImageFilter makes: every
    ``shrink``-th pixel, the grid centred on the image."""
    axes = []
    for length in shape:
        count = max(1, length // shrink)
        offset = ((length - 1) - (count - 1) * shrink) / 2.0
        axes.append(offset + shrink * np.arange(count, dtype=np.float64))
    return axes[0], axes[1]


def _sample(image: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Bilinear values of ``image`` (H, W, C) at the points, border pixels repeated beyond it, as (N, C) float32.
    OpenCV places the points to 1/32 px (its interpolation table), far finer than a pose needs here, at a quarter
    of the time of exact weights in NumPy."""
    count = xs.size
    rows = max(1, -(-count // REMAP_WIDTH))  # OpenCV's remap takes maps under 32767 a side
    map_x = np.zeros(rows * REMAP_WIDTH, np.float32)
    map_y = np.zeros(rows * REMAP_WIDTH, np.float32)
    map_x[:count], map_y[:count] = xs, ys
    out = cv2.remap(image, map_x.reshape(rows, REMAP_WIDTH), map_y.reshape(rows, REMAP_WIDTH), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(rows * REMAP_WIDTH, -1)[:count]


class _ChunkBuffers:
    """One pass's buffers for up to ``size`` samples: the mapped points (float64, and as OpenCV's maps), the moving
    values and, in rows, gradients x fixed, gradients x moving and the gradients (d/dx, d/dy each), so that one
    matrix product forms every sum of gradient x offset."""

    def __init__(self, size: int) -> None:
        self.mapped = np.empty((2, size))
        map_rows = max(1, -(-size // REMAP_WIDTH))  # OpenCV's remap takes maps under 32767 a side
        self.map_x = np.zeros((map_rows, REMAP_WIDTH), np.float32)
        self.map_y = np.zeros((map_rows, REMAP_WIDTH), np.float32)
        self.moving_values = np.empty(size)
        self.products = np.empty((6, size))


class _ChunkSums(NamedTuple):
    """One chunk's share of an iteration's sums (``by_offset``: rows as ``_ChunkBuffers.products``, columns dx, dy,
    1)."""

    counted: int
    sum_f: float
    sum_ff: float
    sum_m: float
    sum_mm: float
    sum_fm: float
    by_offset: np.ndarray


class _Level:
    """One resolution: the fixed samples on the mask (centred on their mean) and their offsets from the pose's
    centre, the smoothed moving image and its gradient. An iteration walks the samples ``CHUNK`` at a time and keeps
    only sums, so its buffers are a few MB at any size: held for every sample at once, they cost 154 bytes per pixel
    of a polish at 2048 x 1536 px, over what the plan budgets (docs/accuracy.md, "Fifteenth attempt"); now 32 (the
    offsets and the fixed values). The buffers are reused from one iteration to the next: arrays allocated afresh at
    each of thousands of iterations cost more in page faults than the arithmetic (1.6 ms per iteration against 0.8 ms
    with them, at 62 000 points)."""

    def __init__(self, fixed: np.ndarray, mask: np.ndarray, moving: np.ndarray, moving_origin: float, shrink: int,
                 centre: np.ndarray, pool: ThreadPoolExecutor | None = None, threads: int = 1) -> None:
        sigma = float(np.log2(shrink)) if shrink > 1 else 0.0
        rows, cols = _shrunk_grid(fixed.shape, shrink)
        on_mask = mask[np.ix_(np.clip(np.rint(rows).astype(int), 0, mask.shape[0] - 1),
                              np.clip(np.rint(cols).astype(int), 0, mask.shape[1] - 1))] > 0
        row_index, column_index = np.nonzero(on_mask)
        del on_mask
        count = self.count = row_index.size
        smooth_fixed = _smooth(fixed, sigma)[..., None]
        samples = np.empty(count)
        for start in range(0, count, CHUNK):
            chunk = slice(start, min(count, start + CHUNK))
            samples[chunk] = _sample(smooth_fixed, cols[column_index[chunk]], rows[row_index[chunk]])[:, 0]
        self.offsets = np.empty((3, count))  # rows dx, dy, 1
        self.offsets[0], self.offsets[1] = cols[column_index] - centre[0], rows[row_index] - centre[1]
        self.offsets[2] = 1.0
        # each chunk's box of offsets: where the pose maps its four corners inside the moving image, every sample of
        # the chunk lies inside too (the image is a rectangle, so convex), and the chunk needs no test per sample
        self.chunk_corners = [_box_corners(self.offsets[:2, start:start + CHUNK]) for start in range(0, count, CHUNK)]
        del row_index, column_index, smooth_fixed
        if count:  # centred on every sample: where some fall off the moving image, the sums centre on those left
            samples -= samples.mean()
        self.fixed = samples
        smooth_moving = _smooth(moving, sigma)
        self.moving = np.dstack([smooth_moving, *_gradient(smooth_moving)])
        del smooth_moving
        self.origin = moving_origin
        self.limit = (moving.shape[1] - 0.5, moving.shape[0] - 0.5)
        self.corners = np.stack([cols[[0, 0, -1, -1]], rows[[0, -1, 0, -1]]], axis=1)
        self.chunk_starts = range(0, count, CHUNK)
        # the chunks spread over ``threads`` of ``pool``, each thread with its own buffers, reused from pass to pass
        workers = min(threads, len(self.chunk_starts)) if pool is not None else 1
        self.pool = pool if workers > 1 else None
        self.buffers = [_ChunkBuffers(min(count, CHUNK)) for _ in range(workers)]

    def value_and_gradient(self, pose: Pose) -> tuple[float, np.ndarray]:
        """ITK's correlation metric (lower is better) and its descent direction over (a00, a01, a10, a11, tx, ty).

        Over the counted samples K (those whose mapped point lies on the moving image), with f and m centred on K:
        sum f m, sum f^2, sum m^2 and the sums of gradient x value x offset, each expanded into plain sums (sum f m -
        |K| mean f mean m, ...) so that one pass over the chunks finds them."""
        affine = np.empty((2, 3))
        affine[:, :2] = pose.matrix
        affine[:, 2] = pose.centre + pose.translation - self.origin
        counted = 0
        sum_f = sum_ff = sum_m = sum_mm = sum_fm = 0.0
        # rows d/dx, d/dy; columns dx, dy, 1: the sums of gradient x offset, times the fixed or the moving value
        by_fixed, by_moving, by_gradient = np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 3))
        # added in the chunks' order, wherever each was summed: the same sums as one after the other
        for chunk in self._chunk_sums(affine):
            if chunk is None:
                continue
            counted += chunk.counted
            sum_f += chunk.sum_f
            sum_ff += chunk.sum_ff
            sum_m += chunk.sum_m
            sum_mm += chunk.sum_mm
            sum_fm += chunk.sum_fm
            by_fixed += chunk.by_offset[0:2]
            by_moving += chunk.by_offset[2:4]
            by_gradient += chunk.by_offset[4:6]
        if counted == 0:
            raise NoOverlap("all sample points map outside the moving image")
        mean_f, mean_m = sum_f / counted, sum_m / counted
        fm = sum_fm - counted * mean_f * mean_m
        f2 = sum_ff - counted * mean_f * mean_f
        m2 = sum_mm - counted * mean_m * mean_m
        if f2 * m2 <= np.finfo(np.float64).eps:
            return 0.0, np.zeros(6)
        by_fixed -= mean_f * by_gradient
        by_moving -= mean_m * by_gradient
        fdm = np.array([*by_fixed[0, :2], *by_fixed[1, :2], by_fixed[0, 2], by_fixed[1, 2]])
        mdm = np.array([*by_moving[0, :2], *by_moving[1, :2], by_moving[0, 2], by_moving[1, 2]])
        return -fm * fm / (f2 * m2), 2.0 * fm / (f2 * m2) * (fdm - fm / m2 * mdm)

    def _chunk_sums(self, affine: np.ndarray) -> list[_ChunkSums | None]:
        """Every chunk's sums, in order (None: the chunk lies wholly off the moving image); with ``pool``, the
        chunks dealt out to its threads in turn, each thread with its own buffers."""
        if self.pool is None:
            return [self._sums_of(affine, index, self.buffers[0]) for index in range(len(self.chunk_starts))]
        workers = len(self.buffers)

        def dealt(worker: int) -> list[_ChunkSums | None]:
            return [self._sums_of(affine, index, self.buffers[worker])
                    for index in range(worker, len(self.chunk_starts), workers)]

        by_worker = list(self.pool.map(dealt, range(workers)))
        return [by_worker[index % workers][index // workers] for index in range(len(self.chunk_starts))]

    def _sums_of(self, affine: np.ndarray, index: int, buffers: _ChunkBuffers) -> _ChunkSums | None:
        """One chunk's sums over its samples on the moving image (None where it has none)."""
        start = self.chunk_starts[index]
        size = min(self.count, start + CHUNK) - start
        offsets = self.offsets[:, start:start + size]
        mapped = np.matmul(affine, offsets, out=buffers.mapped[:, :size])  # moving pixels, x and y rows
        corners = affine @ self.chunk_corners[index]
        inside = None
        if not (corners[0].min() >= -0.5 and corners[1].min() >= -0.5 and corners[0].max() < self.limit[0]
                and corners[1].max() < self.limit[1]):
            inside = ((mapped[0] >= -0.5) & (mapped[0] < self.limit[0]) & (mapped[1] >= -0.5)
                      & (mapped[1] < self.limit[1]))
            if not inside.any():
                return None
        rows = -(-size // REMAP_WIDTH)
        buffers.map_x.reshape(-1)[:size] = mapped[0]
        buffers.map_y.reshape(-1)[:size] = mapped[1]
        # OpenCV places the points to 1/32 px (its interpolation table), far finer than a pose needs here
        values = cv2.remap(self.moving, buffers.map_x[:rows], buffers.map_y[:rows], cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE).reshape(-1, 3)[:size].T  # value, d/dx, d/dy
        fixed = self.fixed[start:start + size]
        products = buffers.products[:, :size]
        moving, gradients = buffers.moving_values[:size], products[4:6]
        np.copyto(moving, values[0])
        np.copyto(gradients, values[1:3])
        if inside is None:
            counted = size
            sum_f = float(fixed.sum())
            sum_ff = float(fixed @ fixed)
        else:  # the samples off the moving image count as zeros in every sum
            weight = inside.astype(np.float64)
            moving *= weight
            gradients *= weight
            weighted_fixed = fixed * weight
            counted = int(np.count_nonzero(inside))
            sum_f = float(weighted_fixed.sum())
            sum_ff = float(weighted_fixed @ fixed)
        np.multiply(gradients, fixed, out=products[0:2])
        np.multiply(gradients, moving, out=products[2:4])
        return _ChunkSums(counted, sum_f, sum_ff, float(moving.sum()), float(moving @ moving), float(fixed @ moving),
                          products @ offsets.T)

    def scales(self, pose: Pose) -> np.ndarray:
        """Per parameter, the squared largest shift of the domain's corners per unit change (ITK's physical shift
        estimate, from a change of ``SCALE_VARIATION``)."""
        base = pose.parameters()
        here = pose.apply(self.corners)
        out = np.empty(base.size)
        for index in range(base.size):
            moved = base.copy()
            moved[index] += SCALE_VARIATION
            shift = float(np.max(np.linalg.norm(pose.with_parameters(moved).apply(self.corners) - here, axis=1)))
            out[index] = (shift / SCALE_VARIATION) ** 2
        positive = out[out > np.finfo(float).eps]
        out[out <= np.finfo(float).eps] = positive.min() if positive.size else 1.0
        return out


def regular_step_descent(fixed: np.ndarray, mask: np.ndarray, moving: np.ndarray, moving_origin: float,
                         pose: Pose, shrink_factors: tuple[int, ...], iterations: int, learning_rate: float = 1.0,
                         min_step: float = 1e-4, relaxation: float = 0.7,
                         gradient_tolerance: float = 1e-4, threads: int = 1) -> Pose:
    """``pose`` refined coarse to fine (module docstring), every masked pixel of each level sampled.
    ``moving_origin``: the position, in fixed pixels, of the moving image's first pixel (negative where the caller
    padded it). Raises ``NoOverlap`` where no sample point lands on the moving image, as ITK raises. ``threads``:
    how many threads a level of more than one chunk (``CHUNK``) spreads its chunks over; the sums, and so the pose,
    are the same for any number (they are added in the chunks' order)."""
    spread = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="slimreg-chunks") if threads > 1 else None
    with spread if spread is not None else contextlib.nullcontext():
        for shrink in shrink_factors:
            level = _Level(fixed, mask, moving, moving_origin, shrink, pose.centre, spread, threads)
            if not level.count:
                raise NoOverlap("the mask has no pixel at this level")
            scales = level.scales(pose)
            relax, previous = 1.0, None
            for _ in range(iterations):
                direction = level.value_and_gradient(pose)[1]
                scaled = pose.chain(direction) / scales
                magnitude = float(np.linalg.norm(scaled))
                if magnitude < gradient_tolerance:
                    break
                # ITK keeps the previous step's scaled gradient and scales it once more before comparing directions
                if previous is not None and float(scaled @ (previous / scales)) < 0:
                    relax *= relaxation
                step = relax * learning_rate
                if step < min_step:
                    break
                pose = pose.with_parameters(pose.parameters() + scaled * (step / magnitude))
                previous = scaled
            del level  # before the next level is built: the finest holds most
    return pose


def _box_corners(offsets: np.ndarray) -> np.ndarray:
    """The four corners (columns; rows x, y, 1) of the box around ``offsets`` (rows x, y)."""
    (low_x, low_y), (high_x, high_y) = offsets.min(axis=1), offsets.max(axis=1)
    return np.array([[low_x, high_x, low_x, high_x], [low_y, low_y, high_y, high_y], [1.0] * 4])

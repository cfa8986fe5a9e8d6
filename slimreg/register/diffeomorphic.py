"""A diffeomorphic field between the affinely placed pair: greedy registration with local normalised
cross-correlation, coarse to fine, as Greedy (the registration core of UPENN's HistoReg, second in ANHIR) runs it.

The flow fields of slimreg.register.fields follow the motion an optical-flow estimator sees (DIS, DeepFlow) and are
then smoothed over 2-8 % of the image, so they move whole regions and leave the structure inside them where the
affine put it. Greedy instead climbs the local correlation of every neighbourhood at once, under two Gaussian
regularisers: one on each update (fluid) and one on the accumulated field (diffusion), with each update composed
onto the field so far (ANCHORS.md: heavy smoothing, then diffeomorphic registration with local NCC after a robust
affine). Local NCC compares each neighbourhood's pattern, not its brightness, so it holds across stains on the
optical-density grey.

Greedy itself (the `picsl-greedy` wheel) gave different fields for the same input from one run to the next (its
issue 51: no seed can be set; on the kidney pair the landmark median moved by 0.2 px between runs), so the same
iteration is written here with OpenCV: box filters for the local sums, `remap` for the warps, its Gaussian for the
regularisers. Every scale is a share of the working image's edge sigma (slimreg.register.preprocess.edge_sigma: a
fixed share of the long side), so the field is as fine, relative to the tissue, at every working size.
"""

from __future__ import annotations

import cv2
import numpy as np

from slimreg.register.preprocess import blur

# The neighbourhood local NCC compares: 1.5 edge sigmas, about the size of the structures the edge maps keep.
NCC_RADIUS_SIGMAS = 1.5
# The two regularisers: each update smoothed by one edge sigma (fluid), the accumulated field by about a third of
# one (diffusion); finer follows noise, coarser leaves the local deformation.
UPDATE_SMOOTHING_SIGMAS = 1.0
FIELD_SMOOTHING_SIGMAS = 0.375
# Iterations per level, the coarsest (4x shrunk) first; Greedy's 100x50x10. A fourth, coarser level moved the
# landmarks of the shared pairs further from where the affine left them, not closer.
ITERATIONS = (100, 50, 10)
STEP_PX = 1.0  # the largest move of one update, in px of its level (Greedy's epsilon)
# A level's last steps halve it down to the 1/32 px OpenCV's remap resolves: 1/2, 1/4, ... 1/32
SETTLING_STEPS = 5
# Below this share of its window's mean variance, a neighbourhood is flat (glass): its correlation is left out.
FLAT_VARIANCE = 1e-4


def greedy_flow(reference: np.ndarray, placed: np.ndarray, sigma: float) -> np.ndarray:
    """The flow (working px, (height, width, 2), x then y; the placed image is pulled at x + flow(x)) that raises
    the local NCC of ``placed`` with ``reference`` (two float grey images of one grid), edge-smoothing ``sigma``.

    Memory: about 23 float32 images of the working size at the finest level (90 B per px)."""
    height, width = reference.shape
    radius = max(1, round(NCC_RADIUS_SIGMAS * sigma))
    flow = np.zeros((1, 1, 2), np.float32)
    for level, iterations in enumerate(ITERATIONS):
        shrink = 2 ** (len(ITERATIONS) - 1 - level)
        size = (max(1, round(width / shrink)), max(1, round(height / shrink)))
        fixed, moving = (_shrunk(image, size) for image in (reference, placed))
        # the field so far, on this level's grid and in its px
        flow = cv2.resize(flow, size, interpolation=cv2.INTER_LINEAR) * np.float32(
            size[0] / flow.shape[1] if level else 0.0)
        flow = _climb(fixed, moving, flow, radius, sigma, iterations)
    return flow


def _shrunk(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    image = np.ascontiguousarray(image, np.float32)
    return image if size == (image.shape[1], image.shape[0]) else cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _climb(fixed: np.ndarray, moving: np.ndarray, flow: np.ndarray, radius: int, sigma: float,
           iterations: int) -> np.ndarray:
    """``iterations`` greedy steps at one level: the local NCC's gradient, smoothed (fluid), scaled so that nothing
    moves more than the step, composed onto the field, which is then smoothed (diffusion).

    The step is Greedy's fixed one (``STEP_PX``), and the level's last ``SETTLING_STEPS`` halve it each (with the
    fixed step alone the field circles the optimum); the level is kept only if it raised the mean local NCC. So the
    field depends smoothly on the images: undoing each step after which the mean local NCC fell, and halving the
    step then, made it a chain of yes-or-no decisions on an objective that is flat near its optimum, and an affine
    moved by 0.01 px moved the shared pairs' landmark medians by up to 0.31 px. On an aligned pair every level lowers
    it, and no field is left (docs/accuracy.md, "Thirty-first attempt")."""
    height, width = fixed.shape
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    window = (2 * radius + 1, 2 * radius + 1)
    count = float(window[0] * window[1])

    def local_sum(image: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(image, -1, window, normalize=False, borderType=cv2.BORDER_REFLECT)

    gradient_x = cv2.Sobel(moving, cv2.CV_32F, 1, 0, ksize=1, scale=0.5, borderType=cv2.BORDER_REPLICATE)
    gradient_y = cv2.Sobel(moving, cv2.CV_32F, 0, 1, ksize=1, scale=0.5, borderType=cv2.BORDER_REPLICATE)
    # one remap moves the image and both its gradients (the same weights for every channel)
    moving_and_gradients = np.dstack([moving, gradient_x, gradient_y])
    del gradient_x, gradient_y
    sum_fixed = local_sum(fixed)
    variance_fixed = local_sum(fixed * fixed) - sum_fixed * sum_fixed / count
    flat = np.float32(FLAT_VARIANCE * max(float(variance_fixed.mean()), 1e-12))
    settling = STEP_PX * 0.5 ** np.arange(1, SETTLING_STEPS + 1)
    steps = np.concatenate([np.full(max(0, iterations - SETTLING_STEPS), STEP_PX), settling])[-iterations:]
    start, start_value = flow, -np.inf
    # every array is freed once its last use is past and the sums are formed in place (the same operations in the same
    # order, so the same field): the two directions run side by side (slimreg.register.fields), so this peak is held
    # twice, and the step fell from 129 to 90 B per px (docs/memory-model.md)
    for iteration in range(iterations + 1):  # the last pass only judges the level
        moved = cv2.remap(moving_and_gradients, grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
        warped, warped_gradients = np.ascontiguousarray(moved[..., 0]), moved[..., 1:]
        sum_warped = local_sum(warped)
        variance_warped = local_sum(warped * warped) - sum_warped * sum_warped / count
        covariance = local_sum(fixed * warped) - sum_fixed * sum_warped / count
        invalid = ~((variance_fixed > flat) & (variance_warped > flat))
        denominator = variance_fixed * variance_warped + flat * flat
        if iteration in (0, iterations):
            # the mean over windows of the squared correlation cov^2 / (var_f var_w), flat windows counted as 0
            squared = covariance * covariance
            squared /= denominator
            squared[invalid] = 0
            value = float(np.mean(squared))
            del squared
            if iteration == iterations:
                return flow if value > start_value else start
            start_value = value
        # each window's squared correlation, differentiated by every warped pixel in it, and summed over the windows
        # that hold the pixel (box filters S of per-window terms):
        #   fixed * S(alpha) - S(alpha * sum_fixed / count) - warped * S(beta) + S(beta * sum_warped / count)
        # with alpha = 2 cov / denominator and beta = alpha cov / (var_w + flat), both 0 on flat windows
        alpha = covariance * 2
        alpha /= denominator
        alpha[invalid] = 0
        beta = alpha * covariance
        variance_warped += flat
        beta /= variance_warped
        beta[invalid] = 0
        del covariance, denominator, variance_warped, invalid
        by_pixel = local_sum(alpha)
        by_pixel *= fixed
        alpha *= sum_fixed
        alpha /= count
        by_pixel -= local_sum(alpha)
        del alpha
        term = local_sum(beta)
        term *= warped
        by_pixel -= term
        beta *= sum_warped
        beta /= count
        by_pixel += local_sum(beta)
        del beta, term, sum_warped, warped
        # both bands at once: OpenCV filters and remaps each channel as it would the band alone
        update = blur(by_pixel[..., None] * warped_gradients, UPDATE_SMOOTHING_SIGMAS * sigma)
        del by_pixel, warped_gradients, moved
        longest = float(np.sqrt((update[..., 0] * update[..., 0] + update[..., 1] * update[..., 1]).max()))
        if longest <= 0:
            break
        update *= np.float32(steps[iteration] / longest)
        # compose: the field so far read where the update points, plus the update
        flow = cv2.remap(flow, grid_x + update[..., 0], grid_y + update[..., 1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
        flow += update
        del update
        flow = blur(flow, FIELD_SMOOTHING_SIGMAS * sigma)
    return flow

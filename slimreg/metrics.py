"""Similarity measures shared by registration (accepting a refinement) and QC (judging a result)."""

from __future__ import annotations

import numpy as np


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Normalised cross-correlation of two images over ``mask`` (NaN when fewer than 10 pixels)."""
    x, y = a[mask].astype(np.float64), b[mask].astype(np.float64)
    if x.size < 10:
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else float("nan")


def mutual_information(a: np.ndarray, b: np.ndarray, mask: np.ndarray, bins: int = 64) -> float:
    """Mutual information in bits of two 0..1 images over ``mask`` (a joint histogram of ``bins`` levels)."""
    if mask.sum() < 10:
        return float("nan")
    joint, _, _ = np.histogram2d(a[mask], b[mask], bins=bins, range=[[0, 1], [0, 1]])
    joint /= joint.sum()
    pa, pb = joint.sum(axis=1, keepdims=True), joint.sum(axis=0, keepdims=True)
    nonzero = joint > 0
    return float((joint[nonzero] * np.log2(joint[nonzero] / (pa @ pb)[nonzero])).sum())

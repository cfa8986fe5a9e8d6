"""The one transform model every engine produces and every step consumes.

A registration result is a *pull map* from the reference frame to the moving image::

    P(p) = A @ (p + D(p))

``p`` is a reference level-0 pixel (centres at integers), ``A`` a 3x3 affine, and ``D`` a smooth
displacement field in reference pixels, stored on a coarse grid whose node ``(i, j)`` sits at reference
position ``((j + 0.5) * s - 0.5, (i + 0.5) * s - 0.5)`` for grid spacing ``s`` (the centres of a
downsampled image of scale ``s``), and interpolated bilinearly with clamped edges.

Warping an image pulls: output pixel ``p`` takes the moving image at ``P(p)``, so affine and displacement
are composed into one interpolation. Points go the other way (moving -> reference) by inverting ``P``:
``A`` exactly, ``D`` by fixed-point iteration, which converges for smooth fields (|grad D| < 1).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from slimreg.atomic import atomic_output, write_json_atomic
from slimreg.errors import InputError

FORMAT = "slimreg-transform"
VERSION = 1
# metadata: the glass brightness of a moving image registered as a grey brightfield scan; the warp fills the margins
# it adds with it (an RGB section's with white, a fluorescence image's with 0)
MOVING_GLASS = "moving_glass"
CONVENTION = ("pull map reference->moving P(p) = A @ (p + D(p)); level-0 pixels, pixel centres at integer "
              "coordinates, x right, y down; D on a grid of spacing s with node (i, j) at "
              "((j + 0.5) * s - 0.5, (i + 0.5) * s - 0.5), bilinear, clamped")
MIDWAY_BAND_NODES = 65536  # nodes ``midway`` maps at once (about 10 MB of temporaries)


@dataclass
class Displacement:
    """A displacement field on a coarse grid over the reference frame (values in reference pixels)."""

    dx: np.ndarray
    dy: np.ndarray
    spacing: float

    def __post_init__(self) -> None:
        self.dx = np.asarray(self.dx, dtype=np.float32)
        self.dy = np.asarray(self.dy, dtype=np.float32)
        if self.dx.shape != self.dy.shape or self.dx.ndim != 2:
            raise ValueError("dx and dy must be 2-D arrays of one shape")

    def at(self, xy: np.ndarray) -> np.ndarray:
        """Displacement at reference points (N x 2), bilinear with clamped edges."""
        xy = np.asarray(xy, dtype=np.float64)
        grid = (xy + 0.5) / self.spacing - 0.5
        coords = [grid[:, 1], grid[:, 0]]
        dx = ndimage.map_coordinates(self.dx, coords, order=1, mode="nearest")
        dy = ndimage.map_coordinates(self.dy, coords, order=1, mode="nearest")
        return np.stack([dx, dy], axis=1)

    def max_gradient(self) -> float:
        """Largest absolute derivative of the field, per reference pixel (invertibility needs < 1)."""
        grads = [np.abs(g) for f in (self.dx, self.dy) for g in np.gradient(f.astype(np.float64))]
        return float(max(g.max() for g in grads) / self.spacing) if self.dx.size > 1 else 0.0


@dataclass
class Transform:
    """Reference -> moving pull map with the metadata needed to apply it elsewhere."""

    affine: np.ndarray
    displacement: Displacement | None = None
    reference_shape: tuple[int, int] = (0, 0)  # (height, width) of the output frame
    moving_shape: tuple[int, int] = (0, 0)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64).reshape(3, 3)

    def pull(self, xy: np.ndarray) -> np.ndarray:
        """Map reference points (N x 2) to moving-image points."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        if self.displacement is not None:
            xy = xy + self.displacement.at(xy)
        return xy @ self.affine[:2, :2].T + self.affine[:2, 2]

    def push(self, xy: np.ndarray, iterations: int = 50, tolerance: float = 1e-6) -> np.ndarray:
        """Map moving-image points (N x 2) to reference points (the inverse of :meth:`pull`)."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        inverse = np.linalg.inv(self.affine)
        target = xy @ inverse[:2, :2].T + inverse[:2, 2]
        if self.displacement is None:
            return target
        estimate = target.copy()
        for _ in range(iterations):
            updated = target - self.displacement.at(estimate)
            if np.max(np.abs(updated - estimate), initial=0.0) < tolerance:
                return updated
            estimate = updated
        return estimate

    def rescaled(self, reference_scale: float, moving_scale: float, reference_shape: tuple[int, int],
                 moving_shape: tuple[int, int]) -> Transform:
        """The same map between frames ``scale`` times larger (a transform found on block-averaged copies).

        With ``S(s): x -> s * x + (s - 1) / 2`` (centre rule): ``A' = S_mov A S_ref^-1`` and the field's values
        and spacing grow by ``reference_scale``.
        """
        def frame(scale: float) -> np.ndarray:
            offset = (scale - 1.0) / 2.0
            return np.array([[scale, 0, offset], [0, scale, offset], [0, 0, 1.0]])

        affine = frame(moving_scale) @ self.affine @ np.linalg.inv(frame(reference_scale))
        displacement = None
        if self.displacement is not None:
            field = self.displacement
            displacement = Displacement(field.dx * reference_scale, field.dy * reference_scale,
                                        field.spacing * reference_scale)
        return Transform(affine, displacement, reference_shape, moving_shape, dict(self.metadata))

    def save(self, path: str | Path) -> Path:
        """Write ``<path>`` (JSON) and, for non-rigid transforms, ``<stem>.displacement.npz`` beside it."""
        path = Path(path)
        data: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "convention": CONVENTION,
            "affine": self.affine.tolist(),
            "reference_shape": list(self.reference_shape),
            "moving_shape": list(self.moving_shape),
            "displacement": None,
            "metadata": self.metadata,
        }
        if self.displacement is not None:
            field_name = path.name.removesuffix(".json").removesuffix(".transform") + ".displacement.npz"
            with atomic_output(path.with_name(field_name)) as tmp, open(tmp, "wb") as handle:
                np.savez_compressed(handle, dx=self.displacement.dx, dy=self.displacement.dy)
            data["displacement"] = {"file": field_name, "spacing": self.displacement.spacing,
                                    "shape": list(self.displacement.dx.shape)}
        return write_json_atomic(path, data)

    @classmethod
    def load(cls, path: str | Path) -> Transform:
        """Read a transform written by :meth:`save`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as error:
            raise InputError("transform file not found.", path, "run `slimreg register` first.") from error
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InputError(f"is not a transform JSON file ({error}).", path) from error
        if data.get("format") != FORMAT:
            raise InputError("is not a slimreg transform file.", path, "give a *.transform.json file.")
        displacement = None
        if data.get("displacement"):
            field_path = path.with_name(data["displacement"]["file"])
            try:
                with np.load(field_path) as arrays:
                    displacement = Displacement(arrays["dx"], arrays["dy"], float(data["displacement"]["spacing"]))
            except (OSError, KeyError, ValueError) as error:
                raise InputError(f"displacement field could not be read ({error}).", field_path) from error
        return cls(affine=np.array(data["affine"]), displacement=displacement,
                   reference_shape=tuple(data["reference_shape"]), moving_shape=tuple(data["moving_shape"]),
                   metadata=data.get("metadata", {}))


def midway(first: Transform, second: Transform, metadata: dict[str, Any]) -> Transform:
    """The pull map halfway between two results for one pair, ``P(p) = (P1(p) + P2(p)) / 2``, with ``metadata``.

    Two estimates of one map whose errors are independent average to a smaller error than either's on the whole
    (the valis engine averages VALIS' result and the light engine's where neither scores clearly higher and they
    agree: slimreg.register.valis_engine). The mean of two affines is the affine ``(A1 + A2) / 2``; with a field on
    either, the map keeps that affine and a field on the finer of the two grids (each grid is bounded by its
    engine's plan), sampled from the mean map at its nodes, between which the field is bilinear as every field
    is: exact for the affine parts, which are linear."""
    if first.reference_shape != second.reference_shape or first.moving_shape != second.moving_shape:
        raise ValueError("the two transforms are not of one pair of frames")
    affine = (first.affine + second.affine) / 2
    fields = [t.displacement for t in (first, second) if t.displacement is not None]
    if not fields:
        return Transform(affine, None, first.reference_shape, first.moving_shape, metadata)
    spacing = min(field.spacing for field in fields)
    height, width = first.reference_shape
    rows, columns = max(1, math.ceil(height / spacing)), max(1, math.ceil(width / spacing))
    inverse = np.linalg.inv(affine)
    dx, dy = np.empty((rows, columns), np.float32), np.empty((rows, columns), np.float32)
    column_positions = (np.arange(columns) + 0.5) * spacing - 0.5
    band = max(1, MIDWAY_BAND_NODES // columns)  # rows of nodes at a time: a 1024-node grid's temporaries stay small
    for top in range(0, rows, band):
        row_positions = (np.arange(top, min(rows, top + band)) + 0.5) * spacing - 0.5
        node_x, node_y = np.meshgrid(column_positions, row_positions)
        nodes = np.stack([node_x.ravel(), node_y.ravel()], axis=1)
        mean = (first.pull(nodes) + second.pull(nodes)) / 2
        displacement = mean @ inverse[:2, :2].T + inverse[:2, 2] - nodes
        dx[top:top + band] = displacement[:, 0].reshape(-1, columns)
        dy[top:top + band] = displacement[:, 1].reshape(-1, columns)
    return Transform(affine, Displacement(dx, dy, spacing), first.reference_shape, first.moving_shape, metadata)


def similarity_matrix(scale: float = 1.0, rotation_deg: float = 0.0, tx: float = 0.0, ty: float = 0.0,
                      centre: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """A 3x3 matrix that scales and rotates about ``centre`` then translates by (tx, ty)."""
    angle = np.deg2rad(rotation_deg)
    cos, sin = scale * np.cos(angle), scale * np.sin(angle)
    cx, cy = centre
    linear = np.array([[cos, -sin], [sin, cos]])
    offset = np.array([cx, cy]) - linear @ np.array([cx, cy]) + np.array([tx, ty])
    matrix = np.eye(3)
    matrix[:2, :2], matrix[:2, 2] = linear, offset
    return matrix

"""Registration settings and presets.

A preset sets the three working resolutions (long side, px) that drive both accuracy and memory:
``processing_dim`` for feature matching, ``non_rigid_dim`` for the displacement field and ``micro_dim`` for
the final refinement. Each can also be set on its own. On an out-of-memory retry the runner and the
Nextflow pipeline step down one preset (high -> medium -> low).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from slimreg.errors import ParameterError
from slimreg.options import (
    DEFAULT_COMPRESSION,
    DEFAULT_ENGINE,
    DEFAULT_PRESET,
    DEFAULT_TILE_SIZE,
    DEFAULT_TRANSFORM_MODEL,
    ENGINE_CLASSES,
    ENGINES,
    PRESET_ORDER,
    TRANSFORM_MODELS,
)

PRESETS: dict[str, dict[str, int]] = {
    "high": {"processing_dim": 2048, "non_rigid_dim": 2048, "micro_dim": 4096},
    "medium": {"processing_dim": 1024, "non_rigid_dim": 1024, "micro_dim": 2048},
    "low": {"processing_dim": 512, "non_rigid_dim": 512, "micro_dim": 1024},
}
# The diffeomorphic field's working size over ``non_rigid_dim``: sqrt(255 / 125), the optical flows' bytes per
# working px over the field's when its two directions ran one after the other (1434 px at medium). Side by side they
# cost 203 B per px (slimreg.estimate); at whole-slide size the stage still stays below the polish's (with ``micro``).
DIFFEOMORPHIC_SIZE_RATIO = 1.4
__all__ = ["DEFAULT_ENGINE", "DEFAULT_PRESET", "ENGINES", "PRESETS", "PRESET_ORDER", "TRANSFORM_MODELS",
           "RegistrationSettings"]


@dataclass(frozen=True)
class RegistrationSettings:
    """Everything that decides a registration result (recorded in every transform file)."""

    engine: str = DEFAULT_ENGINE
    preset: str = DEFAULT_PRESET
    processing_dim: int = PRESETS[DEFAULT_PRESET]["processing_dim"]
    non_rigid_dim: int = PRESETS[DEFAULT_PRESET]["non_rigid_dim"]
    micro_dim: int = PRESETS[DEFAULT_PRESET]["micro_dim"]
    non_rigid: bool = True
    micro: bool = True
    channel: str | None = None
    transform_model: str = DEFAULT_TRANSFORM_MODEL
    allow_mirror: bool = False  # sections mounted face down: consider mirror images of the moving image
    tile_size: int = DEFAULT_TILE_SIZE
    compression: str = DEFAULT_COMPRESSION
    interpolation: str = "bilinear"

    @classmethod
    def from_preset(cls, preset: str = DEFAULT_PRESET, **overrides: Any) -> RegistrationSettings:
        """Settings of ``preset`` with explicit values (not None) taking precedence."""
        if preset not in PRESETS:
            raise ParameterError(f"unknown preset {preset!r}; choose one of {', '.join(PRESET_ORDER)}.")
        values: dict[str, Any] = {"preset": preset, **PRESETS[preset]}
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.engine not in ENGINE_CLASSES:
            raise ParameterError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINE_CLASSES)}.")
        if self.transform_model not in TRANSFORM_MODELS:
            raise ParameterError(f"unknown transform model {self.transform_model!r}; choose affine or similarity.")
        for name in ("processing_dim", "non_rigid_dim", "micro_dim"):
            if getattr(self, name) < 64:
                raise ParameterError(f"{name} must be at least 64 px, got {getattr(self, name)}.")
        if self.tile_size < 64 or self.tile_size % 16:
            raise ParameterError(f"tile size must be a multiple of 16 and at least 64, got {self.tile_size}.")

    @property
    def search_dim(self) -> int:
        """Long side (px) of the pose search and of the judgement: half the processing size, where coarse edges
        still outline the tissue, and never under the 64 px any working image needs."""
        return max(64, self.processing_dim // 2)

    @property
    def diffeomorphic_dim(self) -> int:
        """The size (px, long side) the light engine's diffeomorphic field is estimated at:
        ``DIFFEOMORPHIC_SIZE_RATIO`` times ``non_rigid_dim``. Local correlation needs the tissue's own structure: on
        the shared kidney pair, estimated at half its full size the field left the landmarks 3.47 / 3.16 px from
        their partners, at full size 3.03 / 2.95 (one way each; docs/accuracy.md)."""
        return round(DIFFEOMORPHIC_SIZE_RATIO * self.non_rigid_dim)

    @property
    def valis_non_rigid_dim(self) -> int:
        """The size (px, on the long side of the tissue's box) of VALIS' non-rigid step in the valis engine: twice
        ``non_rigid_dim``, VALIS' own ratio (2048 px at the medium preset, its default)."""
        return 2 * self.non_rigid_dim

    @property
    def valis_finest_dim(self) -> int:
        """The largest size (px, on the long side of the tissue's box) the valis engine asks VALIS to work at: its
        non-rigid step, micro-registration where ``micro_dim`` is larger still, its feature matching at
        ``processing_dim`` without either."""
        finest = self.processing_dim
        if self.non_rigid:
            finest = max(finest, self.valis_non_rigid_dim, self.micro_dim if self.micro else 0)
        return finest

    def lower_preset(self) -> RegistrationSettings | None:
        """The same settings one preset lower, or None at the lowest (used on out-of-memory retries)."""
        index = PRESET_ORDER.index(self.preset) if self.preset in PRESET_ORDER else len(PRESET_ORDER) - 1
        if index + 1 >= len(PRESET_ORDER):
            return None
        lower = PRESET_ORDER[index + 1]
        return replace(self, preset=lower, **PRESETS[lower])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

"""Engine interface and lookup; engines are imported lazily so that VALIS/torch load only when used."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from slimreg.errors import ParameterError, RegistrationError
from slimreg.io.read import TiffImage
from slimreg.register.settings import ENGINES, RegistrationSettings
from slimreg.transform import Transform


class Engine(Protocol):
    """Registers moving images onto one reference; returns a transform or the error, per image."""

    name: str

    def register_many(self, reference: TiffImage, moving: list[TiffImage], reference_channel: int | str,
                      moving_channels: list[int | str], settings: RegistrationSettings,
                      workdir: Path) -> list[Transform | RegistrationError]: ...


class PairwiseEngine:
    """Adapter: an engine with ``register_pair`` registers each moving image to the reference on its own,
    so an image's result never depends on which batch it is in."""

    def __init__(self, pair_engine: object):
        self.pair_engine = pair_engine
        self.name = pair_engine.name  # type: ignore[attr-defined]

    def register_many(self, reference: TiffImage, moving: list[TiffImage], reference_channel: int | str,
                      moving_channels: list[int | str], settings: RegistrationSettings,
                      workdir: Path) -> list[Transform | RegistrationError]:
        results: list[Transform | RegistrationError] = []
        for image, channel in zip(moving, moving_channels, strict=True):
            try:
                results.append(self.pair_engine.register_pair(reference, image, reference_channel,  # type: ignore
                                                               channel, settings))
            except RegistrationError as error:
                results.append(error)
        return results


def get_engine(name: str) -> Engine:
    if name == "feature":
        from slimreg.register.feature import FeatureEngine

        return PairwiseEngine(FeatureEngine())
    if name == "valis":
        from slimreg.register.valis_engine import ValisEngine

        return ValisEngine()
    raise ParameterError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}.")

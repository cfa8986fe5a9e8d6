"""Engine interface and lookup; engines are imported lazily so that VALIS/torch load only when used."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

from slimreg.errors import ParameterError, RegistrationError
from slimreg.io.read import TiffImage
from slimreg.options import ENGINE_CLASSES
from slimreg.register.settings import RegistrationSettings
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
    """The registered engine called ``name`` (slimreg.options.ENGINE_CLASSES), imported now."""
    if name not in ENGINE_CLASSES:
        raise ParameterError(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_CLASSES)}.")
    module_name, class_name = ENGINE_CLASSES[name].split(":")
    engine = getattr(importlib.import_module(module_name), class_name)()
    return engine if hasattr(engine, "register_many") else PairwiseEngine(engine)

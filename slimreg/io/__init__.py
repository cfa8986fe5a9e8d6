"""Bounded-memory image I/O: header probing, lazy reading and streamed OME-TIFF writing."""

from slimreg.io.probe import ImageInfo, probe
from slimreg.io.read import (
    TiffImage,
    open_image,
    read_downsampled,
    read_region,
)
from slimreg.io.write import OmeMetadata, write_array, write_planes

__all__ = [
    "ImageInfo",
    "OmeMetadata",
    "TiffImage",
    "open_image",
    "probe",
    "read_downsampled",
    "read_region",
    "write_array",
    "write_planes",
]

"""One place that imports pyvips and sets it up for bounded memory.

The operation cache is turned off: it keeps references to every image a pipeline touched, which is how the pipeline
this project learned from grew to hundreds of GB (its VALIS memory notes cite libvips issue 1254 and pyvips issue
234). glibc's malloc arenas are capped before libvips starts its threads (``slimreg.memory.limit_malloc_arenas``).
"""

from __future__ import annotations

from slimreg.memory import limit_malloc_arenas

limit_malloc_arenas()

import numpy as np  # noqa: E402
import pyvips  # noqa: E402

pyvips.cache_set_max(0)
pyvips.cache_set_max_mem(0)

NUMPY_TO_VIPS = {
    "uint8": "uchar",
    "int8": "char",
    "uint16": "ushort",
    "int16": "short",
    "uint32": "uint",
    "int32": "int",
    "float32": "float",
    "float64": "double",
}
VIPS_TO_NUMPY = {v: k for k, v in NUMPY_TO_VIPS.items()}
SUPPORTED_DTYPES = tuple(NUMPY_TO_VIPS)


def vips_format(dtype: np.dtype | str) -> str:
    """The libvips band format for a numpy dtype (raises KeyError if unsupported)."""
    return NUMPY_TO_VIPS[np.dtype(dtype).name]


def from_numpy(array: np.ndarray) -> pyvips.Image:
    """Wrap a 2-D (or H x W x bands) numpy array as a pyvips image (copies once)."""
    return pyvips.Image.new_from_array(np.ascontiguousarray(array))


def to_numpy(image: pyvips.Image) -> np.ndarray:
    """Evaluate a (small) pyvips image into numpy; 2-D for one band, else H x W x bands."""
    array = image.numpy()
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return array

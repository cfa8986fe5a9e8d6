"""Streamed writing of OME-Zarr (NGFF 0.4: Zarr v2 with a ``/`` chunk separator) with memory set by the tile size.

The planes are rendered exactly as for OME-TIFF (``slimreg.io.tiles``: square blocks from the lazy pipeline,
halved in Z order into the pyramid), and each tile becomes one Zarr chunk file as soon as it is encoded, so no
scratch file is needed and memory is that of the TIFF writer. The format is simple enough to write without the
``zarr`` package: a chunk is a tile's C-order bytes through one numcodecs codec (``zlib``, ``zstd`` or none),
and the metadata are three small JSON files per array. Readers (ome-zarr-py, napari-ome-zarr, bioio-ome-zarr,
zarr-python) find channel names in ``omero.channels[].label`` and physical sizes in each level's ``scale``.

The image is written in a temporary folder and renamed when complete (``slimreg.atomic``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np

from slimreg.atomic import atomic_output
from slimreg.errors import ParameterError
from slimreg.io.tiles import PyramidRenderer, pyramid_shapes
from slimreg.io.write import OmeMetadata, PlaneSource, checked_planes
from slimreg.memory import PlaneReleases
from slimreg.options import WORK_TILE_SIZE

NGFF_VERSION = "0.4"
# --compression -> numcodecs codec: the same lossless codecs readers of Zarr v2 decode without plugins
ZARR_CODECS = {"deflate": {"id": "zlib", "level": 6}, "zstd": {"id": "zstd", "level": 3}, "none": None}
# channel colours viewers start from (napari-ome-zarr uses them): blue first, as a nuclear stain usually is
PALETTE = ("0000FF", "00FF00", "FF0000", "FF00FF", "00FFFF", "FFFF00", "FFFFFF")


def require_zarr_compression(compression: str) -> None:
    """Refuse a compression OME-Zarr readers cannot decode without plugins (TIFF's LZW, JPEG tiles)."""
    if compression not in ZARR_CODECS:
        raise ParameterError(f"--compression {compression} is not written to OME-Zarr.",
                             fix=f"use one of {', '.join(ZARR_CODECS)} with --format ome-zarr.")


class _ChunkCodec:
    """A tile (rows, columns, samples) -> one compressed chunk per sample (an RGB tile is three channels)."""

    def __init__(self, codec: dict[str, Any] | None):
        self.codec = codec

    def encode(self, tile: np.ndarray) -> list[bytes]:
        out = []
        for sample in range(tile.shape[2]):
            data = np.ascontiguousarray(tile[:, :, sample]).tobytes()
            if self.codec is None:
                out.append(data)
            elif self.codec["id"] == "zlib":
                out.append(imagecodecs.zlib_encode(data, level=self.codec["level"]))
            else:
                out.append(imagecodecs.zstd_encode(data, level=self.codec["level"]))
        return out


class _ChunkFiles:
    """Writes each encoded tile of one plane as chunk files ``<level>/<t>/<c>/<z>/<row>/<column>`` (the axes the
    image has), and counts them so that a walk that missed a tile is caught."""

    def __init__(self, root: Path, index: dict[str, int], axes: list[str], channel: int):
        self.root, self.index, self.axes, self.channel = root, index, axes, channel
        self.written = 0
        self._made: set[Path] = set()
        self._lock = threading.Lock()

    def put(self, level: int, row: int, column: int, data: list[bytes]) -> None:
        for sample, chunk in enumerate(data):
            position = {**self.index, "c": self.channel + sample, "y": row, "x": column}
            folder = self.root / str(level)
            for axis in self.axes[:-1]:
                folder = folder / str(position[axis])
            with self._lock:
                if folder not in self._made:
                    folder.mkdir(parents=True, exist_ok=True)
                    self._made.add(folder)
            (folder / str(position["x"])).write_bytes(chunk)
            self.written += 1


def _axes(meta: OmeMetadata) -> list[str]:
    return [*(["t"] if meta.size_t > 1 else []), "c", *(["z"] if meta.size_z > 1 else []), "y", "x"]


def _axis_entries(axes: list[str], meta: OmeMetadata) -> list[dict[str, str]]:
    kinds = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    entries = []
    for axis in axes:
        entry = {"name": axis, "type": kinds[axis]}
        if axis in "yx" and meta.pixel_size_um:
            entry["unit"] = "micrometer"
        entries.append(entry)
    return entries


def _channel_names(meta: OmeMetadata) -> tuple[str, ...]:
    return ("R", "G", "B") if meta.is_rgb else meta.channel_names


def _attributes(meta: OmeMetadata, axes: list[str], levels: int, windows: list[tuple[float, float]]) -> dict:
    """The root group's NGFF 0.4 ``multiscales`` (axes, one scale per level) and ``omero`` (channel names)."""
    pixel_x, pixel_y = meta.pixel_size_um or (1.0, 1.0)
    datasets = []
    for level in range(levels):
        factor = 2.0 ** level
        scale = {"t": 1.0, "c": 1.0, "z": 1.0, "y": pixel_y * factor, "x": pixel_x * factor}
        datasets.append({"path": str(level),
                         "coordinateTransformations": [{"type": "scale", "scale": [scale[a] for a in axes]}]})
    integer = np.dtype(meta.dtype).kind in "ui"
    # a float image's range is its data's (a recording corrected as float32 holds counts, not 0-1)
    limit = float(np.iinfo(meta.dtype).max) if integer else max([1.0, *(end for _, end in windows)])
    lowest = float(np.iinfo(meta.dtype).min) if integer else min([0.0, *(start for start, _ in windows)])
    names = _channel_names(meta)
    colours = ("FF0000", "00FF00", "0000FF") if meta.is_rgb else PALETTE
    channels = [{"label": name, "color": colours[i % len(colours)], "active": True,
                 "window": {"min": lowest, "max": limit, "start": windows[i][0], "end": windows[i][1]}}
                for i, name in enumerate(names)]
    return {
        "multiscales": [{"version": NGFF_VERSION, "name": meta.name, "axes": _axis_entries(axes, meta),
                         "datasets": datasets, "type": "mean",
                         "metadata": {"description": "2 x 2 box mean, as the OME-TIFF pyramid"}}],
        "omero": {"name": meta.name, "version": NGFF_VERSION, "channels": channels,
                  "rdefs": {"model": "color" if meta.is_rgb or len(names) > 1 else "greyscale",
                            "defaultT": 0, "defaultZ": 0}},
    }


def _window(root: Path, levels: int, axes: list[str], index: dict[str, int], channel: int,
            codec: dict[str, Any] | None, dtype: str, shape: tuple[int, int]) -> tuple[float, float]:
    """A display range for viewers (0.1 and 99.9 percentiles), from the overview level: one chunk, read back."""
    folder = root / str(levels - 1)
    position = {**index, "c": channel, "y": 0, "x": 0}
    for axis in axes:
        folder = folder / str(position[axis])
    data = folder.read_bytes()
    if codec is not None:
        data = imagecodecs.zlib_decode(data) if codec["id"] == "zlib" else imagecodecs.zstd_decode(data)
    values = np.frombuffer(data, dtype=dtype)
    tile = round(values.size ** 0.5)
    overview = values.reshape(tile, tile)[: shape[0], : shape[1]]
    low, high = np.percentile(overview, [0.1, 99.9]) if overview.size else (0.0, 1.0)
    return float(low), float(max(high, low + 1))


def write_planes_zarr(planes: Sequence[PlaneSource], path: str | Path, meta: OmeMetadata, *,
                      compression: str = "deflate", tile_size: int = WORK_TILE_SIZE, pyramid: bool = True) -> Path:
    """Write lazy planes (channels fastest, then Z, then T, as ``write_planes`` takes them) as one OME-Zarr.

    Chunks are ``tile_size`` square (one tile of the OME-TIFF); an RGB plane becomes three channels (R, G, B),
    since NGFF has no interleaved samples. Returns ``path``.
    """
    path = Path(path)
    require_zarr_compression(compression)
    sources, tile_size = checked_planes(planes, meta, tile_size)
    bands = 3 if meta.is_rgb else 1
    shapes = pyramid_shapes(meta.height, meta.width, tile_size, pyramid)
    axes = _axes(meta)
    size_c = len(_channel_names(meta))
    sizes = {"t": meta.size_t, "c": size_c, "z": meta.size_z}
    codec = ZARR_CODECS[compression]
    dtype = np.dtype(meta.dtype).newbyteorder("<").str  # Zarr names the byte order: little-endian, as written
    per_plane = 1 if meta.is_rgb else size_c
    with atomic_output(path) as tmp:
        tmp.mkdir()
        (tmp / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
        for level, (height, width) in enumerate(shapes):
            (tmp / str(level)).mkdir()
            (tmp / str(level) / ".zarray").write_text(json.dumps({
                "zarr_format": 2, "shape": [*(sizes[a] for a in axes[:-2]), height, width],
                "chunks": [*(1 for _ in axes[:-2]), tile_size, tile_size], "dtype": dtype,
                "compressor": codec, "fill_value": 0, "order": "C", "filters": None, "dimension_separator": "/"},
                indent=1))
        windows: list[tuple[float, float]] = [(0.0, 1.0)] * size_c
        tiles_per_plane = sum(-(-h // tile_size) * -(-w // tile_size) for h, w in shapes)
        releases = PlaneReleases(meta.width * meta.height * bands * np.dtype(meta.dtype).itemsize)
        for number, source in enumerate(sources):
            channel = (number % per_plane) if not meta.is_rgb else 0
            index = {"t": number // (per_plane * meta.size_z), "z": (number // per_plane) % meta.size_z}
            sink = _ChunkFiles(tmp, index, axes, channel)
            PyramidRenderer(source, shapes, tile_size, _ChunkCodec(codec), sink).run()
            if sink.written != tiles_per_plane * bands:
                raise RuntimeError(f"internal error: {sink.written} chunks written for plane {number}, "
                                   f"expected {tiles_per_plane * bands}")
            if index["t"] == 0 and index["z"] == 0:
                for sample in range(bands):
                    windows[channel + sample] = _window(tmp, len(shapes), axes, index, channel + sample, codec,
                                                        dtype, shapes[-1])
            releases.plane_written()
        (tmp / ".zattrs").write_text(json.dumps(_attributes(meta, axes, len(shapes), windows), indent=1))
    return path

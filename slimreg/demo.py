"""Deterministic demo and test data made from a real image that scikit-image ships (``ihc.png``).

Every moving image is the reference resampled through a known transform ``G`` (moving pixel -> reference
position), built lazily with the same streaming warp as registration output, so any size can be made in
bounded memory. Landmarks are placed on the reference and mapped into each moving image by inverting
``G`` numerically, independently of any image warp, so tests of registration accuracy compare against
exact truth.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyvips
from skimage import color, data

from slimreg.atomic import write_text_atomic
from slimreg.io.vips import from_numpy
from slimreg.io.write import OmeMetadata, write_planes
from slimreg.landmarks import write_landmarks
from slimreg.options import WORK_TILE_SIZE
from slimreg.transform import Displacement, Transform, similarity_matrix
from slimreg.warp import warp_plane

MIF_MARKERS = (("DAPI", "CD3", "panCK"), ("DAPI", "CD8", "CD20"), ("DAPI", "FOXP3", "CD68"),
               ("DAPI", "PD1", "Ki67"))


@dataclass(frozen=True)
class DemoImage:
    """One generated image: where it is, its truth transform (None for a reference) and its landmarks."""

    sample: str
    path: Path
    reference: bool
    session: str
    landmarks: Path | None
    generator: Transform | None


def _tissue_mask(size_yx: tuple[int, int], seed: int) -> np.ndarray:
    """A soft irregular blob: tissue in the middle of a background, like a section on a slide."""
    rng = np.random.default_rng(seed)
    h, w = size_yx
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    angle = np.arctan2(yy - 0.5, xx - 0.5)
    radius = 0.40 + sum(0.025 * rng.uniform(0.5, 1) * np.cos(k * angle + rng.uniform(0, 6.28)) for k in (2, 3, 5))
    distance = np.hypot(yy - 0.5, xx - 0.5)
    return np.clip((radius - distance) / 0.03, 0, 1)


def _base_channels(seed: int) -> dict[str, np.ndarray]:
    """Stain channels (0..1 float, 512 x 512) and the RGB section, from the IHC image skimage ships."""
    rgb = data.immunohistochemistry().astype(np.float32) / 255.0
    hed = color.rgb2hed(rgb)
    mask = _tissue_mask(rgb.shape[:2], seed)

    def norm(channel: np.ndarray) -> np.ndarray:
        low, high = np.percentile(channel, [1, 99.5])
        return np.clip((channel - low) / (high - low + 1e-9), 0, 1) * mask

    h, e, d = (norm(hed[..., i]) for i in range(3))
    channels = {"DAPI": h, "CD3": d, "panCK": e, "CD8": np.sqrt(d * h), "CD20": e ** 2, "FOXP3": d * (1 - e),
                "CD68": (e + d) / 2, "PD1": np.sqrt(d), "Ki67": h ** 2}
    channels["RGB"] = (1.0 - mask[..., None] * (1.0 - rgb))
    return channels


def _upsampled(small: np.ndarray, size: int) -> pyvips.Image:
    """Lazily enlarge a 512-px float plane to ``size`` px (bicubic, centre-aligned)."""
    image = from_numpy(small.astype(np.float32))
    scale = size / small.shape[1]
    return image.resize(scale, kernel="cubic") if scale != 1 else image


def _as_uint16(image: pyvips.Image, seed: int, noise: float) -> pyvips.Image:
    width, height = image.width, image.height
    signal = image * 52000 + 1500
    if noise:
        signal = signal + pyvips.Image.gaussnoise(width, height, sigma=noise, mean=0, seed=seed)
    return signal.cast("ushort")


def _smooth_field(size: tuple[int, int], amplitude: float, seed: int, nodes: int = 17) -> Displacement:
    """A smooth, invertible displacement (sum of low-frequency waves) on a coarse grid."""
    rng = np.random.default_rng(seed)
    h, w = size
    spacing = max(h, w) / nodes
    gh, gw = int(np.ceil(h / spacing)), int(np.ceil(w / spacing))
    yy, xx = np.mgrid[0:gh, 0:gw]
    x = ((xx + 0.5) * spacing - 0.5) / w
    y = ((yy + 0.5) * spacing - 0.5) / h
    fields = []
    for _ in range(2):
        phase = rng.uniform(0, 2 * np.pi, size=2)
        fields.append(amplitude * np.sin(2 * np.pi * 1.1 * x + phase[0]) * np.cos(2 * np.pi * 0.8 * y + phase[1]))
    return Displacement(fields[0], fields[1], spacing)


def _landmarks_on_reference(size: int, count_per_side: int = 7) -> np.ndarray:
    """A grid of points inside the tissue region, in reference level-0 pixels."""
    ticks = np.linspace(0.3, 0.7, count_per_side) * (size - 1)
    xx, yy = np.meshgrid(ticks, ticks)
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def _mif_transforms(size: int, seed: int) -> list[Transform | None]:
    """Known transforms (moving pixel -> reference position) for the four multiplex rounds."""
    centre = ((size - 1) / 2, (size - 1) / 2)
    similarity = similarity_matrix(1.03, 4.0, 0.025 * size, -0.018 * size, centre)
    affine = np.array([[1.02, 0.035, -0.02 * size], [-0.025, 0.975, 0.015 * size], [0, 0, 1]])
    nonrigid_affine = similarity_matrix(0.99, -2.5, -0.012 * size, 0.01 * size, centre)
    field = _smooth_field((size, size), amplitude=0.011 * size, seed=seed + 7)
    return [None, Transform(similarity), Transform(affine), Transform(nonrigid_affine, field)]


# how far a demo recording's frames wander (px): the brain moving under a two-photon objective, a few px
RECORDING_JITTER_PX = 2.0


def recording_jitter(frames: int, seed: int) -> np.ndarray:
    """(dy, dx) by which each frame of a demo recording is moved: uniform within RECORDING_JITTER_PX, mean zero (so
    the recording's own template sits where its landmarks are)."""
    shifts = np.random.default_rng(seed + 10_000).uniform(-RECORDING_JITTER_PX, RECORDING_JITTER_PX, (frames, 2))
    return shifts - shifts.mean(axis=0)


def _stack_planes(base: np.ndarray, frames: int, seed: int, transform: Transform | None,
                  first_frame: int = 0) -> list[pyvips.Image]:
    """Frames of a calcium-imaging-like recording: the same field of view with fluctuating signal, each frame moved
    by its own known shift (recording_jitter)."""
    rng = np.random.default_rng(seed)
    size = base.shape[0]
    image = from_numpy(base.astype(np.float32))
    if transform is not None:
        image = warp_plane(image, transform, size, size)
    bicubic = pyvips.Interpolate.new("bicubic")
    planes = []
    for t, (dy, dx) in zip(range(first_frame, first_frame + frames), recording_jitter(frames, seed), strict=True):
        moved = image.affine([1, 0, 0, 1], oarea=[0, 0, size, size], odx=float(dx), ody=float(dy),
                             interpolate=bicubic, extend="copy")
        gain = 0.75 + 0.25 * np.sin(t / 5.0) + rng.uniform(-0.05, 0.05)
        frame = moved * (52000 * gain) + 1500 + pyvips.Image.gaussnoise(size, size, sigma=400, seed=seed + t)
        planes.append(frame.cast("ushort"))
    return planes


def _recording_parts(frames: int) -> list[tuple[str, str, bool, int, int]]:
    """The demo recordings: (name, session, moved onto the reference or not, first frame, frames)."""
    half = frames // 2
    return [("calcium_s1", "s1", False, 0, frames), ("calcium_s2_part1", "s2", True, 0, half),
            ("calcium_s2_part2", "s2", True, half, frames - half)]


def _recording_seed(seed: int, first: int, moved: bool) -> int:
    return seed + 100 + first + (50 if moved else 0)


def demo_recording_shifts(name: str, frames: int = 40, seed: int = 0) -> np.ndarray:
    """The known (dy, dx) of every frame of demo recording ``name`` (e.g. "calcium_s2_part1"), for tests."""
    for part, _, moved, first, count in _recording_parts(frames):
        if part == name:
            return recording_jitter(count, _recording_seed(seed, first, moved))
    raise KeyError(name)


def make_demo_data(outdir: str | Path, size: int = 1024, frames: int = 40, seed: int = 0) -> Path:
    """Write the demo series and ``samplesheet.csv`` into ``outdir``; return the samplesheet path.

    Nothing of the user's is replaced: the series is made in a scratch folder inside ``outdir`` and moved into
    place only if every file of the same name already there is exactly what would be written (the same demo made
    again: running the quick start twice works); otherwise nothing is written and the files in the way are named.
    A failure part way leaves nothing behind either.
    """
    from slimreg.errors import ParameterError

    if size < 256:
        raise ParameterError(f"--size must be at least 256 px, got {size}.")
    if frames < 2:
        raise ParameterError(f"--frames must be at least 2, got {frames}.")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".slimreg-work-", dir=outdir))  # a name slimreg's clean-up knows
    try:
        _write_demo(scratch, size, frames, seed)
        made = sorted(scratch.iterdir())
        _refuse_files_in_the_way(made, outdir)
        for path in made:
            os.replace(path, outdir / path.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return outdir / "samplesheet.csv"


def _refuse_files_in_the_way(made: list[Path], outdir: Path) -> None:
    """Refuse if ``outdir`` holds a file of a demo file's name with other contents (a samplesheet or landmarks
    the user wrote or edited, an image of theirs): `demo-data` used to replace them silently."""
    in_the_way = []
    for path in made:
        existing = outdir / path.name
        if existing.is_symlink() or (existing.exists() and not (existing.is_file()
                                                                and filecmp.cmp(existing, path, shallow=False))):
            in_the_way.append(existing.name)
    if in_the_way:
        from slimreg.errors import InputError

        shown = ", ".join(in_the_way[:6]) + (f" and {len(in_the_way) - 6} more" if len(in_the_way) > 6 else "")
        raise InputError(f"already holds {len(in_the_way)} file(s) that demo-data would replace with other contents: "
                         f"{shown}; nothing was written.", outdir,
                         "pick an empty folder, or remove those files (the same demo, made again with the same "
                         "--size, --frames and --seed, may be written over itself).")


def _write_demo(outdir: Path, size: int, frames: int, seed: int) -> Path:
    """Every file of the demo, written into ``outdir`` (see make_demo_data)."""
    base = _base_channels(seed)
    images: list[DemoImage] = []
    reference_points = _landmarks_on_reference(size)

    # Multiplexed immunofluorescence rounds: DAPI in every round, other markers change.
    for round_index, generator in enumerate(_mif_transforms(size, seed)):
        names = MIF_MARKERS[round_index]
        planes = []
        for channel_index, name in enumerate(names):
            plane = _upsampled(base[name], size)
            if generator is not None:
                plane = warp_plane(plane, generator, size, size)
            planes.append(_as_uint16(plane, seed * 1000 + round_index * 10 + channel_index, noise=600))
        path = outdir / f"mif_round{round_index}.ome.tif"
        write_planes(planes, path, OmeMetadata(size, size, "uint16", names, (0.5, 0.5)), tile_size=256)
        points = reference_points if generator is None else generator.push(reference_points)
        landmarks = write_landmarks(outdir / f"mif_round{round_index}.landmarks.csv", points)
        images.append(DemoImage("mif", path, generator is None, "", landmarks, generator))

    # Serial brightfield sections (RGB): a reference and a rotated, non-rigidly deformed neighbour.
    centre = ((size - 1) / 2, (size - 1) / 2)
    he_generator = Transform(similarity_matrix(0.98, 6.0, 0.02 * size, 0.01 * size, centre),
                             _smooth_field((size, size), amplitude=0.008 * size, seed=seed + 11))
    rgb = _upsampled(base["RGB"], size)
    for index, generator in enumerate((None, he_generator)):
        plane = rgb if generator is None else warp_plane(rgb, generator, size, size, background=[1.0, 1.0, 1.0])
        plane = (plane * 255).cast("uchar")
        path = outdir / f"he_section{index}.ome.tif"
        write_planes([plane], path, OmeMetadata(size, size, "uint8", ("R", "G", "B"), (0.25, 0.25), is_rgb=True),
                     tile_size=256, compression="jpeg")
        points = reference_points if generator is None else generator.push(reference_points)
        landmarks = write_landmarks(outdir / f"he_section{index}.landmarks.csv", points)
        images.append(DemoImage("he", path, generator is None, "", landmarks, generator))

    # A calcium-imaging-like recording: session s1 (reference) and session s2 recorded as two files.
    stack_size = max(128, size // 4)
    nuclei = np.asarray(_upsampled(base["DAPI"], stack_size).numpy(), dtype=np.float32)
    stack_centre = ((stack_size - 1) / 2, (stack_size - 1) / 2)
    session_shift = Transform(similarity_matrix(1.0, 2.0, 0.03 * stack_size, -0.02 * stack_size, stack_centre))
    stack_points = _landmarks_on_reference(stack_size, 5)
    for name, session, moved, first, count in _recording_parts(frames):
        generator = session_shift if moved else None
        planes = _stack_planes(nuclei, count, _recording_seed(seed, first, moved), generator, first)
        path = outdir / f"{name}.ome.tif"
        write_planes(planes, path, OmeMetadata(stack_size, stack_size, "uint16", ("GCaMP",), (1.0, 1.0),
                                               size_t=count), tile_size=128)
        points = stack_points if generator is None else generator.push(stack_points)
        landmarks = write_landmarks(outdir / f"{name}.landmarks.csv", points)
        images.append(DemoImage("calcium", path, generator is None, session, landmarks, generator))

    lines = ["sample,image,reference,session,landmarks"]
    lines += [f"{im.sample},{im.path.name},{str(im.reference).lower()},{im.session},{im.landmarks.name}"
              for im in images if im.landmarks is not None]
    return write_text_atomic(outdir / "samplesheet.csv", "\n".join(lines) + "\n")


def make_pair(outdir: str | Path, size: int, *, channels: int = 4, rgb: bool = False, width: int | None = None,
              seed: int = 0, moving_count: int = 1, noise: float = 600) -> tuple[Path, list[Path]]:
    """A reference and ``moving_count`` non-rigidly deformed moving images at any size, for benchmarks.

    Built lazily and written tile by tile, so a 30000 x 25000 px pair needs no more memory than a small one.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    width = width or size
    base = _base_channels(seed)
    names = ("DAPI", "CD3", "panCK", "CD8", "CD20", "FOXP3", "CD68", "PD1", "Ki67")[:channels]
    centre = ((width - 1) / 2, (size - 1) / 2)
    generators: list[Transform | None] = [None] + [
        Transform(similarity_matrix(1.0 + 0.01 * i, 2.0 + i, 0.01 * width, -0.01 * size, centre),
                  _smooth_field((size, width), amplitude=0.004 * size, seed=seed + i)) for i in range(moving_count)]
    points = _landmarks_on_reference(min(size, width))
    paths = []
    for index, generator in enumerate(generators):
        stem = f"{'rgb' if rgb else 'mif'}{size}_{index}"
        if rgb:
            plane = _upsampled(base["RGB"], width).crop(0, 0, width, size) if width >= size else \
                _upsampled(base["RGB"], size).crop(0, 0, width, size)
            if generator is not None:
                plane = warp_plane(plane, generator, width, size, background=[1.0, 1.0, 1.0])
            planes = [(plane * 255).cast("uchar")]
            meta = OmeMetadata(width, size, "uint8", ("R", "G", "B"), (0.25, 0.25), is_rgb=True)
        else:
            planes = []
            for c, name in enumerate(names):
                plane = _upsampled(base[name], max(width, size)).crop(0, 0, width, size)
                if generator is not None:
                    plane = warp_plane(plane, generator, width, size)
                planes.append(_as_uint16(plane, seed * 100 + index * 10 + c, noise=noise))
            meta = OmeMetadata(width, size, "uint16", names, (0.5, 0.5))
        path = write_planes(planes, outdir / f"{stem}.ome.tif", meta, tile_size=WORK_TILE_SIZE,
                            compression="jpeg" if rgb else "deflate")
        write_landmarks(outdir / f"{stem}.landmarks.csv", points if generator is None else generator.push(points))
        paths.append(path)
    return paths[0], paths[1:]

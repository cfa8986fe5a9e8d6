"""Speed of the light engine on the cases issue 37 names: 1024 px fluorescence (nuclei) pairs and a 5 % section pair.

    .venv/bin/python benchmarks/speed.py [--cases nuclei islands kidney] [--code DIR] [--workdir DIR]

Every registration is `slimreg register --engine feature` in a fresh process, as a user runs it (imports, warp and
write included); wall and CPU seconds (user + system of the child, which tell apart a slow step from a busy
machine) and the peak (VmHWM). ``--code DIR`` runs another checkout's ``slimreg`` package (a folder holding
``slimreg/``, e.g. ``git archive <commit> slimreg | tar -x -C DIR``), so that two versions are timed under the same
conditions.

- ``nuclei``: a real nuclear-stain image (the shared if-rounds round 1, VALIS' processed DAPI, upscaled to
  1024 x 768 px) and the same image a known similarity away (5 degrees, scale 1.04, shift 25 / -18 px).
- ``islands``: the same, with the tissue kept only inside smooth random blobs, so that its mask falls into many
  components (10 large enough to be placed alone): the case in which the per-piece correction used to refine every
  component from several starts.
- ``kidney``: the shared kidney H&E <- PanCK section pair (5 % scale; accuracy: benchmarks/accuracy.py).

For the two made pairs the error is the median distance (px) between the saved pull map and the known similarity
over a grid on the reference.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._measure import CLI_WRAPPER
from benchmarks.realdata import SHARED_DATA, convert_sections

# The known motion of the made pairs: a similarity, as between two rounds of one section on a stage.
ANGLE_DEG, SCALE, SHIFT = 5.0, 1.04, (25.0, -18.0)
SIDE = 1024  # the size: a 1024 px fluorescence pair
BLOB_SIGMA = 14.0  # island size of the ``islands`` case (px): 10 components large enough to be placed alone
ISLAND_SHARE = 0.4  # share of the image kept as tissue in the ``islands`` case


def make_pair(workdir: Path, islands: bool) -> tuple[Path, Path, np.ndarray]:
    """The reference and moving OME-TIFFs of a made nuclei pair and the known pull (reference px -> moving px)."""
    import cv2
    from scipy import ndimage

    from slimreg.io import write_array

    name = "islands" if islands else "nuclei"
    grey = cv2.imread(str(SHARED_DATA / "if-rounds" / "processed_CD20_FOXP3_CD3.png"), cv2.IMREAD_GRAYSCALE)
    height = round(grey.shape[0] * SIDE / grey.shape[1])
    image = cv2.resize(grey, (SIDE, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    if islands:
        field = ndimage.gaussian_filter(np.random.default_rng(0).standard_normal(image.shape), BLOB_SIGMA)
        kept = ndimage.binary_opening(field > np.percentile(field, 100 * (1 - ISLAND_SHARE)), iterations=3)
        image = image * kept
    push = cv2.getRotationMatrix2D((SIDE / 2, height / 2), ANGLE_DEG, SCALE)
    push[:, 2] += SHIFT
    moving = cv2.warpAffine(image, push, (SIDE, height), flags=cv2.INTER_LINEAR)
    paths = []
    for role, array in (("reference", image), ("moving", moving)):
        path = workdir / f"{name}_{role}.ome.tif"
        if not path.is_file():
            write_array((np.clip(array, 0, 255).astype(np.uint16) * 257)[None], path, channel_names=["DAPI"],
                        pixel_size_um=(0.65, 0.65))
        paths.append(path)
    return paths[0], paths[1], np.vstack([push, [0.0, 0.0, 1.0]])


def register(reference: Path, moving: Path, out: Path, code: Path | None, channel: str | None) -> dict:
    """``slimreg register --engine feature`` in a fresh process: wall and CPU seconds, peak MB, status."""
    args = ["register", "--engine", "feature", "--reference", str(reference), "--moving", str(moving),
            "--outdir", str(out), *(["--channel", channel] if channel else [])]
    env = {**os.environ, **({"PYTHONPATH": str(code)} if code else {})}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    # run from the output folder: ``python -c`` puts the working directory first on sys.path, ahead of PYTHONPATH,
    # and from the repository it would import this checkout's slimreg whatever ``code`` says
    out.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-c", CLI_WRAPPER, *args], capture_output=True, text=True, env=env,
                            check=False, cwd=out)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    peaks = [line for line in result.stdout.splitlines() if line.startswith("MAXRSS_KB")]
    status = "ok" if result.returncode == 0 and peaks else (result.stderr.strip().splitlines() or ["?"])[-1][:120]
    return {"wall": wall, "cpu": cpu, "peak_mb": int(peaks[-1].split()[1]) / 1024 if peaks else float("nan"),
            "status": status}


def error_px(transform_file: Path, pull: np.ndarray) -> float:
    """Median distance (px) between the saved pull map and the known one, over a grid on the reference."""
    from slimreg.transform import Transform

    transform = Transform.load(transform_file)
    height, width = transform.reference_shape
    ys, xs = np.mgrid[40:height - 40:16, 40:width - 40:16]
    points = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    truth = points @ pull[:2, :2].T + pull[:2, 2]
    return float(np.median(np.hypot(*(transform.pull(points) - truth).T)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["nuclei", "islands", "kidney"],
                        choices=["nuclei", "islands", "kidney"])
    parser.add_argument("--code", type=Path, default=None, help="folder holding the slimreg package to time")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/slimreg-bench-speed"))
    args = parser.parse_args()
    args.workdir = args.workdir.resolve()  # the registrations run from their output folders
    args.workdir.mkdir(parents=True, exist_ok=True)
    label = str(args.code) if args.code else "this checkout"
    print("| case | code | wall s | CPU s | peak MB | error px | status |")
    print("|---|---|---|---|---|---|---|")
    for case in args.cases:
        pull = None
        if case == "kidney":
            sections = convert_sections(args.workdir / "sections")
            reference, moving, channel = sections["kidney_HE"], sections["kidney_PanCK"], None
        else:
            reference, moving, pull = make_pair(args.workdir, islands=case == "islands")
            channel = "DAPI"
        out = args.workdir / "runs" / case
        subprocess.run(["rm", "-rf", str(out)], check=True)
        measured = register(reference, moving, out, args.code, channel)
        transform_file = out / f"{moving.name.removesuffix('.ome.tif')}.transform.json"
        error = error_px(transform_file, pull) if pull is not None and transform_file.is_file() else float("nan")
        print(f"| {case} | {label} | {measured['wall']:.1f} | {measured['cpu']:.1f} | {measured['peak_mb']:.0f} | "
              f"{'-' if np.isnan(error) else f'{error:.3f}'} | {measured['status']} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

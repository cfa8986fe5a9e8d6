"""VALIS used plainly on a sample of several sections: its groupwise serial order against one run per moving image.

    .venv/bin/python benchmarks/valis_groupwise.py [--variants faded warped] [--workdir DIR]

VALIS' authors register a sample's slides in one run: VALIS orders them by similarity and aligns each to its
neighbour on the way to the reference (``align_to_reference=False``, its default), composing the steps. The
`valis` engine registers each moving image with the reference in its own two-image run (bounded memory per image,
and a result that does not depend on the batch). This measures what that departure costs or gains, with VALIS used
plainly both ways so that nothing of slimreg's is in the comparison.

A sample is built from each shared section pair (both directions): the reference, the moving section, and the moving
section changed as unseen slides differ (``benchmarks/robustness.py``'s variants, landmarks carried along exactly).
Each moving image is scored by its landmarks (median px, as in ANHIR), mapped with ``Slide.warp_xy_from_to``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._measure import measure_snippet
from benchmarks.accuracy import PointMap
from benchmarks.realdata import SectionPair, landmark_errors, section_pairs, shared_data_missing
from benchmarks.robustness import MOVING_CHANGES, variant_pair

VALIS_RUN = """
import json, warnings; warnings.filterwarnings("ignore")
import numpy as np
from slimreg.register.valis_offline import import_valis, no_network
registration = import_valis()
from valis import feature_detectors, feature_matcher, slide_io
reference, moving = {reference!r}, {moving!r}
with no_network():
    registrar = registration.Valis({src!r}, {dst!r}, img_list=[reference, *moving], reference_img_f=reference,
        align_to_reference={align_to_reference!r}, feature_detector_cls=None,
        matcher=feature_matcher.Matcher(feature_detector=feature_detectors.VggFD()),
        matcher_for_sorting=feature_matcher.Matcher(feature_detector=feature_detectors.VggFD()))
    rigid, non_rigid, error = registrar.register(reader_cls=slide_io.VipsSlideReader)
assert rigid is not None, "VALIS register() failed"
points = np.array(json.load(open({points!r})), dtype=float).reshape(-1, 2)
ref = registrar.get_slide(reference)
mapped = [np.asarray(ref.warp_xy_from_to(points, registrar.get_slide(m), non_rigid=True)).tolist() for m in moving]
json.dump(mapped, open({result!r}, "w"))
"""


def run_valis(reference: Path, moving: list[Path], points: np.ndarray, out: Path, groupwise: bool,
              timeout: float) -> tuple[dict, list[np.ndarray] | None]:
    """One VALIS run of ``reference`` and ``moving`` (symlinked under distinct names); the reference's points mapped
    into each moving image."""
    shutil.rmtree(out, ignore_errors=True)
    src = out / "src"
    src.mkdir(parents=True)
    ref_link = src / f"reference{''.join(reference.suffixes)}"
    ref_link.symlink_to(reference.resolve())
    links = []
    for index, path in enumerate(moving):
        links.append(src / f"moving{index}{''.join(path.suffixes)}")
        links[-1].symlink_to(path.resolve())
    result, points_file = out / "mapped.json", out / "points.json"
    points_file.write_text(json.dumps(np.asarray(points).tolist()))
    measured = measure_snippet(VALIS_RUN.format(src=str(src), dst=str(out / "valis"), reference=str(ref_link),
                                                moving=[str(link) for link in links], points=str(points_file),
                                                result=str(result), align_to_reference=not groupwise),
                               timeout=timeout)
    if measured["status"] != "ok" or not result.is_file():
        return measured, None
    return measured, [np.array(mapped) for mapped in json.loads(result.read_text())]


def median_error(mapped: np.ndarray | None, member: SectionPair) -> float:
    return float("nan") if mapped is None else float(np.median(landmark_errors(PointMap(mapped=mapped), member)))


def main() -> int:
    start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["faded", "warped"], choices=list(MOVING_CHANGES))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/slimreg-bench-valis-groupwise"))
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    if shared_data_missing():
        return 2
    (args.workdir / "images").mkdir(parents=True, exist_ok=True)
    rows = ["| sample reference | moving image | median before px | groupwise px | one run per image px |",
            "|---|---|---|---|---|"]
    times = ["| sample reference | groupwise wall s / peak MB | one run per image wall s / peak MB |",
             "|---|---|---|"]
    for pair in section_pairs(args.workdir / "sections"):
        members = [pair] + [variant_pair(pair, variant, args.workdir / "images") for variant in args.variants]
        stem = pair.name.replace(" <- ", "__")
        moving = [member.moving for member in members]
        grouped, group_maps = run_valis(pair.reference, moving, pair.reference_landmarks,
                                        args.workdir / "runs" / stem / "groupwise", True, args.timeout)
        single_maps: list[np.ndarray | None] = []
        seconds, peak = 0.0, 0.0
        for index, member in enumerate(members):
            measured, maps = run_valis(pair.reference, [member.moving], pair.reference_landmarks,
                                       args.workdir / "runs" / stem / f"single{index}", False, args.timeout)
            single_maps.append(maps[0] if maps else None)
            seconds, peak = seconds + float(measured["seconds"]), max(peak, float(measured["peak_mb"]))
        for index, member in enumerate(members):
            before = np.median(landmark_errors(None, member))
            group = median_error(group_maps[index] if group_maps else None, member)
            rows.append(f"| {pair.reference.name.split('.')[0]} | {member.name} | {before:.1f} | {group:.2f} | "
                        f"{median_error(single_maps[index], member):.2f} |")
            print(rows[-1], file=sys.stderr, flush=True)
        times.append(f"| {pair.name} | {float(grouped['seconds']):.0f} / {float(grouped['peak_mb']):.0f} | "
                     f"{seconds:.0f} / {peak:.0f} |")
    print("\n".join(rows))
    print()
    print("\n".join(times))
    print(f"\n(total {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

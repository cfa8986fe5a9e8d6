"""Why the light engine keeps a non-rigid field only where two flow estimates agree: the evidence, per real pair.

    .venv/bin/python benchmarks/flow_agreement.py [--workdir DIR]

Each pair of ../shared/data is placed by the light engine's affine (non-rigid off); then the engine's own field
candidates are computed (slimreg.register.fields.field_candidates: DIS flow on intensities and on edge maps,
smoothed over each fraction of the image). Printed per candidate:
- disagreement: median distance between the two estimates / their median length (a field is kept below
  FEATURE.FLOW_AGREEMENT; noise alone gives about sqrt(2), a shared motion twice the noise sqrt(2/5));
- median landmark error with the candidate's mean field, where the pair has expert landmarks;
- for the calcium frames, how far the two directions' fields are from undoing each other, against how far they
  move the tissue (fields of pure noise would be further apart than they are long).
About a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.realdata import calcium_frames, convert_if_rounds, landmark_errors, section_pairs
from slimreg.io.read import TiffImage
from slimreg.register import feature
from slimreg.register import fields as flow_fields
from slimreg.register.channel import choose_channel
from slimreg.register.settings import RegistrationSettings
from slimreg.transform import Displacement, Transform

SETTINGS = RegistrationSettings.from_preset("medium", engine="feature", non_rigid=False)


def affine_and_fields(reference: Path, moving: Path) -> tuple[Transform, list[tuple[float, float, Transform]]]:
    """The engine's affine result and, per smoothing, (smoothing, disagreement, affine + that mean field)."""
    ref_image, mov_image = TiffImage(reference), TiffImage(moving)
    ref_channel, mov_channel = choose_channel(ref_image.info, None), choose_channel(mov_image.info, None)
    affine = feature.FeatureEngine().register_pair(ref_image, mov_image, ref_channel, mov_channel, SETTINGS)
    ref, scorer, placed, placed_mask = flow_fields.placed_for_flow(ref_image, mov_image, ref_channel, mov_channel,
                                                               affine.affine, SETTINGS.non_rigid_dim)
    fields = []
    for candidate in flow_fields.field_candidates(scorer, placed, scorer.mask | placed_mask):
        displacement = Displacement(candidate.flow[..., 0] * ref.scale, candidate.flow[..., 1] * ref.scale,
                                    spacing=ref.scale)
        fields.append((candidate.smoothing, candidate.disagreement,
                       Transform(affine.affine, displacement, affine.reference_shape, affine.moving_shape)))
    return affine, fields


def sections(workdir: Path) -> None:
    print("| pair | smoothing | disagreement | kept by the rule | landmarks affine px | landmarks with field px |")
    print("|---|---|---|---|---|---|")
    for pair in section_pairs(workdir / "sections"):
        affine, fields = affine_and_fields(pair.reference, pair.moving)
        before = np.median(landmark_errors(affine, pair))
        for smoothing, disagreement, transform in fields:
            print(f"| {pair.name} | {smoothing:.0%} | {disagreement:.2f} | "
                  f"{'yes' if disagreement < flow_fields.FLOW_AGREEMENT else 'no'} | {before:.2f} | "
                  f"{np.median(landmark_errors(transform, pair)):.2f} |", flush=True)


def one_signal(workdir: Path) -> None:
    print("\n| pair | smoothing | disagreement | kept by the rule | fields of both directions: apart px | "
          "moved px |")
    print("|---|---|---|---|---|---|")
    first, second = calcium_frames()
    forward, forward_fields = affine_and_fields(first, second)
    backward, backward_fields = affine_and_fields(second, first)
    grid = np.stack(np.meshgrid(np.arange(8, 551, 16), np.arange(8, 413, 16)), axis=-1).reshape(-1, 2).astype(float)
    apart = np.median(np.hypot(*(backward.pull(forward.pull(grid)) - grid).T))
    print(f"| calcium frames, affine only | - | - | - | {apart:.2f} | - |")
    for (smoothing, one, there), (_, other, back) in zip(forward_fields, backward_fields, strict=True):
        apart = np.median(np.hypot(*(back.pull(there.pull(grid)) - grid).T))
        moved = np.median(np.hypot(*there.displacement.at(grid).T))  # type: ignore[union-attr]
        print(f"| calcium frames, both directions | {smoothing:.0%} | {one:.2f} / {other:.2f} | "
              f"{'yes' if max(one, other) < flow_fields.FLOW_AGREEMENT else 'no'} | {apart:.2f} | {moved:.2f} |",
              flush=True)
    rounds = convert_if_rounds(workdir / "if")
    for a, b in ((0, 1), (1, 2), (0, 2)):
        _, fields = affine_and_fields(rounds[a], rounds[b])
        for smoothing, disagreement, _ in fields:
            print(f"| IF rounds {a + 1} <- {b + 1} | {smoothing:.0%} | {disagreement:.2f} | "
                  f"{'yes' if disagreement < flow_fields.FLOW_AGREEMENT else 'no'} | - | - |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        sections(workdir)
        one_signal(workdir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The `slimreg` command: argument parsing only; every subcommand calls the package.

Errors the user can fix print one message naming the file and the fix, and exit with status 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from slimreg import __version__
from slimreg.errors import SlimregError

EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Handler, str]] = {}


def command(name: str, help_text: str) -> Callable[[Callable[[argparse.ArgumentParser], None]],
                                                    Callable[[argparse.ArgumentParser], None]]:
    """Register ``add_arguments`` for subcommand ``name``; its handler is ``run_<name>`` below."""

    def decorate(add_arguments: Callable[[argparse.ArgumentParser], None]):
        COMMANDS[name] = (add_arguments, globals()["run_" + name.replace("-", "_")], help_text)
        return add_arguments

    return decorate


def run_info(args: argparse.Namespace) -> int:
    from slimreg.io.probe import probe

    results = [probe(path).to_json() for path in args.images]
    print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    return 0


@command("info", "describe images from their headers (JSON)")
def _info_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")


def run_demo_data(args: argparse.Namespace) -> int:
    from slimreg.demo import make_demo_data

    sheet = make_demo_data(args.outdir, size=args.size, frames=args.frames, seed=args.seed)
    print(f"demo data written; samplesheet: {sheet}")
    return 0


@command("demo-data", "write a small demo series with known transforms and a samplesheet")
def _demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--size", type=int, default=1024, help="side of the slide images in px (default 1024)")
    parser.add_argument("--frames", type=int, default=40, help="frames per recording session (default 40)")
    parser.add_argument("--seed", type=int, default=0)


def run_validate(args: argparse.Namespace) -> int:
    from slimreg.samplesheet import read_samplesheet

    sheet = read_samplesheet(args.samplesheet)
    for sample in sheet.samples():
        print(f"{sample.name}: reference {sample.reference.image.name}, {len(sample.moving)} moving image(s)")
    print(f"{sheet.path}: OK ({len(sheet.rows)} images)")
    return 0


@command("validate", "check a samplesheet and its images; list every problem")
def _validate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("samplesheet", type=Path)


def _add_registration_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `register`, `plan` and `run`."""
    from slimreg.register.settings import DEFAULT_ENGINE, DEFAULT_PRESET, ENGINES, PRESET_ORDER

    group = parser.add_argument_group("registration")
    group.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE, help=f"default {DEFAULT_ENGINE}")
    group.add_argument("--preset", choices=PRESET_ORDER, default=DEFAULT_PRESET,
                       help=f"working resolutions (default {DEFAULT_PRESET})")
    group.add_argument("--channel", help="registration channel name or index (default: DAPI/Hoechst, else first; "
                       "RGB: optical density)")
    group.add_argument("--non-rigid", action=argparse.BooleanOptionalAction, default=True,
                       help="estimate a smooth displacement after the affine (default on)")
    group.add_argument("--micro", action=argparse.BooleanOptionalAction, default=True,
                       help="refine at --micro-dim resolution (default on)")
    group.add_argument("--processing-dim", type=int, help="long side (px) for feature matching (preset)")
    group.add_argument("--non-rigid-dim", type=int, help="long side (px) for the displacement field (preset)")
    group.add_argument("--micro-dim", type=int, help="long side (px) for the refinement (preset)")
    group.add_argument("--transform-model", choices=("affine", "similarity"), default="affine")
    group.add_argument("--tile-size", type=int, default=1024, help="output tile size in px (default 1024)")
    group.add_argument("--compression", choices=("deflate", "zstd", "lzw", "jpeg", "none"), default="deflate")


def registration_settings(args: argparse.Namespace):
    from slimreg.register.settings import RegistrationSettings

    return RegistrationSettings.from_preset(
        args.preset, engine=args.engine, channel=args.channel, non_rigid=args.non_rigid, micro=args.micro,
        processing_dim=args.processing_dim, non_rigid_dim=args.non_rigid_dim, micro_dim=args.micro_dim,
        transform_model=args.transform_model, tile_size=args.tile_size, compression=args.compression)


def run_register(args: argparse.Namespace) -> int:
    from slimreg.memory import MemoryTracker
    from slimreg.register.batch import register_batch

    settings = registration_settings(args)
    with MemoryTracker(debug=args.memory_debug) as tracker:
        batch = register_batch(args.reference, args.moving, args.outdir, settings, tracker=tracker,
                               keep_work=args.keep_work, include_reference=args.include_reference)
        tracker.report()
    for result in batch.images:
        if result.status == "ok":
            print(f"registered {result.stem}: {result.registered}")
        else:
            print(f"FAILED {result.stem}: {result.error}", file=sys.stderr)
    return 1 if batch.failed else 0


@command("register", "register moving images onto a reference and write registered OME-TIFFs")
def _register_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--moving", type=Path, nargs="+", required=True, metavar="IMAGE")
    parser.add_argument("--outdir", type=Path, required=True)
    parser.add_argument("--include-reference", action="store_true",
                        help="also write the reference, re-encoded, so the output folder holds the whole series")
    parser.add_argument("--keep-work", action="store_true", help="keep the engine's scratch folder")
    parser.add_argument("--memory-debug", action="store_true", help="print RSS before/after each task")
    _add_registration_options(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimreg", description="Register series of very large microscopy "
                                     "images at a bounded, predicted memory cost.")
    parser.add_argument("--version", action="version", version=f"slimreg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (add_arguments, _, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = COMMANDS[args.command][1]
    try:
        return handler(args)
    except SlimregError as error:
        if args.debug:
            raise
        print(f"slimreg {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"slimreg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

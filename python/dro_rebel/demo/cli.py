"""The ``demo`` and ``study`` sub-commands of ``dro-rebel`` (registered by ``dro_rebel.cli``)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_demo_parser", "add_study_parser", "main"]


def add_demo_parser(subparsers) -> None:
    """``dro-rebel demo [--preset default|paper|test] [--out DIR]``."""
    from dro_rebel.demo.presets import PRESETS

    parser = subparsers.add_parser(
        "demo",
        help="align SmolLM2-135M-Instruct to diverse preferences: robust vs plain REBEL/DPO (offline)",
        description="Train REBEL, chi2-/KL-/Wasserstein-REBEL, DPO and robust DPO from the same "
        "start, evaluate them under held-out preference mixtures and shifted prompts, train plain "
        "and robust reward heads, and write report.json and a plot.",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="default: 2 CPU cores, about 15 minutes; paper: the larger study, for a GPU")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="where report.json and the plot go")
    parser.add_argument("--build-dir", type=Path, default=Path("build"),
                        help="where the dequantised SmolLM2 is cached (models/)")
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from dro_rebel.demo.presets import PRESETS
    from dro_rebel.demo.run import run_demo

    run_demo(PRESETS[args.preset], args.out, build_dir=args.build_dir)
    return 0


def add_study_parser(subparsers) -> None:
    """``dro-rebel study radius [...]``."""
    from dro_rebel.study import radius

    parser = subparsers.add_parser("study", help="controlled studies (CPU, seconds)")
    studies = parser.add_subparsers(dest="study", required=True)
    radius.add_parser(studies)


def main(argv=None) -> int:
    """``python -m dro_rebel.demo``: the two sub-commands without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="python -m dro_rebel.demo")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_demo_parser(subparsers)
    add_study_parser(subparsers)
    args = parser.parse_args(argv)
    return args.handler(args)

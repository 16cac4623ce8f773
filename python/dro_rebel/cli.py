"""The ``dro-rebel`` command line.

    dro-rebel train CONFIG.toml [--resume]     train with any of the three trainers
    dro-rebel weights LOSSES [-o OUT] ...      worst-case weights of losses in a .npy/.csv file
    dro-rebel demo [--preset NAME] [--out DIR] the offline demo (docs/demo.md in the repository)
    dro-rebel study radius [--out DIR]         the radius-coverage study (dro_rebel.study)
    dro-rebel study shift [--out DIR]          the group-shift study (dro_rebel.study)
    dro-rebel --version | --debug COMMAND ...

Each subcommand is one ``add_<name>_parser(subparsers)`` function that declares its
arguments and sets ``func`` to the function running it, and ``extras`` to the extras of
pyproject.toml it needs (``dro_rebel._extras``); :data:`SUBCOMMANDS` lists them, so a new
subcommand is one function and one line there. Building the parser imports nothing beyond
numpy: heavy imports (torch, transformers, scipy, the demo's packages) happen inside the
functions that run a subcommand, so ``--help`` works in the bare install, and a subcommand
whose extra is missing says which to install.

An error is one line, ``dro-rebel <command>: error: <what went wrong>``, exit status 1
(argparse's usage errors: 2); ``--debug`` shows the traceback instead.

The ``train`` config's TOML format, every key with an example: docs/train-config.md in the
repository.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from dro_rebel._extras import extra_providing, missing_modules, needs_extras
from dro_rebel.demo.cli import add_demo_parser, add_study_parser

__all__ = ["main", "build_parser", "run", "SUBCOMMANDS"]

TRAIN_CONFIG_DOC = "docs/train-config.md"
"""Where the train config's TOML format is documented, relative to the repository's root."""


# -- train -----------------------------------------------------------------------------------


def add_train_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train from a TOML config",
        # Written out, not wrapped by argparse, which could split the file's name at its hyphen.
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a policy (REBEL, DPO) or a reward model from a TOML config.\n\n"
        "The config names the trainer and the model, a [data] table of dataset files and a\n"
        "[config] table of the trainer config's fields. Every key, with an example:\n"
        f"{TRAIN_CONFIG_DOC} in the repository.",
    )
    parser.add_argument("config", type=Path, help="the TOML file (its format: see above)")
    parser.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in output_dir")
    parser.set_defaults(func=run_train, extras=("torch",))


def run_train(args: argparse.Namespace) -> int:
    spec = _read_toml(args.config)
    base = args.config.resolve().parent
    trainer = _build_trainer(spec, base)
    metrics = trainer.train(resume_from_checkpoint=args.resume or None)
    print(" ".join(f"{key}={value:.6g}" for key, value in metrics.items() if isinstance(value, float)))
    return 0


def _read_toml(path: Path) -> Dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.9 and 3.10
        import tomli as tomllib
    with path.open("rb") as handle:
        return tomllib.load(handle)


def _build_trainer(spec: Dict[str, Any], base: Path) -> Any:
    """The trainer a parsed TOML config describes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from dro_rebel.torch import (
        DroRebelConfig,
        DroRebelTrainer,
        RobustDPOConfig,
        RobustDPOTrainer,
        RobustRewardConfig,
        RobustRewardTrainer,
    )

    kind = spec.get("trainer")
    if kind not in ("rebel", "dpo", "reward"):
        raise SystemExit(f"config: trainer must be 'rebel', 'dpo' or 'reward', got {kind!r}")
    if "model" not in spec:
        raise SystemExit("config: `model` (a local Hugging Face model directory) is required")
    model_path = _resolve(spec["model"], base)
    tokenizer = AutoTokenizer.from_pretrained(_resolve(spec.get("tokenizer", spec["model"]), base))
    data = spec.get("data", {})
    if "train" not in data:
        raise SystemExit("config: [data] train = '...' is required")
    train = _load_dataset(_resolve(data["train"], base))
    evaluation = _load_dataset(_resolve(data["eval"], base)) if "eval" in data else None
    fields = dict(spec.get("config", {}))
    if "output_dir" in fields:
        fields["output_dir"] = _resolve(fields["output_dir"], base)
    # Master weights in float32 whatever dtype the checkpoint was saved in: bf16/fp16 in the
    # config run the forward under autocast, and a gradient scaler cannot unscale fp16 gradients.
    dtype = torch.float32
    if kind == "reward":
        model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1, torch_dtype=dtype)
        model.config.pad_token_id = tokenizer.pad_token_id
        return RobustRewardTrainer(model, tokenizer, RobustRewardConfig.from_dict(fields), train, evaluation)
    model = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=dtype)
    if kind == "dpo":
        return RobustDPOTrainer(model, tokenizer, RobustDPOConfig.from_dict(fields), train, evaluation)
    if "reward_fn" not in spec:
        raise SystemExit("config: trainer = 'rebel' needs reward_fn = 'module:function'")
    reward_fn = _import_callable(spec["reward_fn"], base)
    return DroRebelTrainer(model, tokenizer, DroRebelConfig.from_dict(fields), train, reward_fn, evaluation)


def _resolve(path: str, base: Path) -> str:
    return str(base / path) if not Path(path).is_absolute() else path


def _load_dataset(path: str) -> Any:
    import datasets

    loaders = {
        ".json": datasets.Dataset.from_json,
        ".jsonl": datasets.Dataset.from_json,
        ".csv": datasets.Dataset.from_csv,
        ".parquet": datasets.Dataset.from_parquet,
    }
    suffix = Path(path).suffix
    if suffix not in loaders:
        raise SystemExit(f"config: {path}: data files must be .json, .jsonl, .csv or .parquet")
    return loaders[suffix](path)


def _import_callable(reference: str, base: Path) -> Callable:
    module_name, _, attribute = reference.partition(":")
    if not attribute:
        raise SystemExit(f"config: reward_fn must be 'module:function', got {reference!r}")
    if str(base) not in sys.path:
        sys.path.insert(0, str(base))
    return getattr(importlib.import_module(module_name), attribute)


# -- weights ---------------------------------------------------------------------------------


def add_weights_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "weights",
        help="worst-case weights of losses in a file",
        description="Worst-case weights q* of the losses in a .npy or .csv file (one problem, or one per row).",
    )
    parser.add_argument("losses", type=Path, help="a .npy file, or a .csv/.txt file of numbers")
    parser.add_argument("-a", "--ambiguity", default="chi2", help="kl, chi2, cvar, tv or wasserstein (default chi2)")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument(
        "-r",
        "--radius",
        type=_radius,
        help="size of the ambiguity set: a number, or 'calibrated' (chi2, kl: an upper confidence bound on the mean)",
    )
    size.add_argument("--penalty", type=float, help="a fixed dual variable (penalised form)")
    size.add_argument("--alpha", type=float, help="CVaR level in (0, 1]")
    parser.add_argument("--confidence", type=float, help="the level of --radius calibrated, in (0.5, 1) (default 0.95)")
    parser.add_argument("--groups", type=Path, help="a .npy/.csv file of integer group labels")
    parser.add_argument("--reference", type=Path, help="a .npy/.csv file of the nominal distribution")
    parser.add_argument("--features", type=Path, help="wasserstein: a .npy/.csv file of (n, d) sample features")
    parser.add_argument("-o", "--output", type=Path, help="write the weights here (.npy or .csv) instead of stdout")
    parser.set_defaults(func=run_weights)


def run_weights(args: argparse.Namespace) -> int:
    import dro_rebel

    weights = dro_rebel.robust_weights(
        _read_array(args.losses),
        args.ambiguity,
        radius=args.radius,
        penalty=args.penalty,
        alpha=args.alpha,
        confidence=args.confidence,
        groups=None if args.groups is None else _read_array(args.groups).astype(np.int64),
        reference=None if args.reference is None else _read_array(args.reference),
        features=None if args.features is None else _read_matrix(args.features),
    )
    # One weight per line, or one problem per line for 2-D losses.
    if args.output is None:
        np.savetxt(sys.stdout, weights, fmt="%.17g", delimiter=",")
    elif args.output.suffix == ".npy":
        np.save(args.output, weights)
    else:
        np.savetxt(args.output, weights, fmt="%.17g", delimiter=",")
    return 0


def _radius(text: str) -> Union[float, str]:
    """``-r 0.1`` or ``-r calibrated``, as ``robust_weights`` takes them."""
    if text == "calibrated":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'calibrated', got {text!r}") from None


def _read_array(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path)
    array = np.loadtxt(path, delimiter=",", ndmin=1)
    # A single column of a CSV file is one problem, not n problems of size 1.
    return array[:, 0] if array.ndim == 2 and array.shape[1] == 1 else array


def _read_matrix(path: Path) -> np.ndarray:
    """One row per sample, also when there is a single column."""
    array = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",", ndmin=2)
    return array.reshape(len(array), -1)


# -- the entry point -------------------------------------------------------------------------

SUBCOMMANDS: List[Callable[[Any], None]] = [
    add_train_parser,
    add_weights_parser,
    add_demo_parser,
    add_study_parser,
]
"""Each adds one subcommand to the parser: to add a subcommand, write ``add_<name>_parser``
(setting ``func``, and ``extras`` where it needs any) and list it here."""


def build_parser(
    subcommands: Sequence[Callable[[Any], None]] = SUBCOMMANDS, prog: str = "dro-rebel"
) -> argparse.ArgumentParser:
    """The parser of ``dro-rebel`` (``python -m dro_rebel.demo`` builds one of a few subcommands)."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Distributionally robust alignment: worst-case weights and robust training."
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parser in subcommands:
        add_parser(subparsers)
    _add_debug_flag(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """The ``dro-rebel`` entry point: its exit status (argparse's usage errors exit with 2)."""
    return run(build_parser(), argv)


def run(parser: argparse.ArgumentParser, argv: Optional[List[str]] = None) -> int:
    """Parse ``argv`` and run the subcommand it names: 0, or 1 after a one-line error on stderr.

    A subcommand whose extras are missing stops before it starts; one that fails prints what
    went wrong (``--debug``: the traceback instead). A subcommand may stop with
    ``SystemExit("message")``, which prints the same way.
    """
    args = parser.parse_args(argv)
    prog = getattr(args, "prog", parser.prog)
    missing = missing_modules(getattr(args, "extras", ()))
    if missing:
        return _error(prog, needs_extras(args.extras, missing))
    try:
        return args.func(args)
    except SystemExit as stop:
        if not isinstance(stop.code, str) or args.debug:
            raise
        return _error(prog, stop.code)
    except Exception as error:
        if args.debug:
            raise
        return _error(prog, _describe(error))


def _error(prog: str, message: str) -> int:
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    return 1


def _describe(error: Exception) -> str:
    """What went wrong, for one line: the message of an error of the input or the environment,
    the missing extra of a missing module, and the type of anything else (which ``--debug``
    shows in full)."""
    if isinstance(error, ModuleNotFoundError) and error.name:
        extra = extra_providing(error.name.partition(".")[0])
        if extra is not None:
            return needs_extras([extra], [error.name])
    if isinstance(error, (ValueError, OSError)) and str(error):
        return str(error)
    return f"{type(error).__name__}: {error} (--debug shows the traceback)"


def _add_debug_flag(parser: argparse.ArgumentParser, top: bool = True) -> None:
    """``--debug`` on the command and on every subcommand, so that it may follow the subcommand
    too; each parser also records its ``prog`` (``dro-rebel study radius``) for its errors.

    A subcommand's parser copies every value it has onto the command's namespace, defaults
    included: only the top parser gives ``debug`` a default, or a subcommand would reset a
    ``--debug`` given before it."""
    parser.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="on an error, show the full traceback"
    )
    parser.set_defaults(prog=parser.prog, **({"debug": False} if top else {}))
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                _add_debug_flag(subparser, top=False)


def _version() -> str:
    """``dro-rebel 0.1.0 (release build, avx2 kernels)``: the installed distribution's version
    (the extension's when run from a source tree), the extension's build profile and the
    kernels it runs on this processor (``dro_rebel._core.kernels()``), for bug reports."""
    from dro_rebel import _core

    try:
        number = importlib.metadata.version("dro-rebel")
    except importlib.metadata.PackageNotFoundError:
        number = _core.__version__
    return f"dro-rebel {number} ({_core.build_profile} build, {_core.kernels()} kernels)"


if __name__ == "__main__":
    sys.exit(main())

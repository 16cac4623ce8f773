"""The command line in the bare install (the wheel and numpy): every parser builds, `weights` runs,
and a subcommand that needs an extra names it in one line.

The bare install is simulated in a subprocess whose ``sys.modules`` maps every extra's top-level
module to None, which makes importing it fail as if it were not installed (tests/wheel_check.sh
checks the real thing: a fresh venv with the wheel and numpy only).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dro_rebel
from dro_rebel import robust_weights
from dro_rebel.cli import TRAIN_CONFIG_DOC

# Written out here, not read from dro_rebel._extras: the test must not inherit a gap of that table.
NOT_INSTALLED = [
    "torch",
    "transformers",
    "tokenizers",
    "datasets",
    "tqdm",
    "trl",
    "peft",
    "accelerate",
    "scipy",
    "matplotlib",
    "sentence_transformers",
    "yaml",
    "pandas",
]

RUNNER = f"""
import sys
for name in {NOT_INSTALLED!r}:
    sys.modules[name] = None
from dro_rebel.cli import main
sys.exit(main(sys.argv[1:]))
"""


def python(code: str, *argv: str) -> subprocess.CompletedProcess:
    """``python -c CODE ARGV``, importing the dro_rebel these tests import."""
    package_root = str(Path(dro_rebel.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": package_root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=60)


def bare(*argv: str) -> subprocess.CompletedProcess:
    """``dro-rebel ARGV`` in a process where no extra is importable."""
    return python(RUNNER, *argv)


@pytest.mark.parametrize(
    "argv",
    [[], ["train"], ["weights"], ["demo"], ["study"], ["study", "radius"], ["study", "shift"]],
    ids=lambda argv: " ".join(argv) or "dro-rebel",
)
def test_every_help_builds_without_the_extras(argv):
    result = bare(*argv, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: dro-rebel"), result.stdout
    assert result.stderr == ""


def test_weights_runs_without_the_extras(tmp_path):
    losses = np.array([0.5, 2.0, 1.0, 3.0])
    np.save(tmp_path / "losses.npy", losses)
    result = bare("weights", str(tmp_path / "losses.npy"), "-a", "kl", "-r", "0.1")
    assert result.returncode == 0, result.stderr
    printed = np.array([float(line) for line in result.stdout.split()])
    np.testing.assert_array_equal(printed, robust_weights(losses, "kl", radius=0.1))


@pytest.mark.parametrize(
    "argv, prog, install",
    [
        (
            ["study", "radius"],
            "dro-rebel study radius",
            'needs the study extra (scipy, matplotlib, tqdm not installed): pip install "dro-rebel[study]"',
        ),
        (["study", "shift", "--points", "3"], "dro-rebel study shift", 'pip install "dro-rebel[study]"'),
        (
            ["demo"],
            "dro-rebel demo",
            "needs the torch and demo extras (torch, transformers, tokenizers and ",
        ),
        (["demo"], "dro-rebel demo", 'pip install "dro-rebel[torch,demo]"'),
        (["train", "config.toml"], "dro-rebel train", 'pip install "dro-rebel[torch]"'),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(argv, prog, install):
    result = bare(*argv)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"{prog}: error: "), result.stderr
    assert install in result.stderr


def test_the_parser_imports_no_extra():
    """Also where the extras are installed: building the parser and --version import none of them."""
    code = (
        "import sys\n"
        "from dro_rebel.cli import build_parser\n"
        "build_parser().format_help()\n"
        f"print(sorted(name for name in {NOT_INSTALLED!r} if name in sys.modules))\n"
    )
    result = python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_train_help_points_to_the_toml_format():
    result = bare("train", "--help")
    assert result.returncode == 0, result.stderr
    assert f"\n{TRAIN_CONFIG_DOC} in the repository" in result.stdout
    assert (Path(__file__).resolve().parent.parent / TRAIN_CONFIG_DOC).is_file()

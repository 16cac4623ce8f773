"""The command line's errors: one line on stderr, exit status 1, no traceback; `--debug` (before or
after the subcommand) shows the traceback instead; `--version`."""

from __future__ import annotations

import importlib.metadata
import re

import numpy as np
import pytest

import dro_rebel
from dro_rebel import LossesError
from dro_rebel.cli import build_parser, main, run


def one_line_error(capsys, prog: str = "dro-rebel weights") -> str:
    """The error printed, checked to be one line on stderr and nothing on stdout."""
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: "), err
    assert "Traceback" not in err
    return err[len(f"{prog}: error: ") : -1]


def test_bad_losses_are_one_line(tmp_path, capsys):
    np.save(tmp_path / "losses.npy", np.array([0.5, np.nan]))
    assert main(["weights", str(tmp_path / "losses.npy"), "-r", "0.1"]) == 1
    assert one_line_error(capsys) == "losses must be finite, got NaN at index 1"


def test_a_missing_file_is_one_line(tmp_path, capsys):
    assert main(["weights", str(tmp_path / "nowhere.npy"), "-r", "0.1"]) == 1
    assert "No such file or directory" in one_line_error(capsys)


def test_an_unreadable_csv_is_one_line(tmp_path, capsys):
    (tmp_path / "losses.csv").write_text("0.5\nabc\n")
    assert main(["weights", str(tmp_path / "losses.csv"), "-r", "0.1"]) == 1
    assert "abc" in one_line_error(capsys)


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(tmp_path, where):
    np.save(tmp_path / "losses.npy", np.array([0.5, np.nan]))
    argv = ["weights", str(tmp_path / "losses.npy"), "-r", "0.1"]
    with pytest.raises(LossesError, match="losses must be finite"):
        main(["--debug", *argv] if where == "before" else [*argv, "--debug"])


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    printed = capsys.readouterr().out.strip()
    try:
        number = importlib.metadata.version("dro-rebel")
    except importlib.metadata.PackageNotFoundError:
        number = dro_rebel.__version__
    assert printed == f"dro-rebel {number} ({dro_rebel.build_profile} build, {dro_rebel._core.kernels()} kernels)"
    assert re.fullmatch(r"dro-rebel \S+ \((release|debug) build, (avx2|portable) kernels\)", printed), printed


def failing(exception: BaseException):
    """A parser with one subcommand, ``fail``, that raises ``exception``."""

    def add_fail_parser(subparsers):
        parser = subparsers.add_parser("fail")

        def raise_it(args):
            raise exception

        parser.set_defaults(func=raise_it)

    return build_parser([add_fail_parser])


@pytest.mark.parametrize(
    "exception, message",
    [
        (
            SystemExit("config: trainer must be 'rebel', 'dpo' or 'reward'"),
            "config: trainer must be 'rebel', 'dpo' or 'reward'",
        ),
        (ValueError("a message\nover two lines"), "a message over two lines"),
        (KeyError("chosen"), "KeyError: 'chosen' (--debug shows the traceback)"),
        (
            ModuleNotFoundError("No module named 'peft'", name="peft"),
            'needs the peft extra (peft not installed): pip install "dro-rebel[peft]"',
        ),
        (
            ModuleNotFoundError("No module named 'foo'", name="foo"),
            "ModuleNotFoundError: No module named 'foo' (--debug shows the traceback)",
        ),
    ],
)
def test_what_a_subcommand_raises_is_one_line(capsys, exception, message):
    assert run(failing(exception), ["fail"]) == 1
    assert one_line_error(capsys, "dro-rebel fail") == message


def test_debug_raises_what_the_subcommand_raised():
    with pytest.raises(KeyError):
        run(failing(KeyError("chosen")), ["fail", "--debug"])
    with pytest.raises(SystemExit, match="config"):
        run(failing(SystemExit("config: ...")), ["--debug", "fail"])


def test_usage_errors_stay_argparses(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["weights"])
    assert stop.value.code == 2
    assert "the following arguments are required" in capsys.readouterr().err

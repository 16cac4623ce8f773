"""The extras the command line names (dro_rebel._extras) are pyproject.toml's, and the modules it
looks up for each are the ones those extras install."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from dro_rebel._extras import EXTRA_MODULES, extra_providing, install_command, missing_modules, needs_extras

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
ALL_EXTRAS_INSTALLED = all(importlib.util.find_spec(name) for name in ("torch", "scipy", "sentence_transformers"))


def test_every_extra_named_is_one_of_pyproject():
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    assert set(EXTRA_MODULES) <= set(extras)


@pytest.mark.skipif(not ALL_EXTRAS_INSTALLED, reason="the extras are not installed (make setup installs them all)")
@pytest.mark.parametrize("extra", sorted(EXTRA_MODULES))
def test_the_modules_of_each_extra_are_found_where_it_is_installed(extra):
    assert missing_modules([extra]) == []


@pytest.mark.skipif(not ALL_EXTRAS_INSTALLED, reason="the demo's presets import torch")
def test_the_demos_preset_choices_are_its_presets():
    from dro_rebel.demo.cli import PRESET_NAMES
    from dro_rebel.demo.presets import PRESETS

    assert sorted(PRESET_NAMES) == sorted(PRESETS)


def test_the_message_names_the_extra_and_the_command_that_installs_it():
    assert install_command(["torch", "demo"]) == 'pip install "dro-rebel[torch,demo]"'
    assert (
        needs_extras(["study"], ["scipy"])
        == 'needs the study extra (scipy not installed): pip install "dro-rebel[study]"'
    )
    assert needs_extras(["torch", "demo"], ["a", "b", "c", "d", "e"]) == (
        'needs the torch and demo extras (a, b, c and 2 more not installed): pip install "dro-rebel[torch,demo]"'
    )
    assert extra_providing("peft") == "peft"
    assert extra_providing("pandas") is None

"""The hand-written stub python/dro_rebel/_core.pyi matches the built extension."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import dro_rebel


def test_package_is_typed():
    assert (Path(dro_rebel.__file__).parent / "py.typed").is_file()


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_core_stub_matches_the_extension():
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "dro_rebel._core"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_stub_carries_the_extensions_docstring():
    # Editors show the stub's docstring, Python the extension's (rust/python.rs): one text.
    stub = Path(dro_rebel.__file__).parent / "_core.pyi"
    functions = {node.name: node for node in ast.parse(stub.read_text()).body if isinstance(node, ast.FunctionDef)}
    assert ast.get_docstring(functions["robust_weights"]) == inspect.cleandoc(dro_rebel._core.robust_weights.__doc__)

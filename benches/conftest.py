"""Benchmarks refuse a debug build: its timings say nothing about the library."""

from __future__ import annotations

import pytest

import dro_rebel


@pytest.fixture(autouse=True)
def _release_build_only():
    if dro_rebel.build_profile != "release":
        pytest.skip(
            f"dro_rebel._core is a {dro_rebel.build_profile} build: rebuild it with "
            "`make develop` (maturin develop --release) before benchmarking"
        )

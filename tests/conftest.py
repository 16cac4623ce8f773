"""Hypothesis profiles, chosen by HYPOTHESIS_PROFILE: "fast" (the default, for every run of
`make test`) or "thorough" (many more examples, for a solver change):

    HYPOTHESIS_PROFILE=thorough .venv/bin/python -m pytest tests
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "fast",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

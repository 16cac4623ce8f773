"""Fixtures of the torch tests: a tiny Llama and a byte-level BPE tokenizer trained here.

Nothing is ever downloaded: ``HF_HUB_OFFLINE`` is set before transformers is imported, the
tokenizer is trained on the strings of ``tiny_models``, and the models are built from a
config. Without the optional torch stack installed, nothing here is collected.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if not all(importlib.util.find_spec(name) for name in ("torch", "transformers", "tokenizers")):
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture
def solves(monkeypatch):
    """Every (losses, groups, weights) the robust reduction solves, in order."""
    import numpy as np

    import dro_rebel
    from dro_rebel.torch import robust_loss

    calls = []
    solve = dro_rebel.robust_weights

    def recording(losses, ambiguity, **kwargs):
        weights = solve(losses, ambiguity, **kwargs)
        calls.append((np.array(losses), kwargs.get("groups"), np.array(weights)))
        return weights

    monkeypatch.setattr(robust_loss.dro_rebel, "robust_weights", recording)
    return calls


@pytest.fixture(scope="session")
def tokenizer():
    from tiny_models import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture
def model(tokenizer):
    from tiny_models import tiny_llama

    return tiny_llama(tokenizer)


@pytest.fixture
def prompts():
    from tiny_models import PROMPTS

    return [{"prompt": prompt, "group": i % 2} for i, prompt in enumerate(PROMPTS)]

"""Fixtures of the torch tests: a tiny Llama and a byte-level BPE tokenizer trained here.

Nothing is ever downloaded: ``HF_HUB_OFFLINE`` is set before transformers is imported, the
tokenizer is trained on the strings below, and the models are built from a config.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tiny_models import PAIRS, PROMPTS, tiny_llama, tiny_reward_model, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def model(tokenizer):
    return tiny_llama(tokenizer)


@pytest.fixture
def reward_model(tokenizer):
    return tiny_reward_model(tokenizer)


@pytest.fixture
def pairs():
    return [dict(row) for row in PAIRS]


@pytest.fixture
def prompts():
    return [{"prompt": prompt, "group": i % 2} for i, prompt in enumerate(PROMPTS)]

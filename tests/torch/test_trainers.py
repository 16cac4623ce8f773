"""The three trainers on a tiny Llama: the loss falls on a fixed batch (full and LoRA), a run
logs, evaluates and checkpoints, and NaN losses are reported, never folded into the weights."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import PAIRS, tiny_bert_reward_model, tiny_llama, tiny_reward_model

from dro_rebel.torch import (
    DroRebelConfig,
    DroRebelTrainer,
    RobustDPOConfig,
    RobustDPOTrainer,
    RobustRewardConfig,
    RobustRewardTrainer,
)


def short_reward(prompts, completions):
    """Prefers short completions, on a scale that keeps REBEL's regression tame."""
    return [-len(text) / 10.0 for text in completions]


def _falls(trainer, batch, steps=8):
    losses = [trainer.train_step(batch)["loss"] for _ in range(steps)]
    assert losses[-1] < 0.8 * losses[0], losses
    return losses


def _common(tmp_path, **overrides):
    """Config fields of every test: robust (chi2 over the two groups), quiet, short."""
    fields = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        max_steps=3,
        disable_tqdm=True,
        ambiguity="chi2",
        radius=0.3,
        group_column="group",
    )
    fields.update(overrides)
    return fields


@pytest.mark.parametrize("use_peft", [False, True])
def test_dpo_loss_falls_on_a_fixed_batch(tokenizer, tmp_path, use_peft):
    config = RobustDPOConfig(learning_rate=1e-2, use_peft=use_peft, **_common(tmp_path))
    trainer = RobustDPOTrainer(tiny_llama(tokenizer), tokenizer, config, PAIRS)
    _falls(trainer, trainer.next_batch(1))


@pytest.mark.parametrize("use_peft", [False, True])
def test_reward_loss_falls_on_a_fixed_batch(tokenizer, tmp_path, use_peft):
    config = RobustRewardConfig(learning_rate=1e-2 if use_peft else 3e-3, use_peft=use_peft, **_common(tmp_path))
    trainer = RobustRewardTrainer(tiny_reward_model(tokenizer), tokenizer, config, PAIRS)
    _falls(trainer, trainer.next_batch(1))


def test_reward_model_on_an_encoder(tokenizer, tmp_path):
    config = RobustRewardConfig(learning_rate=1e-2, **_common(tmp_path))
    trainer = RobustRewardTrainer(tiny_bert_reward_model(tokenizer), tokenizer, config, PAIRS)
    _falls(trainer, trainer.next_batch(1))


@pytest.mark.parametrize("use_peft, reference", [(False, "sampler"), (True, "sampler"), (False, "initial")])
def test_rebel_loss_falls_on_a_fixed_rollout(tokenizer, prompts, tmp_path, use_peft, reference):
    config = DroRebelConfig(
        learning_rate=1e-3 if use_peft else 1e-4,
        use_peft=use_peft,
        log_ratio_reference=reference,
        max_new_tokens=8,
        eta=1.0,
        **_common(tmp_path),
    )
    trainer = DroRebelTrainer(tiny_llama(tokenizer), tokenizer, config, prompts, short_reward)
    rollout = trainer.next_batch(1)
    assert rollout["input_ids"].shape[0] == 2 * 8 and len(rollout["completions"]) == 16
    if reference == "sampler":
        # pi_t's own log-probs: before any update the log-ratios are zero.
        first = trainer.compute_losses(rollout)[0]
        expected = (rollout["rewards"][:8] - rollout["rewards"][8:]) ** 2
        torch.testing.assert_close(first.detach(), expected, rtol=1e-4, atol=1e-4)
    _falls(trainer, rollout)


@pytest.mark.parametrize("form, use_peft", [("wdpo", False), ("rebel", True)])
def test_gradient_penalty_trains(tokenizer, tmp_path, form, use_peft):
    common = _common(tmp_path, ambiguity="wasserstein", radius=0.01, gradient_penalty=form, use_peft=use_peft)
    trainer = RobustDPOTrainer(tiny_llama(tokenizer), tokenizer, RobustDPOConfig(learning_rate=1e-2, **common), PAIRS)
    _falls(trainer, trainer.next_batch(1))
    assert trainer.robust_loss.last.value > trainer.robust_loss.last.mean


def test_a_run_logs_evaluates_and_checkpoints(tokenizer, tmp_path):
    config = RobustDPOConfig(
        learning_rate=1e-2,
        eval_steps=2,
        save_steps=2,
        per_device_eval_batch_size=3,
        **_common(tmp_path, per_device_train_batch_size=4),
    )
    trainer = RobustDPOTrainer(tiny_llama(tokenizer), tokenizer, config, PAIRS, eval_dataset=PAIRS)
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == [1, 2, 3]
    evals = [r for r in records if "eval/loss" in r]
    assert [r["step"] for r in evals] == [2, 3]
    assert {"eval/accuracy", "eval/worst_group_loss", "eval/group_1/loss"} <= set(evals[0])
    assert {"robust/ess", "robust/value", "robust/mean"} <= set(records[0])
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*.pt")) == ["checkpoint-2.pt", "checkpoint-3.pt"]
    assert (tmp_path / "model" / "config.json").exists()


def test_rebel_evaluates_mean_reward_per_group(tokenizer, prompts, tmp_path):
    config = DroRebelConfig(max_new_tokens=4, per_device_eval_batch_size=4, **_common(tmp_path))
    trainer = DroRebelTrainer(tiny_llama(tokenizer), tokenizer, config, prompts, short_reward, prompts)
    state = torch.get_rng_state()
    first, second = trainer.evaluate(), trainer.evaluate()
    assert first == second  # seeded sampling
    assert torch.equal(state, torch.get_rng_state())  # and the training RNG untouched
    assert {"eval/reward", "eval/group_0/reward", "eval/worst_group_reward"} <= set(first)


def nan_for_second_prompt(prompts, completions):
    return [float("nan") if i == 1 else 0.0 for i in range(len(completions))]


def test_nan_loss_skips_the_step(tokenizer, prompts, tmp_path):
    config = DroRebelConfig(max_new_tokens=4, nonfinite="skip", **_common(tmp_path, max_steps=1))
    trainer = DroRebelTrainer(tiny_llama(tokenizer), tokenizer, config, prompts, nan_for_second_prompt)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.warns(RuntimeWarning, match=r"step 1: non-finite loss at batch position\(s\) \[1\]"):
        metrics = trainer.train()
    assert metrics["skipped"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    events = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "nonfinite_loss" and events[0]["positions"] == [1]
    assert "dataset rows" in events[0]["message"]


def test_nan_loss_stops_the_run(tokenizer, prompts, tmp_path):
    config = DroRebelConfig(max_new_tokens=4, nonfinite="stop", **_common(tmp_path))
    trainer = DroRebelTrainer(tiny_llama(tokenizer), tokenizer, config, prompts, nan_for_second_prompt)
    with pytest.raises(FloatingPointError, match=r"step 1: non-finite loss at batch position\(s\) \[1\]"):
        trainer.train()
    assert not list(tmp_path.glob("checkpoint-*"))

"""DRO-REBEL's several epochs per rollout (the worst case solved again on every epoch's
losses), mini-batches within a rollout, the radius schedule and the calibrated radius in the
trainers' configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_models import PAIRS, tiny_llama

import dro_rebel
from dro_rebel.torch import DroRebelConfig, DroRebelTrainer, RobustDPOConfig, RobustDPOTrainer, RobustLoss


def short_reward(prompts, completions):
    return [-len(text) / 10.0 for text in completions]


def rebel(tokenizer, prompts, tmp_path, **fields):
    config = DroRebelConfig(
        output_dir=str(tmp_path),
        learning_rate=3e-3,
        per_device_train_batch_size=8,
        max_new_tokens=6,
        max_steps=1,
        disable_tqdm=True,
        ambiguity="chi2",
        radius=0.3,
        **fields,
    )
    return DroRebelTrainer(tiny_llama(tokenizer), tokenizer, config, prompts, short_reward)


def test_the_weights_are_solved_again_on_every_epoch(tokenizer, prompts, tmp_path, solves):
    trainer = rebel(tokenizer, prompts, tmp_path, rollout_epochs=3)
    rollout = trainer.next_batch(1)
    metrics = trainer.optimise(rollout)
    assert len(solves) == 3
    rewards = rollout["rewards"].numpy()
    # Epoch 1 regresses at theta = theta_t: every loss is the squared reward gap.
    np.testing.assert_allclose(solves[0][0], (rewards[:8] - rewards[8:]) ** 2, rtol=1e-4, atol=1e-5)
    # Later epochs see how theta has moved: other losses, so other weights.
    for before, after in zip(solves, solves[1:]):
        assert not np.allclose(before[0], after[0])
        assert not np.allclose(before[2], after[2])
        np.testing.assert_array_equal(after[2], dro_rebel.robust_weights(after[0], "chi2", radius=0.3))
    assert metrics["loss/first_epoch"] != metrics["loss/last_epoch"]


def test_mini_batches_split_each_epoch_into_robust_problems_of_their_own(tokenizer, prompts, tmp_path, solves):
    trainer = rebel(tokenizer, prompts, tmp_path, rollout_epochs=2, num_mini_batches=2, group_column="group")
    rollout = trainer.next_batch(1)
    trainer.optimise(rollout)
    assert [len(call[0]) for call in solves] == [4, 4, 4, 4]
    groups = rollout["groups"].numpy()
    for epoch in (solves[:2], solves[2:]):
        # Each epoch visits every prompt once: its two halves hold all the groups' labels.
        assert sorted(np.concatenate([call[1] for call in epoch]).tolist()) == sorted(groups.tolist())


def test_one_epoch_one_mini_batch_is_one_step_on_the_whole_rollout(tokenizer, prompts, tmp_path, solves):
    trainer = rebel(tokenizer, prompts, tmp_path, rollout_epochs=1)
    trainer.optimise(trainer.next_batch(1))
    assert [len(call[0]) for call in solves] == [8]


def test_the_inverse_samples_schedule_divides_the_radius_by_the_samples_seen(tokenizer, tmp_path):
    config = RobustDPOConfig(
        output_dir=str(tmp_path),
        learning_rate=1e-3,
        per_device_train_batch_size=4,
        max_steps=3,
        disable_tqdm=True,
        ambiguity="chi2",
        radius=8.0,
        radius_schedule="inverse_samples",
    )
    RobustDPOTrainer(tiny_llama(tokenizer), tokenizer, config, PAIRS).train()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["robust/radius"] for r in records if "loss" in r] == pytest.approx([8 / 4, 8 / 8, 8 / 12])


def test_a_calibrated_radius_in_a_trainer_uses_the_number_of_groups(tokenizer, tmp_path):
    config = RobustDPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        max_steps=1,
        disable_tqdm=True,
        ambiguity="kl",
        radius="calibrated",
        confidence=0.9,
        group_column="group",
    )
    trainer = RobustDPOTrainer(tiny_llama(tokenizer), tokenizer, config, PAIRS)
    batch = trainer.next_batch(1)
    trainer.train_step(batch)
    groups = len(torch.unique(batch["groups"]))
    assert trainer.robust_loss.last.radius == pytest.approx(dro_rebel.calibrated_radius(groups, 0.9))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"radius_schedule": "linear"}, "radius_schedule must be one of"),
        ({"radius": "calibrated", "radius_schedule": "inverse_samples"}, "scales a number"),
        ({"radius": "calibrated", "ambiguity": "cvar"}, "defined for the chi2 and kl sets"),
        ({"radius": 0.1, "confidence": 0.9}, "confidence= sets the level"),
        ({"radius": "calibrated", "confidence": 1.5}, "confidence must be in"),
        ({"rollout_epochs": 0}, "rollout_epochs must be at least 1"),
        ({"num_mini_batches": 3}, "must be a multiple of num_mini_batches"),
    ],
)
def test_config_misuse_is_a_value_error_that_names_it(fields, message):
    with pytest.raises(ValueError, match=message):
        DroRebelConfig(per_device_train_batch_size=8, **{"ambiguity": "chi2", "radius": 0.1, **fields})


def test_robust_loss_rejects_a_bad_calibration_when_built():
    with pytest.raises(ValueError, match="defined for the chi2 and kl sets, not 'tv'"):
        RobustLoss("tv", radius="calibrated")
    loss = RobustLoss("chi2", radius="calibrated")
    losses = torch.rand(30, requires_grad=True)
    loss(losses).backward()
    assert loss.last.radius == pytest.approx(dro_rebel.calibrated_radius(30))

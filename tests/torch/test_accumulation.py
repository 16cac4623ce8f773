"""Gradient accumulation in the library's trainers: one worst case per optimiser step across
its micro-batches (``robust_scope="step"``) or one per micro-batch; the learning-rate schedule
with warm-up; bf16/fp16 autocast; and the configuration errors that name what to change."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_models import PAIRS, tiny_llama

import dro_rebel
from dro_rebel.torch import DroRebelConfig, DroRebelTrainer, RobustDPOConfig, RobustDPOTrainer


def dpo(tokenizer, tmp_path, **fields):
    """Robust DPO over the two groups, the policy and the reference different models so that
    the per-pair losses differ from the first step on."""
    values = dict(
        output_dir=str(tmp_path),
        learning_rate=1e-2,
        max_grad_norm=1e9,  # compare the gradients themselves, not their clipped versions
        per_device_train_batch_size=8,
        max_steps=1,
        disable_tqdm=True,
        ambiguity="chi2",
        radius=0.1,  # below the largest useful radius of two groups
        group_column="group",
    )
    values.update(fields)
    config = RobustDPOConfig(**values)
    return RobustDPOTrainer(tiny_llama(tokenizer), tokenizer, config, PAIRS, ref_model=tiny_llama(tokenizer, seed=1))


def gradients(trainer, batch):
    metrics = trainer.train_step(batch)
    return metrics, [p.grad.clone() for p in trainer.trainable_parameters]


@pytest.mark.parametrize("group_column", ["group", None])
def test_the_step_scope_solves_once_over_every_micro_batch(tokenizer, tmp_path, solves, group_column):
    whole = dpo(tokenizer, tmp_path / "whole", group_column=group_column)
    batch = whole.next_batch(1)
    whole_metrics, whole_grads = gradients(whole, batch)
    assert [len(call[0]) for call in solves] == [8]
    whole_losses = solves.pop()[0]

    accumulated = dpo(
        tokenizer,
        tmp_path / "step",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        group_column=group_column,
    )
    # A step draws per_device_train_batch_size * gradient_accumulation_steps pairs: the same 8.
    assert accumulated.step_indices(1) == whole.step_indices(1)
    metrics, grads = gradients(accumulated, accumulated.next_batch(1))
    assert [len(call[0]) for call in solves] == [8]
    losses, groups, weights = solves[0]
    np.testing.assert_allclose(losses, whole_losses, rtol=1e-5)
    if group_column is not None:
        np.testing.assert_array_equal(groups, batch["groups"].numpy())
    np.testing.assert_array_equal(weights, dro_rebel.robust_weights(losses, "chi2", radius=0.1, groups=groups))
    assert metrics["loss"] == pytest.approx(whole_metrics["loss"], rel=1e-5)
    assert metrics["robust/ess"] == pytest.approx(whole_metrics["robust/ess"], rel=1e-5)
    for got, want in zip(grads, whole_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_the_micro_batch_scope_solves_each_micro_batch_on_its_own(tokenizer, tmp_path, solves):
    # Per pair: with two groups every f-divergence ball gives weights that depend only on which
    # group is worse, and both micro-batches could agree with the whole step.
    whole = dpo(tokenizer, tmp_path / "whole", group_column=None)
    _, whole_grads = gradients(whole, whole.next_batch(1))
    solves.clear()
    split = dpo(
        tokenizer,
        tmp_path / "split",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        robust_scope="micro_batch",
        group_column=None,
    )
    metrics, grads = gradients(split, split.next_batch(1))
    assert [len(call[0]) for call in solves] == [4, 4]
    # The step's loss is the mean of the two micro-batches' worst cases.
    values = [float(call[2] @ call[0]) for call in solves]
    assert metrics["loss"] == pytest.approx(np.mean(values))
    assert any(not torch.allclose(got, want, rtol=1e-3) for got, want in zip(grads, whole_grads))


def short_reward(prompts, completions):
    return [-len(text) / 10.0 for text in completions]


@pytest.mark.parametrize("scope, sizes", [("step", [8, 8]), ("micro_batch", [4, 4, 4, 4])])
def test_rebel_accumulates_within_each_mini_batch(tokenizer, prompts, tmp_path, solves, scope, sizes):
    config = DroRebelConfig(
        output_dir=str(tmp_path),
        learning_rate=1e-3,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        robust_scope=scope,
        rollout_epochs=2,
        max_new_tokens=4,
        max_steps=1,
        disable_tqdm=True,
        ambiguity="chi2",
        radius=0.3,
        group_column="group",
    )
    trainer = DroRebelTrainer(tiny_llama(tokenizer), tokenizer, config, prompts, short_reward)
    rollout = trainer.next_batch(1)
    assert len(rollout["prompts"]) == 8  # per_device_train_batch_size * gradient_accumulation_steps
    trainer.optimise(rollout)
    assert [len(call[0]) for call in solves] == sizes


def test_the_learning_rate_warms_up_and_follows_the_schedule(tokenizer, tmp_path):
    trainer = dpo(tokenizer, tmp_path, max_steps=4, lr_scheduler_type="linear", warmup_steps=0.5)
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    # Two warm-up steps (half of four) from 0, then linear decay to 0 at the end.
    assert [r["learning_rate"] for r in records if "loss" in r] == pytest.approx([0.0, 5e-3, 1e-2, 5e-3])


def test_rebel_schedules_over_every_update_of_the_run(tokenizer, prompts, tmp_path):
    config = DroRebelConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        rollout_epochs=2,
        num_mini_batches=2,
        per_device_train_batch_size=4,
        max_new_tokens=4,
        disable_tqdm=True,
        lr_scheduler_type="cosine",
        warmup_steps=1,
    )
    trainer = DroRebelTrainer(tiny_llama(tokenizer), tokenizer, config, prompts, short_reward)
    assert trainer.lr_scheduler.get_last_lr() == [0.0]
    trainer.train()
    # 2 rollouts x 2 epochs x 2 mini-batches: the cosine ends at 0 after the 8th update.
    assert config.optimizer_steps(trainer.max_steps) == 8
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precision_runs_the_forward_under_autocast(tokenizer, tmp_path, precision, dtype):
    fields = {"gradient_accumulation_steps": 2, "per_device_train_batch_size": 4, precision: True}
    trainer = dpo(tokenizer, tmp_path, **fields)
    seen = []
    layer = trainer.model.model.layers[0].mlp.down_proj
    handle = layer.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    metrics = trainer.train_step(trainer.next_batch(1))
    handle.remove()
    assert seen and set(seen) == {dtype}
    assert np.isfinite(metrics["loss"]) and metrics["skipped"] == 0.0
    # The parameters and their update stay in float32.
    assert all(p.dtype == torch.float32 for p in trainer.trainable_parameters)
    assert trainer.scaler.is_enabled() == (precision == "fp16")


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps must be at least 1"),
        ({"robust_scope": "batch"}, "robust_scope must be one of"),
        ({"bf16": True, "fp16": True}, "set bf16 or fp16, not both"),
        ({"lr_scheduler_type": "reduce_lr_on_plateau"}, "lr_scheduler_type must be one of"),
        ({"warmup_steps": 10}, "'constant' has no warm-up: use 'constant_with_warmup'"),
        ({"lr_scheduler_type": "linear", "warmup_steps": -1}, "warmup_steps must be non-negative"),
        (
            {"ambiguity": "wasserstein", "gradient_penalty": "rebel", "radius": 0.1, "gradient_accumulation_steps": 2},
            "set robust_scope='micro_batch'",
        ),
    ],
)
def test_config_misuse_is_a_value_error_that_names_it(fields, message):
    with pytest.raises(ValueError, match=message):
        RobustDPOConfig(**fields)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_accumulation_on_the_gpu(tokenizer, tmp_path, solves):
    fields = {"device": "cuda", "bf16": True, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}
    trainer = dpo(tokenizer, tmp_path, **fields)
    metrics = trainer.train_step(trainer.next_batch(1))
    assert np.isfinite(metrics["loss"]) and [len(call[0]) for call in solves] == [8]


def nan_for_second_prompt(prompts, completions):
    return [float("nan") if i == 1 else 0.0 for i in range(len(completions))]


@pytest.mark.parametrize("scope", ["step", "micro_batch"])
def test_a_nan_loss_in_a_micro_batch_names_its_place_in_the_step(tokenizer, prompts, tmp_path, scope):
    config = DroRebelConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        robust_scope=scope,
        rollout_epochs=1,
        max_new_tokens=4,
        max_steps=1,
        disable_tqdm=True,
        ambiguity="chi2",
        radius=0.3,
    )
    trainer = DroRebelTrainer(tiny_llama(tokenizer), tokenizer, config, prompts, nan_for_second_prompt)
    # Position 1 of the step's 8 prompts (the first micro-batch's second), and its dataset row.
    message = rf"non-finite loss at batch position\(s\) \[1\] \(dataset rows \[{trainer.step_indices(1)[1]}\]\)"
    with pytest.warns(RuntimeWarning, match=message):
        assert trainer.train()["skipped"] == 1.0


def test_an_fp16_overflow_skips_the_update_and_lowers_the_loss_scale(tokenizer, tmp_path):
    trainer = dpo(tokenizer, tmp_path, fp16=True)
    # A scale so large that the float16 gradients overflow.
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)
    before = [p.detach().clone() for p in trainer.trainable_parameters]
    metrics = trainer.train_step(trainer.next_batch(1))
    assert metrics["skipped"] == 1.0 and np.isfinite(metrics["loss"])
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.trainable_parameters))
    assert trainer.scaler.get_scale() == 2.0**99
    assert trainer.lr_scheduler.last_epoch == 0  # the schedule follows the updates taken

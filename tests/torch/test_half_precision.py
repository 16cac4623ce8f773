"""Half precision, on the CPU (bf16 autocast and fp16 with a gradient scaler have the same dtype
semantics there as on CUDA): the solve sees float64 on the host whatever the dtype of the losses,
references, features and costs; the weights come back in float32 or wider; a half-precision
loss is reduced in float32; each trainer takes finite, unskipped steps in bf16 and fp16; and
`dro-rebel train` keeps float32 master weights whatever dtype the checkpoint was saved in."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from tiny_models import PAIRS, tiny_llama, tiny_reward_model

import dro_rebel
from dro_rebel.torch import (
    DroRebelConfig,
    DroRebelTrainer,
    RobustDPOConfig,
    RobustDPOTrainer,
    RobustLoss,
    RobustRewardConfig,
    RobustRewardTrainer,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

HALF = [torch.bfloat16, torch.float16]


def _losses(n: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=generator, dtype=torch.float64) * 4.0


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_references_features_and_costs_reach_the_solve_as_float64(dtype, solves):
    losses = _losses(6).to(dtype)
    reference = torch.tensor([1.0, 2.0, 1.0, 3.0, 1.0, 2.0], dtype=dtype)
    weights = RobustLoss("chi2", radius=0.3).weights(losses, reference=reference)
    expected = dro_rebel.robust_weights(losses.double().numpy(), "chi2", radius=0.3, reference=reference.double())
    np.testing.assert_allclose(weights.double().numpy(), expected, rtol=1e-6)

    features = torch.linspace(-1.0, 1.0, 12).reshape(6, 2).to(dtype)
    weights = RobustLoss("wasserstein", radius=0.2).weights(losses, features=features)
    expected = dro_rebel.robust_weights(
        losses.double().numpy(), "wasserstein", radius=0.2, features=features.double().numpy()
    )
    np.testing.assert_allclose(weights.double().numpy(), expected, rtol=1e-6, atol=1e-9)

    cost = torch.cdist(features.float(), features.float()).to(dtype)
    RobustLoss("wasserstein", radius=0.2).weights(losses, cost=cost)
    assert solves[-1][0].dtype == np.float64


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("ambiguity, radius", [("chi2", 0.5), ("kl", 1.0), ("cvar", None)])
def test_weights_of_half_precision_losses_are_float32_and_sum_to_one(dtype, ambiguity, radius):
    losses = _losses(4096).to(dtype)
    kwargs = {"alpha": 0.2} if ambiguity == "cvar" else {"radius": radius}
    weights = RobustLoss(ambiguity, **kwargs).weights(losses)
    assert weights.dtype == torch.float32
    assert float(weights.double().sum()) == pytest.approx(1.0, abs=1e-5)


def test_an_fp16_kl_solve_keeps_its_small_weights():
    # At radius 2 most of 4096 weights are below float16's smallest subnormal: cast to the
    # losses' dtype they were exact zeros.
    losses = (_losses(4096) * 2.5).to(torch.float16)
    exact = dro_rebel.robust_weights(losses.double().numpy(), "kl", radius=2.0)
    assert (exact > 0).all() and (exact < 6e-8).sum() > 1000
    weights = RobustLoss("kl", radius=2.0).weights(losses)
    assert weights.dtype == torch.float32 and (weights > 0).all()
    np.testing.assert_allclose(weights.double().numpy(), exact, rtol=1e-6)


@pytest.mark.parametrize("dtype", HALF)
def test_a_half_precision_loss_is_reduced_in_float32(dtype):
    losses = _losses(8).to(dtype).requires_grad_()
    robust = RobustLoss("chi2", radius=0.5)
    value = robust(losses)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(robust.last.value, rel=1e-6)
    value.backward()
    assert losses.grad.dtype == dtype
    # Half-precision weights handed to reduce() are widened as well.
    assert RobustLoss.reduce(losses, torch.full((8,), 0.125, dtype=dtype)).dtype == torch.float32


def _fields(tmp_path, precision):
    return dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=1,
        disable_tqdm=True,
        ambiguity="chi2",
        radius=0.3,
        group_column="group",
        **{precision: True},
    )


def short_reward(prompts, completions):
    return [-len(text) / 10.0 for text in completions]


def _trainer(kind, tokenizer, tmp_path, precision, **extra):
    fields = {**_fields(tmp_path, precision), **extra}
    if kind == "dpo":
        return RobustDPOTrainer(tiny_llama(tokenizer), tokenizer, RobustDPOConfig(learning_rate=1e-3, **fields), PAIRS)
    if kind == "reward":
        config = RobustRewardConfig(learning_rate=1e-3, **fields)
        return RobustRewardTrainer(tiny_reward_model(tokenizer), tokenizer, config, PAIRS)
    prompts = [{"prompt": row["prompt"], "group": row["group"]} for row in PAIRS]
    config = DroRebelConfig(learning_rate=1e-3, max_new_tokens=4, rollout_epochs=1, **fields)
    return DroRebelTrainer(tiny_llama(tokenizer), tokenizer, config, prompts, short_reward)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("kind", ["dpo", "reward", "rebel"])
def test_every_trainer_takes_a_finite_unskipped_step_in_half_precision(tokenizer, tmp_path, kind, precision):
    trainer = _trainer(kind, tokenizer, tmp_path, precision)
    before = [p.detach().clone() for p in trainer.trainable_parameters]
    metrics = trainer.train_step(trainer.next_batch(1))
    assert np.isfinite(metrics["loss"]) and metrics["skipped"] == 0.0, metrics
    assert all(p.dtype == torch.float32 for p in trainer.trainable_parameters)
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.trainable_parameters))


def test_fp16_reward_losses_are_float32_so_the_first_loss_scale_does_not_overflow(tokenizer, tmp_path):
    trainer = _trainer("reward", tokenizer, tmp_path, "fp16", gradient_accumulation_steps=1)
    batch = trainer.next_batch(1)
    with trainer.autocast():
        losses = trainer.compute_losses(batch)[0]
    assert losses.dtype == torch.float32
    # GradScaler's first scale (65536): no step of the first few is skipped for overflow.
    assert [trainer.train_step(batch)["skipped"] for _ in range(3)] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("saved, precision", [(torch.float16, "fp16"), (torch.bfloat16, "bf16")])
def test_train_keeps_float32_master_weights_whatever_the_checkpoint_dtype(tokenizer, tmp_path, saved, precision):
    from dro_rebel.cli import _build_trainer, main

    tiny_llama(tokenizer).to(saved).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in PAIRS))
    (tmp_path / "run.toml").write_text(
        'trainer = "dpo"\nmodel = "model"\n[data]\ntrain = "train.jsonl"\n[config]\noutput_dir = "out"\n'
        "max_steps = 1\nper_device_train_batch_size = 4\nlearning_rate = 1e-3\ndisable_tqdm = true\n"
        f"{precision} = true\n"
    )
    trainer = _build_trainer(tomllib.loads((tmp_path / "run.toml").read_text()), tmp_path)
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    assert main(["train", str(tmp_path / "run.toml")]) == 0
    step = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()][-1]
    assert step["skipped"] == 0.0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_half_precision_model_under_autocast_is_a_value_error_that_says_what_to_do(tokenizer, tmp_path, precision):
    config = RobustDPOConfig(**_fields(tmp_path, precision))
    with pytest.raises(ValueError, match=r"load it in float32 \(from_pretrained\(\.\.\., torch_dtype=torch.float32\)"):
        RobustDPOTrainer(tiny_llama(tokenizer).to(torch.bfloat16), tokenizer, config, PAIRS)

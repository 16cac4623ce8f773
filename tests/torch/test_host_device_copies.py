"""What a training step costs in host-device traffic: the solve copies the losses to the host
once and the weights back once; a micro-batch is copied to the device once however many passes
the step makes over it; the metrics are read in one copy with the gradient norm; and gradients
are averaged over the ranks in buckets, not in one new buffer holding every gradient.

On the CPU nothing is copied, so the calls that copy (or wait for the device) on a GPU are
counted where the package makes them: reads to the host (``item``, ``tolist``, ``float()``,
``bool()``, ``.cpu()``) and moves to a device (``.to(device)``)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from tiny_models import PAIRS, tiny_llama, tiny_reward_model

import dro_rebel
from dro_rebel.torch import (
    RobustDPOConfig,
    RobustDPOTrainer,
    RobustLoss,
    RobustRewardConfig,
    RobustRewardTrainer,
    distributed,
)

PACKAGE = str(Path(dro_rebel.__file__).resolve().parent)
READS = ("item", "tolist", "__float__", "__bool__", "__int__", "cpu")


@pytest.fixture
def copies(monkeypatch):
    """Counts of the package's own reads to the host and moves to a device, by kind."""
    counts: Counter = Counter()

    def ours() -> bool:
        # The training step's code, not the host-side batch preparation (data.py).
        caller = sys._getframe(2).f_code.co_filename
        return caller.startswith(PACKAGE) and not caller.endswith("data.py")

    def counting(name, method):
        def wrapper(self, *args, **kwargs):
            if ours():
                counts[name] += 1
            return method(self, *args, **kwargs)

        return wrapper

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    to = torch.Tensor.to

    def moving(self, *args, **kwargs):
        target = kwargs.get("device", args[0] if args else None)
        if ours() and isinstance(target, (torch.device, str)):
            counts["to(device)"] += 1
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", moving)
    return counts


def test_a_solve_copies_the_losses_to_the_host_once_and_the_weights_back_once(copies):
    losses = torch.rand(16)
    RobustLoss("kl", radius=0.3).weights(losses)
    assert copies == {"cpu": 1, "to(device)": 1}


def _step_reads(trainer_cls, config_cls, build, tokenizer, tmp_path, copies, accumulation):
    config = config_cls(
        output_dir=str(tmp_path / str(accumulation)),
        per_device_train_batch_size=8 // accumulation,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        disable_tqdm=True,
        ambiguity="chi2",
        radius=0.3,
        group_column="group",
    )
    trainer = trainer_cls(build(tokenizer), tokenizer, config, PAIRS)
    batch = trainer.next_batch(1)
    copies.clear()
    trainer.train_step(batch)
    return {name: n for name, n in copies.items() if name in READS}


@pytest.mark.parametrize(
    "trainer_cls, config_cls, build",
    [(RobustDPOTrainer, RobustDPOConfig, tiny_llama), (RobustRewardTrainer, RobustRewardConfig, tiny_reward_model)],
)
def test_a_step_reads_the_device_twice_whatever_its_micro_batches(
    tokenizer, tmp_path, copies, trainer_cls, config_cls, build
):
    for accumulation in (1, 2, 4):
        reads = _step_reads(trainer_cls, config_cls, build, tokenizer, tmp_path, copies, accumulation)
        # The solve's losses (and the group labels, already on the host), then the gradient norm
        # with every micro-batch's metrics in one tolist().
        assert reads == {"cpu": 2, "tolist": 1}, (accumulation, reads)


def test_gradients_are_averaged_in_buckets_not_in_one_copy_of_them_all(tokenizer, monkeypatch):
    model = tiny_llama(tokenizer)
    model(input_ids=torch.tensor([[2, 3, 4, 5]]), labels=torch.tensor([[2, 3, 4, 5]])).loss.backward()
    parameters = list(model.parameters())
    before = [p.grad.clone() for p in parameters]
    reduced = []

    def all_reduce(tensor):  # two ranks holding the same gradients
        reduced.append(tensor.numel())
        tensor.mul_(2)

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "all_reduce", all_reduce)
    bucket = 16 * 1024
    distributed.average_gradients(parameters, bucket_bytes=bucket)
    largest = max(p.numel() for p in parameters)
    assert sum(reduced) == sum(p.numel() for p in parameters) and len(reduced) > 1
    assert max(reduced) <= max(bucket // 4, largest)
    for parameter, grad in zip(parameters, before):
        torch.testing.assert_close(parameter.grad, grad, rtol=0, atol=0)

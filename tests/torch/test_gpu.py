"""The training layer on CUDA (``make gpu-check``; skipped without a GPU): each trainer and the
TRL subclasses in bf16 and fp16, the weights of CUDA tensors against the CPU's, one timed step
per trainer with and without the robust reduction (printed as a table), and, with two GPUs, an
NCCL ``torchrun`` of ``dro-rebel train`` against one process holding the whole batch."""

from __future__ import annotations

import copy
import statistics
import time

import numpy as np
import pytest
import torch
from tiny_models import PAIRS, perturbed, tiny_llama, tiny_reward_model

from dro_rebel.torch import (
    DroRebelConfig,
    DroRebelTrainer,
    RobustDPOConfig,
    RobustDPOTrainer,
    RobustLoss,
    RobustRewardConfig,
    RobustRewardTrainer,
    RobustStats,
)

DEVICE = "cuda"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
PRECISIONS = ["bf16", "fp16"]
KINDS = ["dpo", "reward", "rebel"]


def short_reward(prompts, completions):
    return [-len(text) / 10.0 for text in completions]


def _trainer(kind, tokenizer, tmp_path, precision, **extra):
    fields = dict(
        output_dir=str(tmp_path),
        device=DEVICE,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=1,
        learning_rate=1e-3,
        disable_tqdm=True,
        ambiguity="chi2",
        radius=0.3,
        group_column="group",
    )
    if precision is not None:
        fields[precision] = True
    fields.update(extra)
    if kind == "dpo":
        return RobustDPOTrainer(tiny_llama(tokenizer), tokenizer, RobustDPOConfig(**fields), PAIRS)
    if kind == "reward":
        return RobustRewardTrainer(tiny_reward_model(tokenizer), tokenizer, RobustRewardConfig(**fields), PAIRS)
    prompts = [{"prompt": row["prompt"], "group": row["group"]} for row in PAIRS]
    config = DroRebelConfig(max_new_tokens=4, rollout_epochs=1, **fields)
    return DroRebelTrainer(tiny_llama(tokenizer), tokenizer, config, prompts, short_reward)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_trainer_steps_on_cuda_in_half_precision(tokenizer, tmp_path, solves, kind, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name()} has no bfloat16")
    trainer = _trainer(kind, tokenizer, tmp_path, precision)
    assert trainer.device.type == "cuda"
    before = [p.detach().clone() for p in trainer.trainable_parameters]
    metrics = trainer.train_step(trainer.next_batch(1))
    assert np.isfinite(metrics["loss"]) and metrics["skipped"] == 0.0, metrics
    # One solve over the step's 8 samples (both micro-batches), on float64 host values.
    assert [len(call[0]) for call in solves] == [8] and solves[0][0].dtype == np.float64
    assert all(p.dtype == torch.float32 and p.device.type == "cuda" for p in trainer.trainable_parameters)
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.trainable_parameters))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "ambiguity, kwargs", [("chi2", {"radius": 0.5}), ("kl", {"radius": 1.0}), ("cvar", {"alpha": 0.2})]
)
def test_weights_of_cuda_losses_are_the_cpus(dtype, ambiguity, kwargs):
    generator = torch.Generator().manual_seed(0)
    losses = (torch.rand(1024, generator=generator) * 4).to(dtype)
    groups = torch.arange(1024) % 4
    for extra in ({}, {"groups": groups}):
        on_cpu = RobustLoss(ambiguity, **kwargs).weights(losses, **extra)
        on_gpu = RobustLoss(ambiguity, **kwargs).weights(losses.to(DEVICE), **extra)
        assert on_gpu.device.type == "cuda" and on_gpu.dtype == on_cpu.dtype == torch.float32
        torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=0, atol=0)
    value = RobustLoss(ambiguity, **kwargs)(losses.to(DEVICE).requires_grad_())
    assert value.dtype == torch.float32 and value.device.type == "cuda"


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("kind", ["dpo", "reward"])
def test_the_trl_subclasses_train_on_cuda_in_half_precision(tokenizer, tmp_path, kind, precision):
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("dro_rebel.integrations.trl")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name()} has no bfloat16")
    common = dict(
        output_dir=str(tmp_path),
        ambiguity="chi2",
        radius=0.3,
        group_column="group",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
    )
    dataset = datasets.Dataset.from_list([dict(row) for row in PAIRS])
    if kind == "dpo":
        reference = tiny_llama(tokenizer)
        trainer = trl.DRODPOTrainer(
            model=perturbed(copy.deepcopy(reference)),
            ref_model=reference,
            args=trl.DRODPOConfig(beta=0.1, **common),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    else:
        trainer = trl.DRORewardTrainer(
            model=tiny_reward_model(tokenizer),
            args=trl.DRORewardConfig(**common),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    trainer.train()
    assert next(trainer.model.parameters()).device.type == "cuda"
    logged = [record for record in trainer.state.log_history if "loss" in record]
    assert logged and all(np.isfinite(record["loss"]) for record in logged)
    assert all(record["robust/ess"] <= 8 for record in logged)


class _NominalMean(RobustLoss):
    """The plain mean on the device, no solve and no copy: the step without the robust reduction."""

    def weights(self, losses, **kwargs):
        self.last = RobustStats(value=float("nan"), mean=float("nan"), ess=float("nan"), max_weight=0.0, n=0)
        return torch.full_like(losses, 1.0 / len(losses), dtype=torch.float32)

    def forward(self, losses, **kwargs):
        return RobustLoss.reduce(losses, self.weights(losses))


def _step_ms(trainer, batch, repeats=5):
    for _ in range(2):  # warm-up: kernels, allocator
        trainer.train_step(batch)
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.train_step(batch)
        torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


@pytest.fixture(scope="module")
def timings(request):
    """The timed steps by trainer, printed as one table once they have all run."""
    rows: dict = {}
    yield rows
    if not rows:
        return
    lines = [
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}: one optimiser step (median of 5) on",
        "8 pairs/prompts in 2 micro-batches. robust: chi2 at radius 0.3, robust_scope='step' (one scoring",
        "pass over the step, one solve); plain: the mean of the losses on the device, no scoring pass.",
        "",
        "| trainer | precision | plain mean | robust | overhead |",
        "|---|---|---|---|---|",
    ]
    for kind, (precision, plain, robust) in rows.items():
        lines.append(
            f"| {kind} | {precision} | {plain:.1f} ms | {robust:.1f} ms | {100 * (robust / plain - 1):+.1f}% |"
        )
    # Past pytest's output capture, after the progress line.
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print("\n\n" + "\n".join(lines))


@pytest.mark.parametrize("kind", KINDS)
def test_timed_step_with_and_without_the_robust_reduction(tokenizer, tmp_path, timings, kind):
    precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    trainer = _trainer(kind, tokenizer, tmp_path, precision)
    batch = trainer.next_batch(1)
    robust = _step_ms(trainer, batch)
    # Without the reduction: the plain mean, and no scoring pass over the step's micro-batches.
    trainer.robust_loss = _NominalMean()
    trainer.config.robust_scope = "micro_batch"
    plain = _step_ms(trainer, batch)
    timings[kind] = (precision, plain, robust)
    assert robust > 0 and plain > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_nccl_torchrun_trains_to_the_checkpoint_of_one_process(tokenizer, tmp_path):
    from test_torchrun import torchrun_train, write_run

    from dro_rebel.cli import main
    from dro_rebel.torch.checkpoint import load_checkpoint

    torchrun_train(write_run(tmp_path, tokenizer, per_device_train_batch_size=4))
    assert main(["train", str(write_run(tmp_path, tokenizer, per_device_train_batch_size=8))]) == 0
    both = load_checkpoint(tmp_path / "out-4" / "checkpoint-2.pt")
    single = load_checkpoint(tmp_path / "out-8" / "checkpoint-2.pt")
    assert len(both["rng"]) == 2 and all("cuda" in state for state in both["rng"])
    for name, parameter in single["model"].items():
        torch.testing.assert_close(both["model"][name], parameter, rtol=1e-3, atol=1e-4)

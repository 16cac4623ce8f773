"""The TRL integration against TRL's real DPOTrainer and RewardTrainer on a tiny Llama."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from tiny_models import PAIRS, tiny_llama, tiny_reward_model  # noqa: E402
from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer  # noqa: E402

from dro_rebel import worst_case  # noqa: E402
from dro_rebel.integrations.trl import DRODPOConfig, DRODPOTrainer, DRORewardConfig, DRORewardTrainer  # noqa: E402

COMMON = dict(
    per_device_train_batch_size=8,
    max_steps=2,
    learning_rate=1e-3,
    logging_steps=1,
    report_to=[],
    save_strategy="no",
    use_cpu=True,
    disable_tqdm=True,
)


@pytest.fixture(scope="module")
def dataset():
    return datasets.Dataset.from_list([{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in PAIRS])


def _batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def _dpo(cls, config_cls, tokenizer, dataset, tmp_path, **robust):
    model = tiny_llama(tokenizer)
    args = config_cls(output_dir=str(tmp_path), beta=0.1, **COMMON, **robust)
    return cls(
        model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=dataset, processing_class=tokenizer
    )


def _loss_and_grads(trainer, batch):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]


def test_dpo_radius_zero_is_trls_own_loss(tokenizer, dataset, tmp_path):
    ours = _dpo(DRODPOTrainer, DRODPOConfig, tokenizer, dataset, tmp_path / "ours", radius=0.0)
    theirs = _dpo(DPOTrainer, DPOConfig, tokenizer, dataset, tmp_path / "theirs")
    batch = _batch(theirs)
    loss, grads = _loss_and_grads(ours, batch)
    expected, expected_grads = _loss_and_grads(theirs, batch)
    torch.testing.assert_close(loss, expected)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_dpo_robust_loss_is_the_worst_case_of_trls_per_pair_losses(tokenizer, dataset, tmp_path):
    trainer = _dpo(DRODPOTrainer, DRODPOConfig, tokenizer, dataset, tmp_path, ambiguity="kl", radius=0.5)
    batch = _batch(trainer)
    with torch.no_grad():
        # Move the policy off the reference so the per-pair losses differ.
        for parameter in trainer.model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    loss = trainer.compute_loss(trainer.model, batch)
    chosen, rejected = trainer.compute_ref_log_probs(trainer.model, batch)
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.ref_model, batch)
    per_pair = -torch.nn.functional.logsigmoid(0.1 * ((chosen - ref_chosen) - (rejected - ref_rejected)))
    solution = worst_case(per_pair.double().numpy(), "kl", radius=0.5)
    assert loss.item() == pytest.approx(solution.value, rel=1e-4)
    assert solution.value > per_pair.mean().item()


def test_dpo_trains_and_logs_robust_metrics(tokenizer, dataset, tmp_path):
    trainer = _dpo(DRODPOTrainer, DRODPOConfig, tokenizer, dataset, tmp_path, ambiguity="chi2", radius=0.2)
    trainer.train()
    # At step 1 the policy is the reference and every pair has the same loss; at step 2 not.
    logged = trainer.state.log_history[1]
    assert {"loss", "robust/ess", "robust/value", "rewards/accuracies"} <= set(logged)
    assert logged["robust/ess"] < len(PAIRS)


def test_dpo_rejects_losses_it_cannot_make_robust(tokenizer, dataset, tmp_path):
    with pytest.raises(ValueError, match="loss_type"):
        _dpo(DRODPOTrainer, DRODPOConfig, tokenizer, dataset, tmp_path, loss_type=["sppo_hard"])


def _reward(cls, config_cls, tokenizer, dataset, tmp_path, **robust):
    args = config_cls(output_dir=str(tmp_path), **COMMON, **robust)
    return cls(model=tiny_reward_model(tokenizer), args=args, train_dataset=dataset, processing_class=tokenizer)


def test_reward_radius_zero_is_trls_own_loss_and_robust_trains(tokenizer, dataset, tmp_path):
    ours = _reward(DRORewardTrainer, DRORewardConfig, tokenizer, dataset, tmp_path / "ours", radius=0.0)
    theirs = _reward(RewardTrainer, RewardConfig, tokenizer, dataset, tmp_path / "theirs")
    batch = _batch(theirs)
    loss, grads = _loss_and_grads(ours, dict(batch))
    expected, expected_grads = _loss_and_grads(theirs, dict(batch))
    torch.testing.assert_close(loss, expected)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)

    robust = _reward(DRORewardTrainer, DRORewardConfig, tokenizer, dataset, tmp_path / "robust", radius=0.3)
    robust.train()
    assert {"loss", "robust/ess", "accuracy"} <= set(robust.state.log_history[0])

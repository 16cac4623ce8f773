"""The TRL integration against TRL's real DPOTrainer and RewardTrainer on a tiny Llama."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from tiny_models import PAIRS, perturbed, tiny_llama, tiny_reward_model  # noqa: E402
from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer  # noqa: E402

import dro_rebel  # noqa: E402
from dro_rebel import worst_case  # noqa: E402
from dro_rebel.integrations.trl import DRODPOConfig, DRODPOTrainer, DRORewardConfig, DRORewardTrainer  # noqa: E402
from dro_rebel.torch import RobustLoss, sequence_logprobs  # noqa: E402
from dro_rebel.torch.data import group_labels  # noqa: E402

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
# TRL turns bf16 on by default; the checks that recompute losses outside TRL need float32.
NO_AMP = dict(bf16=False, fp16=False)


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

    robust = _reward(
        DRORewardTrainer, DRORewardConfig, tokenizer, dataset, tmp_path / "robust", ambiguity="chi2", radius=0.3
    )
    robust.train()
    assert {"loss", "robust/ess", "accuracy"} <= set(robust.state.log_history[0])


# -- groups ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grouped():
    """The pairs with their group column (integer labels, two groups)."""
    return datasets.Dataset.from_list([dict(row) for row in PAIRS])


def _sequence_logps(model, batch):
    """log pi of the chosen and rejected completions, computed here rather than by TRL."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sequence_logprobs(logits, batch["input_ids"], batch["completion_mask"]).chunk(2)


@pytest.mark.parametrize("setting", ["ref_model", "precomputed", "lora"])
def test_dpo_group_column_gives_the_worst_case_over_group_mixtures(tokenizer, grouped, tmp_path, setting):
    reference = tiny_llama(tokenizer)
    model = copy.deepcopy(reference)
    kwargs = {"ref_model": copy.deepcopy(reference)}
    fields = {}
    if setting == "precomputed":
        kwargs, fields = {}, {"precompute_ref_log_probs": True}
    elif setting == "lora":
        peft = pytest.importorskip("peft")
        kwargs = {"peft_config": peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")}
    args = DRODPOConfig(
        output_dir=str(tmp_path),
        beta=0.1,
        ambiguity="chi2",
        radius=0.5,
        group_column="group",
        **COMMON,
        **NO_AMP,
        **fields,
    )
    trainer = DRODPOTrainer(model=model, args=args, train_dataset=grouped, processing_class=tokenizer, **kwargs)
    batch = _batch(trainer)
    assert batch["groups"].dtype == torch.long and len(batch["groups"]) == len(PAIRS)
    perturbed(trainer.model)
    loss = trainer.compute_loss(trainer.model, batch)
    with torch.no_grad():
        chosen, rejected = _sequence_logps(trainer.model, batch)
        ref_chosen, ref_rejected = _sequence_logps(reference, batch)
    per_pair = -torch.nn.functional.logsigmoid(0.1 * ((chosen - ref_chosen) - (rejected - ref_rejected)))
    groups = batch["groups"].numpy()
    solution = worst_case(per_pair.double().numpy(), "chi2", radius=0.5, groups=groups)
    assert loss.item() == pytest.approx(solution.value, rel=1e-4)
    # The groups change the answer: the per-pair set would give another value.
    assert solution.value != pytest.approx(worst_case(per_pair.double().numpy(), "chi2", radius=0.5).value, rel=1e-3)
    # Within a group every pair has the same weight.
    for group in set(groups.tolist()):
        weights = solution.weights[groups == group]
        np.testing.assert_allclose(weights, weights[0])
    trainer.train()
    assert "robust/ess" in trainer.state.log_history[0]


def test_reward_group_column_gives_the_worst_case_over_group_mixtures(tokenizer, grouped, tmp_path):
    args = DRORewardConfig(
        output_dir=str(tmp_path), ambiguity="kl", radius=0.3, group_column="group", **COMMON, **NO_AMP
    )
    trainer = DRORewardTrainer(
        model=tiny_reward_model(tokenizer), args=args, train_dataset=grouped, processing_class=tokenizer
    )
    batch = _batch(trainer)
    loss = trainer.compute_loss(trainer.model, dict(batch))
    with torch.no_grad():
        scores = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    chosen, rejected = scores.squeeze(-1).chunk(2)
    per_pair = -torch.nn.functional.logsigmoid(chosen - rejected).double().numpy()
    solution = worst_case(per_pair, "kl", radius=0.3, groups=batch["groups"].numpy())
    assert loss.item() == pytest.approx(solution.value, rel=1e-4)
    assert solution.value != pytest.approx(worst_case(per_pair, "kl", radius=0.3).value, rel=1e-3)
    trainer.train()
    assert {"loss", "robust/value", "accuracy"} <= set(trainer.state.log_history[0])


def test_prompt_groups_and_the_misuse_of_a_group_column(tokenizer, grouped, tmp_path):
    # group_column="prompt": DRO over prompts, the pairs of a prompt one group.
    repeated = datasets.Dataset.from_list([dict(row) for row in PAIRS[:4] for _ in range(2)])
    trainer = _dpo(
        DRODPOTrainer, DRODPOConfig, tokenizer, repeated, tmp_path, ambiguity="chi2", radius=0.1, group_column="prompt"
    )
    batch = _batch(trainer)
    prompts = [row["prompt"] for row in PAIRS[:4] for _ in range(2)]
    # The loader shuffles the pairs: the same labels, in another order.
    assert sorted(batch["groups"].tolist()) == sorted(group_labels(prompts).tolist())
    assert len(set(batch["groups"].tolist())) == 4
    with pytest.raises(ValueError, match="'kind' is not a column of train_dataset"):
        _dpo(
            DRODPOTrainer, DRODPOConfig, tokenizer, grouped, tmp_path, ambiguity="chi2", radius=0.1, group_column="kind"
        )
    model = tiny_llama(tokenizer)
    args = DRODPOConfig(
        output_dir=str(tmp_path), beta=0.1, **COMMON, ambiguity="chi2", radius=0.1, group_column="group"
    )
    with pytest.raises(ValueError, match="'group' is not a column of eval_dataset"):
        DRODPOTrainer(
            model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=grouped,
            eval_dataset=grouped.remove_columns("group"), processing_class=tokenizer,
        )  # fmt: skip
    scored = grouped.map(lambda row: {"group": row["group"] + 0.5})
    trainer = _dpo(
        DRODPOTrainer, DRODPOConfig, tokenizer, scored, tmp_path, ambiguity="chi2", radius=0.1, group_column="group"
    )
    with pytest.raises(ValueError, match="one integer or string label per pair"):
        _batch(trainer)


# -- one robust problem per optimiser step --------------------------------------------------


def _sgd_step(tokenizer, grouped, tmp_path, batch_size, accumulation, scope, group_column="group"):
    """One SGD step of robust DPO on all eight pairs, from a policy off its reference."""
    reference = tiny_llama(tokenizer)
    args = DRODPOConfig(
        output_dir=str(tmp_path),
        beta=0.1,
        ambiguity="chi2",
        radius=0.5,
        group_column=group_column,
        robust_scope=scope,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        optim="sgd",
        learning_rate=0.5,
        max_steps=1,
        **{k: v for k, v in COMMON.items() if k not in ("per_device_train_batch_size", "max_steps", "learning_rate")},
        **NO_AMP,
    )
    trainer = DRODPOTrainer(
        model=perturbed(copy.deepcopy(reference)),
        ref_model=reference,
        args=args,
        train_dataset=grouped,
        processing_class=tokenizer,
    )
    trainer.train()
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}, trainer


def test_accumulation_with_the_step_scope_solves_one_problem_over_the_step(tokenizer, grouped, tmp_path, solves):
    whole, _ = _sgd_step(tokenizer, grouped, tmp_path / "whole", 8, 1, "step")
    assert [len(call[0]) for call in solves] == [8]
    solves.clear()
    accumulated, trainer = _sgd_step(tokenizer, grouped, tmp_path / "accumulated", 4, 2, "step")
    # One solve, over the losses of both micro-batches, with their groups.
    assert [len(call[0]) for call in solves] == [8]
    losses, groups, weights = solves[0]
    np.testing.assert_array_equal(weights, dro_rebel.robust_weights(losses, "chi2", radius=0.5, groups=groups))
    assert sorted(groups.tolist()) == sorted(row["group"] for row in PAIRS)
    # The same update as one micro-batch holding the whole step.
    for name, parameter in whole.items():
        torch.testing.assert_close(accumulated[name], parameter, rtol=1e-4, atol=1e-6)
    assert "robust/ess" in trainer.state.log_history[0]

    # Per pair (with two groups, a micro-batch's weights depend only on which group is worse):
    # each micro-batch its own problem is another update.
    solves.clear()
    whole, _ = _sgd_step(tokenizer, grouped, tmp_path / "whole-pairs", 8, 1, "step", None)
    per_micro_batch, _ = _sgd_step(tokenizer, grouped, tmp_path / "micro", 4, 2, "micro_batch", None)
    assert [len(call[0]) for call in solves] == [8, 4, 4]
    assert any(not torch.allclose(per_micro_batch[name], whole[name]) for name in whole)


def _reward_sgd_step(tokenizer, grouped, tmp_path, batch_size, accumulation, scope):
    """One SGD step of the robust reward model on all eight pairs (the per-pair set)."""
    fields = {k: v for k, v in COMMON.items() if k not in ("per_device_train_batch_size", "max_steps", "learning_rate")}
    args = DRORewardConfig(
        output_dir=str(tmp_path),
        ambiguity="kl",
        radius=0.3,
        robust_scope=scope,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        optim="sgd",
        learning_rate=0.5,
        max_steps=1,
        **fields,
        **NO_AMP,
    )
    trainer = DRORewardTrainer(
        model=tiny_reward_model(tokenizer), args=args, train_dataset=grouped, processing_class=tokenizer
    )
    trainer.train()
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


def test_reward_accumulation_with_the_step_scope_is_one_problem(tokenizer, grouped, tmp_path, solves):
    whole = _reward_sgd_step(tokenizer, grouped, tmp_path / "whole", 8, 1, "step")
    accumulated = _reward_sgd_step(tokenizer, grouped, tmp_path / "accumulated", 4, 2, "step")
    assert [len(call[0]) for call in solves] == [8, 8]
    np.testing.assert_allclose(np.sort(solves[1][0]), np.sort(solves[0][0]), rtol=1e-5)
    for name, parameter in whole.items():
        torch.testing.assert_close(accumulated[name], parameter, rtol=1e-4, atol=1e-6)


# -- the online adversary ----------------------------------------------------------------


def _online_dpo(tokenizer, grouped, output_dir):
    reference = tiny_llama(tokenizer)
    fields = {**COMMON, "per_device_train_batch_size": 4, "max_steps": 4, "save_strategy": "steps", "save_steps": 2}
    args = DRODPOConfig(
        output_dir=str(output_dir),
        beta=0.1,
        group_column="group",
        adversary="online",
        adversary_step_size=5.0,
        **fields,
        **NO_AMP,
    )
    return DRODPOTrainer(
        model=perturbed(copy.deepcopy(reference)),
        ref_model=reference,
        args=args,
        train_dataset=grouped,
        eval_dataset=grouped,
        processing_class=tokenizer,
    )


def test_dpo_with_the_online_adversary_trains_and_its_state_round_trips_a_checkpoint(tokenizer, grouped, tmp_path):
    straight = _online_dpo(tokenizer, grouped, tmp_path / "straight")
    straight.train()
    assert {"robust/value", "robust/ess", "robust/max_weight"} <= set(straight.state.log_history[0])
    log_weights = dict(straight.robust_loss.adversary.log_weights)
    assert set(log_weights) == {0, 1} and log_weights[0] != log_weights[1]
    # Evaluation weighs with the group weights and leaves them as they are.
    straight.evaluate()
    assert straight.robust_loss.adversary.log_weights == log_weights

    checkpoint = tmp_path / "straight" / "checkpoint-2"
    assert (checkpoint / "robust_adversary.json").is_file()
    resumed = _online_dpo(tokenizer, grouped, tmp_path / "straight")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.robust_loss.adversary.log_weights == log_weights
    for (name, want), got in zip(straight.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)

    (checkpoint / "robust_adversary.json").unlink()
    missing = _online_dpo(tokenizer, grouped, tmp_path / "straight")
    with pytest.raises(ValueError, match="has no robust_adversary.json"):
        missing.train(resume_from_checkpoint=str(checkpoint))


def test_trl_configs_name_the_misuse_of_the_online_adversary(tmp_path):
    with pytest.raises(ValueError, match="set group_column"):
        DRODPOConfig(output_dir=str(tmp_path), adversary="online", **COMMON)
    with pytest.raises(ValueError, match="leave radius unset"):
        DRORewardConfig(output_dir=str(tmp_path), adversary="online", group_column="group", radius=0.1, **COMMON)


def _deepspeed_cast(data):
    """transformers' ``_prepare_input`` under DeepSpeed in bf16: every floating tensor of the
    batch is cast to the model's dtype."""
    if isinstance(data, dict):
        return type(data)({key: _deepspeed_cast(value) for key, value in data.items()})
    if isinstance(data, (tuple, list)):
        return type(data)(_deepspeed_cast(value) for value in data)
    if isinstance(data, torch.Tensor) and torch.is_floating_point(data):
        return data.to(torch.bfloat16)
    return data


@pytest.mark.parametrize("kind", ["dpo", "reward"])
def test_the_step_scope_keeps_its_weights_and_reference_logps_out_of_deepspeeds_input_cast(
    tokenizer, grouped, tmp_path, monkeypatch, kind
):
    seen = []
    reduce = RobustLoss.reduce

    def recording(losses, weights):
        seen.append(weights.dtype)
        return reduce(losses, weights)

    monkeypatch.setattr(RobustLoss, "reduce", staticmethod(recording))
    step = _sgd_step if kind == "dpo" else _reward_sgd_step
    plain = step(tokenizer, grouped, tmp_path / "plain", 4, 2, "step")
    plain = plain[0] if kind == "dpo" else plain
    monkeypatch.setattr(
        DRODPOTrainer if kind == "dpo" else DRORewardTrainer, "_prepare_input", staticmethod(_deepspeed_cast)
    )
    cast = step(tokenizer, grouped, tmp_path / "cast", 4, 2, "step")
    cast = cast[0] if kind == "dpo" else cast
    assert seen == [torch.float32] * 4
    # The model's inputs are integers: with the step's weights and reference log-probs kept in
    # float32, the cast changes nothing.
    for name, parameter in plain.items():
        torch.testing.assert_close(cast[name], parameter, rtol=0, atol=0)

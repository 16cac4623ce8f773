"""DRO-REBEL and robust GRPO against TRL's real GRPOTrainer, on a tiny Llama saved to disk
(TRL loads its reference model from the policy's path)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from tiny_models import PROMPTS, perturbed, tiny_llama  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

import dro_rebel  # noqa: E402
from dro_rebel import worst_case  # noqa: E402
from dro_rebel.integrations.trl import DROGRPOConfig, DROGRPOTrainer, DRORebelConfig, DRORebelTrainer  # noqa: E402
from dro_rebel.integrations.trl_online import SUPPORTED_GRPO_LOSSES  # noqa: E402
from dro_rebel.torch import robust_loss as robust_loss_module  # noqa: E402
from dro_rebel.torch import sequence_logprobs  # noqa: E402
from dro_rebel.torch.data import group_labels  # noqa: E402

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
COMMON = dict(
    per_device_train_batch_size=8,
    max_completion_length=6,
    max_steps=1,
    learning_rate=1e-3,
    logging_steps=1,
    report_to=[],
    save_strategy="no",
    use_cpu=True,
    bf16=False,
    disable_tqdm=True,
    seed=0,
)


def reward_length(completions, **kwargs):
    """A reward the tiny model's random completions vary on."""
    return [float(len(set(completion))) / 4 for completion in completions]


def reward_first_letter(completions, **kwargs):
    return [float(completion[:1] in "aeiou") for completion in completions]


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    tiny_llama(tokenizer).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def dataset():
    return datasets.Dataset.from_list([{"prompt": p, "group": i % 3} for i, p in enumerate(PROMPTS)])


def _trainer(cls, config_cls, tokenizer, model_dir, dataset, tmp_path, **fields):
    args = config_cls(output_dir=str(tmp_path), **{**COMMON, **fields})
    funcs = [reward_length, reward_first_letter]
    trainer = cls(model=model_dir, reward_funcs=funcs, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.current_gradient_accumulation_steps = args.gradient_accumulation_steps
    return trainer


def _rollout(trainer):
    """One prepared micro-batch, as a training step gets it."""
    trainer.model.train()
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def _vary_lengths(inputs):
    """Cut the completions at different lengths (the tiny model rarely samples EOS), so that
    the token-normalised loss types differ from the per-sequence ones."""
    mask = inputs["completion_mask"].clone()
    lengths = 1 + torch.arange(len(mask)) % mask.size(1)
    mask[torch.arange(mask.size(1)).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    inputs["completion_mask"] = mask
    inputs["num_items_in_batch"] = mask.sum()
    return inputs


def _loss_and_grads(trainer, inputs):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]


# -- robust GRPO --------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", SUPPORTED_GRPO_LOSSES)
def test_grpo_radius_zero_is_trls_own_loss_and_gradients(tokenizer, model_dir, dataset, tmp_path, loss_type):
    # Two iterations per rollout (TRL keeps the old log-probs), a KL term, completions of
    # different lengths, and a policy moved off the sampler: ratios away from 1 and clipping.
    fields = dict(loss_type=loss_type, beta=0.04, num_iterations=2, num_generations=4, epsilon=0.02)
    if loss_type == "luspo":
        fields["importance_sampling_level"] = "sequence"
    ours = _trainer(DROGRPOTrainer, DROGRPOConfig, tokenizer, model_dir, dataset, tmp_path / "ours", **fields)
    theirs = _trainer(GRPOTrainer, GRPOConfig, tokenizer, model_dir, dataset, tmp_path / "theirs", **fields)
    inputs = _vary_lengths(_rollout(ours))
    assert "old_per_token_logps" in inputs and "ref_per_token_logps" in inputs
    perturbed(ours.model, scale=0.2)
    perturbed(theirs.model, scale=0.2)
    theirs.model.train()
    loss, grads = _loss_and_grads(ours, inputs)
    expected, expected_grads = _loss_and_grads(theirs, {k: v for k, v in inputs.items() if k != "groups"})
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    assert len(grads) == len(expected_grads)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    # The decomposition the worst case reweights: sum_i m_i L_i is TRL's loss, value and gradients.
    ours.model.zero_grad()
    losses, shares = ours._sequence_losses(*ours._policy_logps(ours.model, inputs), inputs, 1)
    nominal = (shares * losses).sum()
    nominal.backward()
    torch.testing.assert_close(nominal.detach(), expected, rtol=1e-5, atol=1e-7)
    for parameter, want in zip([p for p in ours.model.parameters() if p.grad is not None], expected_grads):
        torch.testing.assert_close(parameter.grad, want, rtol=1e-4, atol=1e-7)
    assert (shares > 0).all() and len(set(shares.tolist())) == (
        1 if loss_type in ("grpo", "sapo", "luspo", "dr_grpo") else 6
    )


def test_grpo_group_column_weights_are_the_worst_case_over_the_groups(tokenizer, model_dir, dataset, tmp_path, solves):
    trainer = _trainer(
        DROGRPOTrainer, DROGRPOConfig, tokenizer, model_dir, dataset, tmp_path,
        loss_type="dapo", num_generations=2, ambiguity="chi2", radius=0.5, group_column="group",
    )  # fmt: skip
    inputs = _vary_lengths(_rollout(trainer))
    prompts = [row["prompt"] for row in dataset]
    by_prompt = dict(zip(prompts, dataset["group"]))
    # Each completion carries its example's group: the generated batch's prompts, in order.
    decoded = tokenizer.batch_decode(inputs["prompt_ids"], skip_special_tokens=True)
    assert inputs["groups"].tolist() == group_labels([by_prompt[p] for p in decoded]).tolist()
    loss = trainer.compute_loss(trainer.model, inputs)
    # On-policy (ratio 1, no KL) a token's loss is minus its completion's advantage, and DAPO's
    # share of a completion is its token count: the worst case over the groups, by hand.
    tokens = inputs["completion_mask"].sum(dim=1).double().numpy()
    losses = -inputs["advantages"].double().numpy()
    solution = worst_case(losses, "chi2", radius=0.5, groups=inputs["groups"].numpy(), reference=tokens)
    assert loss.item() == pytest.approx(solution.value, rel=1e-5, abs=1e-6)
    assert solution.value > np.average(losses, weights=tokens) + 1e-3
    [(solved_losses, solved_groups, weights)] = solves
    np.testing.assert_allclose(solved_losses, losses, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(solved_groups, inputs["groups"].numpy())
    np.testing.assert_allclose(weights, solution.weights, rtol=1e-4, atol=1e-7)
    logged = trainer._metrics["train"]
    assert logged["robust/value"][-1] == pytest.approx(solution.value, rel=1e-6)
    assert {"robust/ess", "robust/max_weight", "entropy", "clip_ratio/region_mean"} <= set(logged)


def test_grpo_refuses_what_it_cannot_reduce_per_prompt(tmp_path):
    with pytest.raises(ValueError, match="loss_type in .*'grpo'.*got 'ppo'"):
        DROGRPOConfig(output_dir=str(tmp_path), loss_type="ppo", use_cpu=True, num_generations=2)
    with pytest.raises(ValueError, match="radius_schedule"):
        DROGRPOConfig(
            output_dir=str(tmp_path),
            ambiguity="chi2",
            radius="calibrated",
            radius_schedule="inverse_samples",
            use_cpu=True,
        )
    with pytest.raises(ValueError, match="multiple of num_generations"):
        DRORebelConfig(
            output_dir=str(tmp_path),
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            num_generations=4,
            use_cpu=True,
        )
    with pytest.raises(ValueError, match="kl_coef only"):
        DRORebelConfig(output_dir=str(tmp_path), beta=0.1, use_cpu=True)
    assert DRORebelConfig(output_dir=str(tmp_path), kl_coef=0.05, use_cpu=True).beta == 0.05


def test_the_radius_schedule_counts_prompts(tokenizer, model_dir, dataset, tmp_path):
    trainer = _trainer(
        DROGRPOTrainer, DROGRPOConfig, tokenizer, model_dir, dataset, tmp_path,
        num_generations=4, gradient_accumulation_steps=2, num_iterations=2, ambiguity="chi2", radius=3.0,
        radius_schedule="inverse_samples",
    )  # fmt: skip
    trainer.model.train()
    trainer.state.global_step = 2
    trainer._before_solve()
    # Steps 1 to 3 have drawn 3 x (8 completions x 2 micro-batches / 4 per prompt) prompts.
    assert trainer.robust_loss.radius == pytest.approx(3.0 / 12)


# -- DRO-REBEL ----------------------------------------------------------------------------


def _completion_logps(model, rows):
    """Summed log pi of each completion, computed here with the project's own helper."""
    input_ids = torch.cat([rows["prompt_ids"], rows["completion_ids"]], dim=1)
    attention_mask = torch.cat([rows["prompt_mask"], rows["completion_mask"]], dim=1)
    completion_mask = torch.cat([torch.zeros_like(rows["prompt_mask"]), rows["completion_mask"]], dim=1)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return sequence_logprobs(logits, input_ids, completion_mask).double()


def test_rebel_pair_losses_are_a_hand_computation(tokenizer, model_dir, dataset, tmp_path, monkeypatch):
    rollouts = []
    generate = GRPOTrainer._generate_and_score_completions

    def recording(self, inputs):
        rollouts.append(generate(self, inputs))
        return rollouts[-1]

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", recording)
    eta, kl_coef = 0.5, 0.05
    trainer = _trainer(
        DRORebelTrainer, DRORebelConfig, tokenizer, model_dir, dataset, tmp_path,
        eta=eta, kl_coef=kl_coef, whiten_rewards=True, num_generations=4, num_iterations=2,
        reward_weights=[1.0, 0.5],
    )  # fmt: skip
    perturbed(trainer.model, scale=0.1)  # the sampler is off the reference: a KL penalty
    trainer.model.train()
    pairs = trainer._generate_and_score_completions(next(iter(trainer.get_train_dataloader())))
    rollout = rollouts[0]
    rows = {key: rollout[key] for key in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")}
    sampler = _completion_logps(trainer.model, rows)
    perturbed(trainer.model, scale=0.1, seed=2)  # pi_theta moves off the sampler

    # By hand: the weighted rewards, less kl_coef times the sampler-to-reference log-ratio,
    # whitened; the best and the worst of each prompt's four; REBEL's regression.
    texts = tokenizer.batch_decode(rollout["completion_ids"] * rollout["completion_mask"], skip_special_tokens=True)
    rewards = 1.0 * np.array(reward_length(texts)) + 0.5 * np.array(reward_first_letter(texts))
    reference = _completion_logps(trainer.ref_model, rows)
    rewards = rewards - kl_coef * (sampler - reference).numpy()
    rewards = (rewards - rewards.mean()) / np.sqrt(rewards.var(ddof=1) + 1e-8)
    grouped = rewards.reshape(-1, 4)
    first = grouped.argmax(axis=1) + 4 * np.arange(len(grouped))
    second = grouped.argmin(axis=1) + 4 * np.arange(len(grouped))
    policy = _completion_logps(trainer.model, rows)
    log_ratio = (policy[first] - sampler[first]) - (policy[second] - sampler[second])
    expected = (log_ratio.numpy() / eta - (rewards[first] - rewards[second])) ** 2

    np.testing.assert_array_equal(pairs["completion_ids"][:, 0], rollout["completion_ids"][first])
    np.testing.assert_array_equal(pairs["completion_ids"][:, 1], rollout["completion_ids"][second])
    np.testing.assert_allclose(pairs["rewards"].numpy(), np.stack([rewards[first], rewards[second]], 1), rtol=1e-4)
    losses, _ = trainer._pair_losses(trainer.model, pairs)
    np.testing.assert_allclose(losses.detach().double().numpy(), expected, rtol=1e-3, atol=1e-5)
    assert "rebel/identical_pairs" in trainer._metrics["train"]


def test_rebel_group_column_weights_are_the_worst_case_over_the_groups(tokenizer, model_dir, dataset, tmp_path, solves):
    with pytest.warns(UserWarning, match="on-policy, where a pair's loss is its squared reward gap"):
        trainer = _trainer(
            DRORebelTrainer, DRORebelConfig, tokenizer, model_dir, dataset, tmp_path,
            ambiguity="kl", radius=0.3, group_column="group",
        )  # fmt: skip
    inputs = _rollout(trainer)
    loss = trainer.compute_loss(trainer.model, inputs)
    # On-policy the log-ratios are 0 and a pair's loss is its squared reward gap.
    gaps = (inputs["rewards"][:, 0] - inputs["rewards"][:, 1]).double().numpy()
    solution = worst_case(gaps**2, "kl", radius=0.3, groups=inputs["groups"].numpy())
    assert loss.item() == pytest.approx(solution.value, rel=1e-5)
    [(solved_losses, solved_groups, weights)] = solves
    np.testing.assert_allclose(solved_losses, gaps**2, rtol=1e-5)
    np.testing.assert_array_equal(solved_groups, inputs["groups"].numpy())
    np.testing.assert_allclose(weights, solution.weights, rtol=1e-4, atol=1e-7)
    decoded = tokenizer.batch_decode(inputs["prompt_ids"][:, 0], skip_special_tokens=True)
    by_prompt = {row["prompt"]: row["group"] for row in dataset}
    assert inputs["groups"].tolist() == group_labels([by_prompt[p] for p in decoded]).tolist()


# -- one worst case per step, checkpoints -------------------------------------------------


@pytest.mark.parametrize("kind", ["rebel", "grpo"])
def test_a_checkpoint_written_mid_run_resumes_to_identical_parameters(
    tokenizer, model_dir, dataset, tmp_path, kind, solves
):
    cls, config_cls = (DRORebelTrainer, DRORebelConfig) if kind == "rebel" else (DROGRPOTrainer, DROGRPOConfig)
    fields = dict(
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        num_generations=2,
        max_steps=2,
        ambiguity="chi2",
        radius=0.5,
        group_column="prompt",
        save_strategy="steps",
        save_steps=1,
    )

    def run(output, resume=None):
        trainer = _trainer(cls, config_cls, tokenizer, model_dir, dataset, output, **fields)
        trainer.train(resume_from_checkpoint=resume)
        return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}

    straight = run(tmp_path / "straight")
    # The step scope: one solve a step, over both micro-batches (2 prompts each).
    assert [len(call[0]) for call in solves] == ([2, 2] if kind == "rebel" else [4, 4])
    resumed = run(tmp_path / "resumed", resume=str(tmp_path / "straight" / "checkpoint-1"))
    for name, parameter in straight.items():
        torch.testing.assert_close(resumed[name], parameter, rtol=0, atol=0)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Both trainers under ``accelerate launch`` with two CPU processes (gloo), a group
    column and two micro-batches a step: every solve each process made."""
    output = tmp_path_factory.mktemp("online-accelerate")
    package_root = str(Path(dro_rebel.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (str(HERE), package_root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        str(HERE / "trl_online_child.py"), str(output),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return [torch.load(output / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


@pytest.mark.parametrize("kind", ["rebel", "grpo"])
def test_two_processes_solve_one_worst_case_per_step_bitwise_alike(two_processes, kind):
    import trl_online_child

    first, second = (record[kind] for record in two_processes)
    # One solve per step, over 2 processes x 2 micro-batches (of 2 pairs, or 4 completions).
    assert [len(solve["losses"]) for solve in first] == [8] * trl_online_child.STEPS
    for mine, theirs in zip(first, second):
        for key in ("losses", "groups", "reference", "weights"):
            np.testing.assert_array_equal(mine[key], theirs[key])
        expected = dro_rebel.robust_weights(
            mine["losses"], "chi2", radius=trl_online_child.RADIUS, groups=mine["groups"], reference=mine["reference"]
        )
        np.testing.assert_array_equal(mine["weights"], expected)
        assert len(set(mine["groups"].tolist())) > 1


# -- CUDA ----------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["rebel", "grpo"])
def test_bf16_steps_on_cuda_and_the_robust_share_of_a_step(tokenizer, model_dir, dataset, tmp_path, kind, capsys):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cls, config_cls = (DRORebelTrainer, DRORebelConfig) if kind == "rebel" else (DROGRPOTrainer, DROGRPOConfig)
    spent = []
    weights = robust_loss_module.RobustLoss.weights

    def timed(self, *args, **kwargs):
        # The whole reduction: the gather, the copy to the host, the solve, the copy back.
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = weights(self, *args, **kwargs)
        torch.cuda.synchronize()
        spent.append(time.perf_counter() - start)
        return result

    fields = {**COMMON, "use_cpu": False, "bf16": True, "max_steps": 4, "gradient_accumulation_steps": 2}
    args = config_cls(
        output_dir=str(tmp_path), num_generations=4, ambiguity="chi2", radius=0.5, group_column="prompt", **fields
    )
    trainer = cls(
        model=model_dir, reward_funcs=[reward_length], args=args, train_dataset=dataset, processing_class=tokenizer
    )
    robust_loss_module.RobustLoss.weights = timed
    try:
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
    finally:
        robust_loss_module.RobustLoss.weights = weights
    assert trainer.model.device.type == "cuda" and len(spent) == 4
    assert all(np.isfinite(row.get("loss", 0.0)) for row in trainer.state.log_history)
    with capsys.disabled():
        print(f"\n{kind}: robust solves {1e3 * sum(spent):.2f} ms of {1e3 * total:.0f} ms ({sum(spent) / total:.4%})")

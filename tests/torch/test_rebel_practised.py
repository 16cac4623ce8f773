"""REBEL as practised (docs/method.md#rebel-as-practised): the KL penalty to the start policy
(``kl_coef``), G completions per prompt paired best against worst (``num_generations``) and
whitened rewards (``whiten_rewards``), each against a computation by hand; and with the
defaults, training bit-identical to REBEL as it was before these options."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import pytest
import torch
from tiny_models import perturbed, tiny_llama

from dro_rebel.torch import DroRebelConfig, DroRebelTrainer, completion_logprobs, rebel_loss
from dro_rebel.torch.base_trainer import LossOutput
from dro_rebel.torch.data import group_labels
from dro_rebel.torch.rebel_pairs import identical_pairs, kl_penalised_rewards, pick_pairs, whitened_rewards


def short_reward(prompts, completions):
    return [-len(text) / 10.0 for text in completions]


class RebelBeforeTheOptions(DroRebelTrainer):
    """The rollout and the loss exactly as they were before ``kl_coef``, ``num_generations``
    and ``whiten_rewards`` existed: the reference for the defaults' bit-identity."""

    @torch.no_grad()
    def rollout(
        self, prompts: List[str], groups: Optional[Sequence[int]] = None, indices: Optional[List[int]] = None
    ) -> Dict[str, Any]:
        with self.autocast():
            batch = self.sample(prompts, num_samples=2)
            args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
            if self.config.log_ratio_reference == "sampler":
                batch["base_logps"] = completion_logprobs(self.model, *args)
            else:
                with self.reference() as reference:
                    batch["base_logps"] = completion_logprobs(reference, *args)
        rewards = self.reward_fn(list(prompts) * 2, batch["completions"])
        batch["rewards"] = torch.as_tensor(rewards, dtype=torch.float32, device=self.device)
        batch["prompts"] = list(prompts)
        batch["indices"] = indices
        if groups is not None:
            batch["groups"] = group_labels(list(groups))
        return batch

    def compute_losses(self, batch: Dict[str, Any]) -> LossOutput:
        with self.embeddings_captured() as embeds:
            logps = completion_logprobs(
                self.model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
            )
        first, second = logps.chunk(2)
        base_first, base_second = batch["base_logps"].chunk(2)
        rewards, other_rewards = batch["rewards"].chunk(2)
        losses = rebel_loss(first, second, base_first, base_second, rewards, other_rewards, self.config.eta)
        return losses, embeds, {"reward": float(batch["rewards"].mean())}


def _config(tmp_path, **fields) -> DroRebelConfig:
    defaults = dict(
        output_dir=str(tmp_path),
        learning_rate=3e-3,
        per_device_train_batch_size=4,
        max_new_tokens=6,
        max_steps=2,
        rollout_epochs=2,
        num_mini_batches=2,
        save_steps=None,
        disable_tqdm=True,
        ambiguity="chi2",
        radius=0.3,
        group_column="group",
    )
    return DroRebelConfig(**{**defaults, **fields})


@pytest.mark.parametrize("log_ratio_reference", ["sampler", "initial"])
def test_the_defaults_train_bit_identically_to_rebel_before_the_options(
    tokenizer, prompts, tmp_path, log_ratio_reference
):
    runs = []
    for name, trainer_class in (("before", RebelBeforeTheOptions), ("now", DroRebelTrainer)):
        # One rollout, four optimiser steps (two epochs of two shuffled mini-batches).
        config = _config(tmp_path / name, log_ratio_reference=log_ratio_reference, max_steps=1)
        trainer = trainer_class(tiny_llama(tokenizer), tokenizer, config, prompts, short_reward)
        trainer.train()
        runs.append(trainer)
    before, now = runs
    for (name, expected), got in zip(before.model.named_parameters(), now.model.parameters()):
        assert torch.equal(expected, got), name


# -- the pieces, by hand -------------------------------------------------------------------


def test_g_two_pairs_the_two_as_sampled_and_more_the_best_and_the_worst_first_on_ties():
    # Sample-major: entry k * n + j is completion k of prompt j (n = 3 prompts).
    rewards = torch.tensor([1.0, 5.0, 2.0, 3.0, 5.0, 2.0, 3.0, 0.0, 2.0, -1.0, 5.0, 2.0], dtype=torch.float64)
    first, second = pick_pairs(rewards[:6], 2)
    assert first.tolist() == [0, 0, 0] and second.tolist() == [1, 1, 1]
    first, second = pick_pairs(rewards, 4)
    # Prompt 0: 1, 3, 3, -1: best the first 3 (k = 1), worst k = 3. Prompt 1: 5, 5, 0, 5: best
    # k = 0, worst k = 2. Prompt 2: all 2: both k = 0, the same completion.
    assert first.tolist() == [1, 0, 0] and second.tolist() == [3, 2, 0]
    # A NaN reward is carried into the pair (the step then goes through the non-finite policy).
    first, second = pick_pairs(torch.tensor([1.0, float("nan"), 2.0, 0.0, 3.0, 1.0]), 3)
    assert first.tolist() == [2, 0] and second.tolist() == [0, 0]


def test_rewards_are_penalised_then_whitened_as_written():
    rewards = torch.tensor([1.0, -2.0, 0.5, 4.0])
    policy, reference = torch.tensor([-3.0, -1.0, -2.0, -5.0]), torch.tensor([-2.0, -1.5, -2.0, -4.0])
    penalised = kl_penalised_rewards(rewards, policy, reference, 0.05)
    assert penalised.tolist() == pytest.approx([1.05, -2.025, 0.5, 4.05], abs=1e-12)
    mean = sum(penalised.tolist()) / 4
    variance = sum((r - mean) ** 2 for r in penalised.tolist()) / 3
    want = [(r - mean) / math.sqrt(variance + 1e-8) for r in penalised.tolist()]
    assert whitened_rewards(penalised).tolist() == pytest.approx(want, rel=1e-14)


def test_identical_pairs_compare_the_completion_tokens_only():
    pad = 0
    input_ids = torch.tensor([[5, 7, 8, 1], [5, 7, 9, 1], [5, 7, 8, pad], [5, 7, 9, 3]])
    completion_mask = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 1], [0, 1, 1, 0], [0, 1, 1, 1]])
    # Pair 0: rows 0 and 2, the same completion (the token after it differs, outside it);
    # pair 1: rows 1 and 3, the same first two tokens, the third differs.
    assert identical_pairs(input_ids, completion_mask).tolist() == [True, False]


# -- in the trainer, by hand ---------------------------------------------------------------


def length_and_vowels_reward(prompts, completions):
    """A reward with ties (many completions share a length) and no randomness."""
    return [float(len(text) % 3) - 0.1 * sum(text.count(v) for v in "aeiou") for text in completions]


@pytest.mark.parametrize("log_ratio_reference", ["sampler", "initial"])
def test_kl_g_and_whitening_in_a_rollout_and_its_loss_against_a_hand_computation(
    tokenizer, prompts, tmp_path, log_ratio_reference
):
    generations, kl_coef, eta = 4, 0.5, 2.0
    config = _config(
        tmp_path,
        num_generations=generations,
        kl_coef=kl_coef,
        whiten_rewards=True,
        eta=eta,
        log_ratio_reference=log_ratio_reference,
        max_new_tokens=4,
    )
    trainer = DroRebelTrainer(tiny_llama(tokenizer), tokenizer, config, prompts, length_and_vowels_reward)
    # Move the policy off the start policy, so that the KL penalty is not zero.
    perturbed(trainer.model)
    sampled = []
    sample = trainer.sample
    trainer.sample = lambda *args, **kwargs: sampled.append(sample(*args, **kwargs)) or sampled[-1]
    texts = [row["prompt"] for row in prompts[:4]]
    batch = trainer.rollout(texts, groups=[0, 1, 0, 1])

    (drawn,) = sampled
    n = len(texts)
    sequences = (drawn["input_ids"], drawn["attention_mask"], drawn["completion_mask"])
    with torch.no_grad():
        policy = completion_logprobs(trainer.model, *sequences).double().tolist()
        reference = completion_logprobs(trainer.ref_model, *sequences).double().tolist()
    raw = length_and_vowels_reward(texts * generations, drawn["completions"])
    shaped = [r - kl_coef * (p - q) for r, p, q in zip(raw, policy, reference)]
    mean = sum(shaped) / len(shaped)
    scale = math.sqrt(sum((r - mean) ** 2 for r in shaped) / (len(shaped) - 1) + 1e-8)
    shaped = [(r - mean) / scale for r in shaped]
    rows_first, rows_second = [], []
    for j in range(n):
        mine = [shaped[k * n + j] for k in range(generations)]
        rows_first.append(mine.index(max(mine)) * n + j)
        rows_second.append(mine.index(min(mine)) * n + j)
    rows = rows_first + rows_second

    assert batch["input_ids"].tolist() == drawn["input_ids"][rows].tolist()
    assert batch["completions"] == [drawn["completions"][r] for r in rows]
    assert batch["rewards"].tolist() == pytest.approx([shaped[r] for r in rows], rel=1e-5, abs=1e-6)
    base = policy if log_ratio_reference == "sampler" else reference
    assert batch["base_logps"].tolist() == pytest.approx([base[r] for r in rows], rel=1e-5)

    # The loss of each pair: ((log-ratio of y) - (log-ratio of y')) / eta - (r - r'), squared.
    losses, _, metrics = trainer.compute_losses(batch)
    with torch.no_grad():
        now = completion_logprobs(trainer.model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    for j in range(n):
        a, b = rows_first[j], rows_second[j]
        ratio = (now[j].item() - base[a]) - (now[n + j].item() - base[b])
        want = (ratio / eta - (shaped[a] - shaped[b])) ** 2
        assert losses[j].item() == pytest.approx(want, rel=1e-4, abs=1e-6)

    tokens = [drawn["input_ids"][r][drawn["completion_mask"][r].bool()].tolist() for r in range(generations * n)]
    identical = [tokens[a] == tokens[b] for a, b in zip(rows_first, rows_second)]
    assert metrics["rebel/identical_pairs"] == pytest.approx(sum(identical) / n)
    assert metrics["reward"] == pytest.approx(sum(raw) / len(raw), rel=1e-6)
    assert metrics["rebel/kl"] == pytest.approx(sum(policy) / len(policy) - sum(reference) / len(reference), rel=1e-5)


def test_all_g_alike_make_identical_pairs_and_the_log_says_so(tokenizer, prompts, tmp_path):
    config = _config(tmp_path, num_generations=3, max_steps=1, rollout_epochs=1, num_mini_batches=1)
    trainer = DroRebelTrainer(tiny_llama(tokenizer), tokenizer, config, prompts, lambda p, c: [1.0] * len(c))
    metrics = trainer.train()
    assert metrics["rebel/identical_pairs"] == 1.0


def test_kl_with_lora_takes_the_base_model_as_the_start_policy(tokenizer, prompts, tmp_path):
    pytest.importorskip("peft")
    config = _config(
        tmp_path,
        use_peft=True,
        kl_coef=0.05,
        num_generations=3,
        learning_rate=3e-2,
        rollout_epochs=1,
        num_mini_batches=1,
    )
    trainer = DroRebelTrainer(tiny_llama(tokenizer), tokenizer, config, prompts, short_reward)
    assert trainer.ref_model is None
    metrics = trainer.train()
    # LoRA starts at the base model; the second rollout's policy has moved away from it.
    assert metrics["rebel/kl"] != 0.0


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"num_generations": 1}, "num_generations must be at least 2"),
        ({"kl_coef": -0.1}, "kl_coef must be"),
        ({"kl_coef": float("nan")}, "kl_coef must be"),
    ],
)
def test_rebel_options_misuse_is_named_when_built(tmp_path, fields, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **fields)

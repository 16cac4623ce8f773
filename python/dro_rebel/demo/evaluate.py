"""Measuring a policy: its reward under every preference mixture, on held-out and shifted
prompts, and its KL divergence from the start model.

For one policy and one seed: sample one response per prompt (seeded, the same seed for every
policy), score every objective, and keep the per-prompt reward of every preference type, an
(n_prompts, K) array per prompt set. Every mixture's reward is a linear function of it, so the
summaries (and bootstrap intervals over prompts) are computed from those arrays afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

import dro_rebel
from dro_rebel.demo.policy import sample
from dro_rebel.demo.preferences import PreferenceTypes
from dro_rebel.demo.rewards import Objectives
from dro_rebel.torch import completion_logprobs

__all__ = ["PolicyEval", "evaluate_policy", "summarise", "adversarial_mixture"]


@dataclass
class PolicyEval:
    """Per-prompt measurements of one policy (one seed)."""

    test_rewards: np.ndarray
    """(n_test, K): reward of each preference type, held-out in-distribution prompts."""
    shift_rewards: np.ndarray
    """(n_shift, K): the same on the shifted prompts."""
    test_kl: np.ndarray
    """(n_test,): log pi(y|x) - log pi_0(y|x) of the sampled y, whose mean estimates
    KL(pi || pi_0)."""
    examples: List[Dict[str, str]]
    """A few (prompt, response) pairs, to read."""


def _log_ratios(policy: Any, start: Any, batches: Sequence[Any]) -> np.ndarray:
    ratios = []
    with torch.no_grad():
        for batch in batches:
            args = (batch.input_ids, batch.attention_mask, batch.completion_mask)
            ratios.append(completion_logprobs(policy, *args) - completion_logprobs(start, *args))
    return torch.cat(ratios).cpu().numpy().astype(float)


def evaluate_policy(
    policy: Any,
    start: Any,
    tokenizer: Any,
    *,
    test_prompts: Sequence[str],
    test_questions: Sequence[str],
    shift_prompts: Sequence[str],
    shift_questions: Sequence[str],
    objectives: Objectives,
    types: PreferenceTypes,
    max_new_tokens: int,
    seed: int,
    batch_size: int,
    n_examples: int = 3,
) -> PolicyEval:
    """Sample, score and measure one policy (see the module docstring).

    ``*_prompts`` are chat-formatted, ``*_questions`` the raw user questions they hold (the
    relevance objective compares the response to the question, not to the template)."""
    test = sample(
        policy,
        tokenizer,
        test_prompts,
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=batch_size,
        desc="sample held-out",
    )
    shift = sample(
        policy,
        tokenizer,
        shift_prompts,
        max_new_tokens=max_new_tokens,
        seed=seed + 1,
        batch_size=batch_size,
        desc="sample shifted",
    )
    test_texts = [t for batch in test for t in batch.texts]
    shift_texts = [t for batch in shift for t in batch.texts]
    return PolicyEval(
        test_rewards=types.rewards(objectives(test_questions, test_texts)),
        shift_rewards=types.rewards(objectives(shift_questions, shift_texts)),
        test_kl=_log_ratios(policy, start, test),
        examples=[
            {"prompt": q, "response": r}
            for q, r in list(zip(test_questions, test_texts))[:n_examples]
            + list(zip(shift_questions, shift_texts))[:n_examples]
        ],
    )


def adversarial_mixture(type_means: np.ndarray, reference: np.ndarray, radius: float) -> np.ndarray:
    """The mixture within a chi-square ball of ``radius`` around ``reference`` (the training
    mixture) under which this policy's mean reward is lowest: the worst case of the losses
    -reward, solved by ``dro_rebel.worst_case``."""
    return np.asarray(
        dro_rebel.worst_case(-np.asarray(type_means, float), "chi2", radius=radius, reference=reference).weights
    )


def summarise(evaluation: PolicyEval, types: PreferenceTypes, adversarial_radius: float) -> Dict[str, Any]:
    """The headline numbers of one evaluation (see ``report.py`` for their meaning)."""
    test_means = evaluation.test_rewards.mean(axis=0)
    shift_means = evaluation.shift_rewards.mean(axis=0)
    mixtures = types.held_out_mixtures()
    adversarial = adversarial_mixture(test_means, types.train_mixture, adversarial_radius)
    by_mixture = {name: float(m @ test_means) for name, m in mixtures.items()}
    by_mixture[f"adversarial (chi2 ball {adversarial_radius:g})"] = float(adversarial @ test_means)
    return {
        "average_reward": float(types.train_mixture @ test_means),
        "worst_case_reward": min(by_mixture.values()),
        "shift_reward": float(types.train_mixture @ shift_means),
        "shift_worst_case_reward": float(shift_means.min()),
        "kl_to_start": float(evaluation.test_kl.mean()),
        "reward_by_mixture": by_mixture,
        "adversarial_mixture": adversarial.tolist(),
        "type_rewards": dict(zip(types.names, test_means.tolist())),
        "shift_type_rewards": dict(zip(types.names, shift_means.tolist())),
    }

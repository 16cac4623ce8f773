"""REBEL's pairs as REBEL's own code forms them (docs/method.md#rebel-as-practised): the reward
penalised by the KL to the start policy, whitened over the global batch, then one pair per
prompt among its G completions. In that order: penalise, whiten, pick.

Completions are laid out sample-major, as :meth:`DroRebelTrainer.sample` returns them: entry
``k * n + j`` is the k-th completion of prompt j, n the number of prompts.
"""

from __future__ import annotations

from typing import Tuple

import torch

from dro_rebel.torch.distributed import gather_rows

__all__ = ["kl_penalised_rewards", "whitened_rewards", "pick_pairs", "identical_pairs", "WHITEN_EPSILON"]

WHITEN_EPSILON = 1e-8
"""Added to the variance before its square root, as TRL's ``whiten`` does."""


def kl_penalised_rewards(
    rewards: torch.Tensor, policy_logps: torch.Tensor, reference_logps: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """r(x, y) - kl_coef * (log pi_t(y|x) - log pi_ref(y|x)), in float64: pi_t the policy that
    sampled y, pi_ref the start policy."""
    return rewards.double() - kl_coef * (policy_logps.double() - reference_logps.double())


def whitened_rewards(rewards: torch.Tensor) -> torch.Tensor:
    """(r - mean) / sqrt(var + 1e-8) in float64, the mean and the unbiased variance over the
    rewards of every process (the global batch), so that every process scales alike."""
    everyone = gather_rows(rewards.double())[0]
    return (rewards.double() - everyone.mean()) / torch.sqrt(everyone.var() + WHITEN_EPSILON)


def pick_pairs(rewards: torch.Tensor, num_generations: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two completions of each prompt that form its pair, as indices k in 0..G-1 of the
    sample-major ``rewards`` (G n,): with G = 2 the first and the second as sampled; with G > 2
    the best and the worst by reward (the first index on ties), the widest reward gap among
    them, identical only when all G score the same."""
    by_generation = rewards.view(num_generations, -1)
    if num_generations == 2:
        n = by_generation.shape[1]
        return torch.zeros(n, dtype=torch.long, device=rewards.device), torch.ones(
            n, dtype=torch.long, device=rewards.device
        )
    return _first_argmax(by_generation), _first_argmax(-by_generation)


def identical_pairs(input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """For a batch of pairs (rows j and n + j), whether the two completions are the same tokens."""
    first_ids, second_ids = input_ids.chunk(2)
    first_mask, second_mask = completion_mask.chunk(2)
    same_tokens = ((first_ids == second_ids) | (first_mask == 0)).all(dim=1)
    return same_tokens & (first_mask == second_mask).all(dim=1)


def _first_argmax(values: torch.Tensor) -> torch.Tensor:
    """The index of the largest value of each column, the first one on ties (``torch.argmax``
    does not promise which). A column with a NaN gives its first NaN, so that the pair carries
    it into the loss and the step is handled as non-finite."""
    top = values.max(dim=0, keepdim=True).values
    is_top = (values == top) | values.isnan()
    positions = torch.arange(values.shape[0], device=values.device).unsqueeze(1).expand_as(values)
    return torch.where(is_top, positions, values.shape[0]).min(dim=0).values

"""A log-linear policy over each prompt's candidates, and REBEL and DPO on it with the
library's losses and robust reduction.

pi_theta(y | x) is proportional to exp(theta . phi(x, y)) over the prompt's K candidates: the
setting DRO-REBEL's analysis is written for (a linear policy class on fixed features). It
trains in seconds on a CPU and is evaluated exactly: the expected reward of a type under the
policy is sum_y pi(y | x) r_k(x, y), with no sampling noise.

REBEL (online): each iteration samples two candidates per prompt of a batch from pi_t and
regresses, for ``epochs`` passes over the rollout, the log-ratio difference against pi_t on
the reward difference (``rebel_loss``), the worst-case weights solved anew on every pass's
losses (``RobustLoss``). DPO (offline): pairs drawn once from the start policy (uniform over
the candidates), labelled by the Bradley-Terry model under the prompt's preference type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from dro_rebel.demo.candidates import CandidateSet
from dro_rebel.torch import RobustLoss, dpo_loss, rebel_loss

__all__ = ["Policy", "RebelSettings", "DpoSettings", "train_rebel", "train_dpo", "expected_rewards", "TrainLog"]


class Policy:
    """theta in R^d; log pi(. | x) is the log-softmax of phi(x, .) @ theta."""

    def __init__(self, dim: int) -> None:
        self.theta = torch.zeros(dim, dtype=torch.float64, requires_grad=True)

    def log_probs(self, features: torch.Tensor) -> torch.Tensor:
        """(B, K, d) features -> (B, K) log-probabilities."""
        return torch.log_softmax(features @ self.theta, dim=-1)

    def snapshot(self) -> np.ndarray:
        return self.theta.detach().numpy().copy()


def expected_rewards(theta: np.ndarray, data: CandidateSet) -> np.ndarray:
    """(T,) the mean over prompts of sum_y pi(y | x) r_k(x, y), for each type k: exact."""
    logits = data.features.astype(np.float64) @ theta
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return np.einsum("pk,pkt->t", probs, data.rewards) / len(data)


@dataclass(frozen=True)
class RebelSettings:
    learning_rate: float
    eta: float
    iterations: int
    epochs: int
    batch_size: int


@dataclass(frozen=True)
class DpoSettings:
    learning_rate: float
    beta: float
    epochs: int
    batch_size: int


@dataclass
class TrainLog:
    """What a run records on the way: the worst-case weight of each group per update (when the
    robust loss has groups), the share of pairs whose two samples were the same candidate, and
    theta at the checkpoint iterations."""

    group_weights: List[List[float]] = field(default_factory=list)
    identical_pairs: List[float] = field(default_factory=list)
    checkpoints: Dict[int, np.ndarray] = field(default_factory=dict)


def _group_mass(weights: torch.Tensor, groups: torch.Tensor, count: int) -> List[float]:
    return torch.zeros(count, dtype=weights.dtype).index_add_(0, groups, weights).tolist()


def train_rebel(
    data: CandidateSet,
    types_of: np.ndarray,
    settings: RebelSettings,
    robust: RobustLoss,
    rng: np.random.Generator,
    *,
    by_group: bool = False,
    reference: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    checkpoints: tuple = (),
    group_count: int = 3,
) -> tuple:
    """REBEL (robust with ``robust``) on the prompts of ``data``, each labelled by the type in
    ``types_of``; returns theta and the :class:`TrainLog`. ``by_group``: the ambiguity set is
    over mixtures of the types, not of the samples. ``reference`` maps a batch's types
    to the nominal weights of its samples (fixed reweighting)."""
    features = torch.from_numpy(data.features.astype(np.float64))
    rewards = torch.from_numpy(data.rewards[np.arange(len(data)), :, types_of])  # (P, K)
    groups_all = torch.from_numpy(types_of.astype(np.int64))
    policy = Policy(features.shape[-1])
    optimiser = torch.optim.Adam([policy.theta], lr=settings.learning_rate)
    log = TrainLog()
    generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
    for iteration in range(1, settings.iterations + 1):
        rows = torch.from_numpy(rng.choice(len(data), size=settings.batch_size, replace=False))
        batch_features = features[rows]
        with torch.no_grad():
            sampler = policy.log_probs(batch_features)
            draws = torch.multinomial(sampler.exp(), 2, replacement=True, generator=generator)
        first, second = draws[:, 0], draws[:, 1]
        log.identical_pairs.append(float((first == second).double().mean()))
        picks = torch.arange(len(rows))
        base_first, base_second = sampler[picks, first], sampler[picks, second]
        reward_first, reward_second = rewards[rows, first], rewards[rows, second]
        groups = groups_all[rows]
        weights = None if reference is None else torch.from_numpy(reference(types_of[rows.numpy()]))
        for _ in range(settings.epochs):
            logps = policy.log_probs(batch_features)
            losses = rebel_loss(
                logps[picks, first], logps[picks, second], base_first, base_second,
                reward_first, reward_second, settings.eta,
            )  # fmt: skip
            _step(optimiser, losses, robust, groups if by_group else None, weights, log, groups, group_count)
        if iteration in checkpoints:
            log.checkpoints[iteration] = policy.snapshot()
    return policy.snapshot(), log


def train_dpo(
    data: CandidateSet,
    types_of: np.ndarray,
    settings: DpoSettings,
    robust: RobustLoss,
    rng: np.random.Generator,
    *,
    pairs_per_prompt: int,
    bt_scale: float,
    by_group: bool = False,
    checkpoints: tuple = (),
    group_count: int = 3,
) -> tuple:
    """DPO (robust with ``robust``) on pairs drawn uniformly from each prompt's candidates and
    labelled by a Bradley-Terry draw under the prompt's type; ``epochs`` passes over the pairs.
    Returns theta and the :class:`TrainLog` (checkpoints after whole epochs)."""
    prompts = np.repeat(np.arange(len(data)), pairs_per_prompt)
    k = data.features.shape[1]
    a = rng.integers(k, size=prompts.size)
    b = (a + 1 + rng.integers(k - 1, size=prompts.size)) % k  # a different candidate
    reward_a = data.rewards[prompts, a, types_of[prompts]]
    reward_b = data.rewards[prompts, b, types_of[prompts]]
    prefer_a = rng.random(prompts.size) < 1.0 / (1.0 + np.exp(-bt_scale * (reward_a - reward_b)))
    chosen = torch.from_numpy(np.where(prefer_a, a, b))
    rejected = torch.from_numpy(np.where(prefer_a, b, a))
    features = torch.from_numpy(data.features.astype(np.float64))
    prompt_rows = torch.from_numpy(prompts)
    groups_all = torch.from_numpy(types_of[prompts].astype(np.int64))
    policy = Policy(features.shape[-1])
    optimiser = torch.optim.Adam([policy.theta], lr=settings.learning_rate)
    log = TrainLog()
    # The start policy is uniform over the candidates: its log-ratios cancel in the margin.
    uniform = torch.zeros(settings.batch_size, dtype=torch.float64)
    for epoch in range(1, settings.epochs + 1):
        order = torch.from_numpy(rng.permutation(prompts.size))
        for start in range(0, prompts.size - settings.batch_size + 1, settings.batch_size):
            pairs = order[start : start + settings.batch_size]
            logps = policy.log_probs(features[prompt_rows[pairs]])
            picks = torch.arange(len(pairs))
            losses = dpo_loss(
                logps[picks, chosen[pairs]], logps[picks, rejected[pairs]], uniform, uniform, settings.beta
            )
            _step(
                optimiser,
                losses,
                robust,
                groups_all[pairs] if by_group else None,
                None,
                log,
                groups_all[pairs],
                group_count,
            )
        if epoch in checkpoints:
            log.checkpoints[epoch] = policy.snapshot()
    return policy.snapshot(), log


def _step(
    optimiser: torch.optim.Optimizer,
    losses: torch.Tensor,
    robust: RobustLoss,
    groups: Optional[torch.Tensor],
    reference: Optional[torch.Tensor],
    log: TrainLog,
    types: torch.Tensor,
    group_count: int,
) -> None:
    """One optimiser step on the robust loss (over mixtures of ``groups`` when given); records
    each type's share of the weights."""
    optimiser.zero_grad()
    # forward() in its two halves, so that the step's weights can be logged: q* solved once on
    # the detached losses, then sum_i q_i l_i backpropagated (Danskin).
    weights = robust.weights(losses, groups=groups, reference=reference)
    robust.reduce(losses, weights).backward()
    optimiser.step()
    log.group_weights.append(_group_mass(weights, types, group_count))

"""Log-linear policies over each prompt's candidates, many trained at once: training seeds and grid points as leading
dimensions of one tensor program.

The primary study trains thousands of small policies (every arm at every grid point on every
tuning seed, then every arm on every test seed). One at a time, Python's overhead per step
dominates; together, a step is a few batched matrix products and one many-problems call of the
core per arm. theta has shape (S, H, d): S seeds, H configurations (arm and hyper-parameters)
per seed. Everything random belongs to the seed and is shared by its H configurations (the
prompts, their types, the batches, the uniforms the samples are drawn with), so that arms are
compared on common random numbers and their differences are paired down to the batch.

REBEL (online): each iteration draws ``num_generations`` candidates per prompt of a batch from
pi_t by inverse transform of the seed's uniforms, forms one pair per prompt (docs/method.md#rebel-as-practised:
the KL-penalised and optionally whitened rewards, the pair as sampled for G = 2, the best and the
worst for G > 2), and regresses ``epochs`` passes over the rollout with the library's
``rebel_loss``. DPO (offline): pairs drawn once per seed from the start policy, labelled by the
Bradley-Terry model under the prompt's type, ``epochs`` passes in the seed's order.

The weights of each step come from the arm's :class:`Weighting`: the nominal mean, fixed
reference weights, the exact worst case of the batch (``dro_rebel.robust_weights`` on all rows
of the arm at once), or the online group adversary (docs/method.md#online-group-adversary).
Adam is written out (torch's update, elementwise) so that each configuration has its own
learning rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

import dro_rebel
from dro_rebel.demo.candidates import CandidateSet
from dro_rebel.torch import dpo_loss, rebel_loss

__all__ = [
    "Weighting",
    "Config",
    "SeedData",
    "RebelShape",
    "DpoShape",
    "seed_data",
    "train_rebel_many",
    "train_dpo_many",
    "expected_rewards",
    "expected_rewards_many",
    "online_adversary_weights",
    "penalised_rewards",
    "whiten",
    "pick_pairs",
]

# Policies train in single precision: the study's cost is its matrix products, and a log-linear
# policy's updates are far above float32's resolution. Evaluation is exact, in float64.
DTYPE = torch.float32
# Adam's constants (torch's defaults).
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8
# Candidates drawn per prompt and iteration from the seed's generator: the most any grid point
# uses, so that G = 2 and G = 4 share their first two draws.
MAX_GENERATIONS = 4


@dataclass(frozen=True)
class Weighting:
    """How an arm turns a batch's per-sample losses into weights.

    kind: ``"mean"`` (uniform), ``"reference"`` (fixed per-type weights ``type_weights``,
    normalised over the batch), ``"exact"`` (the batch's worst case in ``ambiguity`` at
    ``radius``, over the types' mixtures when ``by_group``), ``"online"`` (the online group
    adversary over the types, step size from the configuration)."""

    kind: str = "mean"
    ambiguity: str = "chi2"
    radius: Union[float, str] = 0.0
    by_group: bool = False
    type_weights: Optional[Tuple[float, ...]] = None


@dataclass(frozen=True)
class Config:
    """One configuration trained on every seed: its arm's weighting, its data, and its
    hyper-parameters (``scale`` is REBEL's eta or DPO's beta)."""

    arm: str
    weighting: Weighting
    learning_rate: float
    scale: float
    kl_coef: float = 0.0
    adversary_step_size: float = 0.0
    uniform_types: bool = False
    """The oracle: the seed's prompts labelled by types drawn from the uniform mixture."""
    num_generations: Optional[int] = None
    """REBEL's G for this configuration (None: the call's ``RebelShape.num_generations``).
    Configurations with different G share a call: each uses the first G of the seed's draws."""


@dataclass
class SeedData:
    """What one training seed fixes: its training prompts (rows of the pool), their types under
    the training mixture and under the uniform one, and its generator for everything after."""

    seed: int
    rows: np.ndarray
    types: np.ndarray
    uniform_types: np.ndarray

    def generator(self, stream: int, step: int) -> np.random.Generator:
        """The seed's random numbers for one ``stream`` (batches, DPO labels) and ``step``:
        independent of how many steps a run takes."""
        return np.random.default_rng([self.seed, stream, step])


def seed_data(pool_size: int, n_train: int, mixture: np.ndarray, seed: int) -> SeedData:
    """A seed's training prompts and their types (training mixture, and uniform for the oracle)."""
    rng = np.random.default_rng([seed, 0])
    rows = rng.choice(pool_size, size=min(n_train, pool_size), replace=False)
    types = rng.choice(mixture.size, size=rows.size, p=mixture)
    uniform_types = rng.choice(mixture.size, size=rows.size)
    return SeedData(seed, rows, types, uniform_types)


@dataclass(frozen=True)
class RebelShape:
    """What every configuration of one REBEL call shares."""

    epochs: int
    num_generations: int
    iterations: int
    batch_size: int
    whiten_rewards: bool = False
    checkpoints: Tuple[int, ...] = ()


@dataclass(frozen=True)
class DpoShape:
    """What every configuration of one DPO call shares."""

    epochs: int
    batch_size: int
    pairs_per_prompt: int
    bt_scale: float
    checkpoints: Tuple[int, ...] = ()


@dataclass
class ManyLog:
    """What a call records: theta (S, H, d) at each checkpoint, each configuration's mean
    weight of each type over its updates (S, H, T), and REBEL's share of identical pairs (S, H)."""

    checkpoints: Dict[int, np.ndarray] = field(default_factory=dict)
    type_weight_course: List[np.ndarray] = field(default_factory=list)
    """Per update, each configuration's weight of each type (S, H, T)."""
    identical_pairs_course: List[np.ndarray] = field(default_factory=list)
    """Per iteration, each configuration's share of identical pairs (S, H)."""
    updates_at: Dict[int, int] = field(default_factory=dict)
    """The number of updates made by each checkpoint."""

    def type_weights(self) -> np.ndarray:
        return np.mean(self.type_weight_course, axis=0)

    def identical_pairs(self) -> np.ndarray:
        return np.mean(self.identical_pairs_course, axis=0)

    def until(self, checkpoint: int, column: int) -> Dict[str, Any]:
        """Configuration ``column``'s record as if its run had stopped at ``checkpoint`` (a run
        is causal: its first steps do not depend on how many follow): theta (S, d), its mean
        weight of each type, their course in 20 stretches, its share of identical pairs (S,)."""
        updates = self.updates_at[checkpoint]
        course = np.stack(self.type_weight_course[:updates])[:, :, column].mean(axis=1)  # (updates, T)
        stretches = np.array_split(np.arange(updates), 20)
        identical = None
        if self.identical_pairs_course:
            identical = np.stack(self.identical_pairs_course[:checkpoint])[:, :, column].mean(axis=0)
        return {
            "theta": self.checkpoints[checkpoint][:, column],
            "type_weights": course.mean(axis=0),
            "course": [course[rows].mean(axis=0) for rows in stretches if rows.size],
            "identical_pairs": identical,
        }


def expected_rewards(theta: np.ndarray, data: CandidateSet) -> np.ndarray:
    """(T,) the mean over prompts of sum_y pi(y | x) r_k(x, y) for one theta, each type k: exact.
    pi_theta(y | x) is proportional to exp(theta . phi(x, y)) over the prompt's K candidates."""
    return expected_rewards_many(np.asarray(theta)[None], data)[0]


def expected_rewards_many(thetas: np.ndarray, data: CandidateSet) -> np.ndarray:
    """(..., d) thetas -> (..., T): for each policy and type the mean over prompts of
    sum_y pi(y | x) r_k(x, y), exact."""
    flat = thetas.reshape(-1, thetas.shape[-1]).astype(np.float64)
    P, K, d = data.features.shape
    logits = (data.features.reshape(P * K, d).astype(np.float64) @ flat.T).T.reshape(-1, P, K)
    logits -= logits.max(axis=2, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=2, keepdims=True)
    values = np.einsum("hpk,pkt->ht", probs, data.rewards, optimize=True) / len(data)
    return values.reshape(*thetas.shape[:-1], data.rewards.shape[-1])


def online_adversary_weights(
    log_q: torch.Tensor, losses: torch.Tensor, groups: torch.Tensor, step_size: torch.Tensor, count: int
) -> torch.Tensor:
    """One step of the online group adversary on each row (docs/method.md#online-group-adversary),
    with uniform reference weights: L_g the mean loss of group g in the row's batch;
    log q_g += step_size * L_g for the groups present (``log_q`` (R, T) is updated in place);
    each sample then gets Qn_g / n_g, Qn = q normalised over the groups present.
    losses, groups: (R, B); step_size: (R,)."""
    losses = losses.to(log_q.dtype)
    one_hot = torch.nn.functional.one_hot(groups, count).to(log_q.dtype)  # (R, B, T)
    sizes = one_hot.sum(dim=1)  # (R, T)
    present = sizes > 0
    group_loss = torch.einsum("rb,rbt->rt", losses, one_hot) / sizes.clamp(min=1)
    log_q += torch.where(present, step_size[:, None] * group_loss, torch.zeros_like(group_loss))
    shifted = torch.where(present, log_q, torch.full_like(log_q, -math.inf))
    shifted = shifted - shifted.max(dim=1, keepdim=True).values
    q = torch.exp(shifted)
    q = q / q.sum(dim=1, keepdim=True)
    per_sample = q / sizes.clamp(min=1)
    return torch.einsum("rt,rbt->rb", per_sample, one_hot)


class _Trainer:
    """The state shared by the REBEL and DPO loops: theta, Adam's moments, the configurations'
    columns, the weights of each step."""

    def __init__(self, configs: Sequence[Config], seeds: Sequence[SeedData], dim: int, type_count: int):
        self.configs = list(configs)
        self.seeds = list(seeds)
        S, H = len(seeds), len(configs)
        self.theta = torch.zeros(S, H, dim, dtype=DTYPE, requires_grad=True)
        self.m = torch.zeros(S, H, dim, dtype=DTYPE)
        self.v = torch.zeros(S, H, dim, dtype=DTYPE)
        self.step_count = 0
        self.lr = torch.tensor([c.learning_rate for c in configs], dtype=DTYPE)[None, :, None]
        self.scale = torch.tensor([c.scale for c in configs], dtype=DTYPE)[None, :, None]
        self.kl_coef = torch.tensor([c.kl_coef for c in configs], dtype=DTYPE)[None, :, None]
        self.type_count = type_count
        by_arm: Dict[Weighting, List[int]] = {}
        for column, config in enumerate(configs):
            by_arm.setdefault(config.weighting, []).append(column)
        self.by_weighting = [(w, torch.tensor(cols)) for w, cols in by_arm.items()]
        self.adversary_log_q = torch.zeros(S, H, type_count, dtype=torch.float64)
        self.adversary_step = torch.tensor([c.adversary_step_size for c in configs], dtype=torch.float64)
        self.log = ManyLog()
        # Per seed, the types of its training prompts as each configuration sees them.
        types = np.stack([np.stack([s.uniform_types if c.uniform_types else s.types for c in configs]) for s in seeds])
        self.types = torch.from_numpy(types.astype(np.int64))  # (S, H, n_train)

    def log_probs(self, features: torch.Tensor) -> torch.Tensor:
        """(S, B, K, d) features -> (S, H, B, K) log-probabilities of every configuration (a
        strided view). The softmax runs over K with the configurations innermost, as the
        product leaves them: torch's softmax over a short innermost dimension is several
        times slower, and this loop is mostly softmaxes and products."""
        S, B, K, d = features.shape
        flat = torch.bmm(features.reshape(S, B * K, d), self.theta.transpose(1, 2))  # (S, B*K, H)
        return torch.log_softmax(flat.reshape(S, B, K, -1), dim=2).permute(0, 3, 1, 2)

    def weights(self, losses: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """(S, H, B) detached losses and types -> (S, H, B) weights, each arm by its weighting."""
        S, H, B = losses.shape
        weights = torch.empty_like(losses)
        for weighting, columns in self.by_weighting:
            block = losses[:, columns].reshape(-1, B)
            block_groups = groups[:, columns].reshape(-1, B)
            block_weights = self._weigh(weighting, block, block_groups, columns)
            weights[:, columns] = block_weights.to(weights.dtype).reshape(S, -1, B)
        one_hot = torch.nn.functional.one_hot(groups, self.type_count).to(torch.float64)
        self.log.type_weight_course.append(torch.einsum("shb,shbt->sht", weights.double(), one_hot).numpy())
        return weights

    def _weigh(self, weighting: Weighting, losses: torch.Tensor, groups: torch.Tensor, columns) -> torch.Tensor:
        rows, B = losses.shape
        if weighting.kind == "mean":
            return torch.full_like(losses, 1.0 / B)
        if weighting.kind == "reference":
            per_type = torch.tensor(weighting.type_weights, dtype=losses.dtype)[groups]
            return per_type / per_type.sum(dim=1, keepdim=True)
        if weighting.kind == "online":
            log_q = self.adversary_log_q[:, columns].reshape(rows, -1)
            step = self.adversary_step[columns].repeat(len(self.seeds))
            weights = online_adversary_weights(log_q, losses, groups, step, self.type_count)
            self.adversary_log_q[:, columns] = log_q.reshape(len(self.seeds), -1, self.type_count)
            return weights
        if weighting.kind == "exact":
            radius = weighting.radius
            if radius == "calibrated":
                radius = dro_rebel.calibrated_radius(B)
            weights = dro_rebel.robust_weights(
                losses.numpy(),
                weighting.ambiguity,
                radius=radius,
                groups=groups.numpy() if weighting.by_group else None,
            )
            return torch.from_numpy(weights)
        raise ValueError(f"unknown weighting {weighting.kind!r}")

    def step(self, losses: torch.Tensor, groups: torch.Tensor) -> None:
        """One Adam step of every configuration on sum_i q_i l_i (q from its weighting, held
        fixed: Danskin), with torch's Adam update written out per configuration."""
        weights = self.weights(losses.detach(), groups)
        (weights * losses).sum().backward()
        with torch.no_grad():
            grad = self.theta.grad
            self.step_count += 1
            self.m.mul_(_BETA1).add_(grad, alpha=1 - _BETA1)
            self.v.mul_(_BETA2).addcmul_(grad, grad, value=1 - _BETA2)
            correction1 = 1 - _BETA1**self.step_count
            correction2 = 1 - _BETA2**self.step_count
            denominator = (self.v.sqrt() / math.sqrt(correction2)).add_(_EPS)
            self.theta.sub_((self.lr / correction1) * self.m / denominator)
            self.theta.grad = None

    def snapshot(self) -> np.ndarray:
        return self.theta.detach().numpy().copy()


def penalised_rewards(
    rewards: torch.Tensor,
    logps: torch.Tensor,
    kl_coef: Union[float, torch.Tensor],
    ref_logps: Union[float, torch.Tensor],
) -> torch.Tensor:
    """REBEL's reward with the penalty towards the reference policy folded in:
    r(x, y) - kl_coef * (log pi_t(y | x) - log pi_ref(y | x)) (docs/method.md#rebel-as-practised)."""
    return rewards - kl_coef * (logps - ref_logps)


def whiten(rewards: torch.Tensor) -> torch.Tensor:
    """(..., B, G) rewards of one batch's completions -> (r - mean) / sqrt(var + 1e-8) over the
    batch's B * G completions (the unbiased variance, as TRL's and REBEL's ``whiten``)."""
    flat = rewards.reshape(*rewards.shape[:-2], -1)
    mean, var = flat.mean(dim=-1), flat.var(dim=-1)
    return (rewards - mean[..., None, None]) / torch.sqrt(var[..., None, None] + 1e-8)


def pick_pairs(rewards: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(..., G) rewards of each prompt's G completions -> the indices (..., 1) of its pair: the
    first two as sampled for G = 2; the best and the worst for G > 2 (first index on ties), as
    REBEL's own code does with several generations."""
    if rewards.shape[-1] == 2:
        first = torch.zeros(*rewards.shape[:-1], 1, dtype=torch.int64)
        return first, first + 1
    return rewards.argmax(dim=-1, keepdim=True), rewards.argmin(dim=-1, keepdim=True)


# The seed's random streams (SeedData.generator): REBEL's batches and sampling uniforms, DPO's
# pairs and labels, DPO's order of each epoch.
_REBEL_STREAM, _DPO_PAIRS_STREAM, _DPO_ORDER_STREAM = 1, 2, 3


def train_rebel_many(
    pool: CandidateSet, seeds: Sequence[SeedData], configs: Sequence[Config], shape: RebelShape
) -> ManyLog:
    """Online REBEL for every configuration on every seed; theta (S, H, d) at each checkpoint."""
    features_all = torch.from_numpy(pool.features.astype(np.float32))
    rewards_all = torch.from_numpy(pool.rewards.astype(np.float32))
    K, T = rewards_all.shape[1], rewards_all.shape[2]
    trainer = _Trainer(configs, seeds, features_all.shape[-1], T)
    S, H, B = len(seeds), len(configs), shape.batch_size
    generations = [c.num_generations or shape.num_generations for c in configs]
    for G in generations:
        if not 2 <= G <= MAX_GENERATIONS:
            raise ValueError(f"num_generations must be in [2, {MAX_GENERATIONS}], got {G}")
    G = max(generations)
    # Each G's columns, for the configurations that share a call with others of another G.
    by_generations = {g: torch.tensor([h == g for h in generations]) for g in sorted(set(generations))}
    rows = torch.from_numpy(np.stack([s.rows for s in seeds]).astype(np.int64))
    kl_coef = trainer.kl_coef[..., None]  # (1, H, 1, 1)
    # The start policy (theta = 0) is uniform over the candidates: pi_ref's log-probability.
    log_ref = -math.log(K)
    log = trainer.log
    for iteration in range(1, shape.iterations + 1):
        picks, uniforms = [], []
        for seed in seeds:
            rng = seed.generator(_REBEL_STREAM, iteration)
            picks.append(rng.choice(seed.rows.size, size=B, replace=False))
            uniforms.append(rng.random((B, MAX_GENERATIONS))[:, :G])
        local = torch.from_numpy(np.stack(picks).astype(np.int64))  # (S, B)
        prompts = rows.gather(1, local)
        features = features_all[prompts]  # (S, B, K, d)
        types = trainer.types.gather(2, local[:, None, :].expand(S, H, B))  # (S, H, B)
        type_rewards = rewards_all[prompts]  # (S, B, K, T)
        rewards = (
            type_rewards[:, None].expand(S, H, B, K, T).gather(4, types[..., None, None].expand(S, H, B, K, 1))[..., 0]
        )  # (S, H, B, K)
        # The first epoch's forward pass is also the sampler's: pi_t is the policy before the
        # rollout's first update.
        logps = trainer.log_probs(features)
        with torch.no_grad():
            sampler = logps.detach()
            cdf = sampler.exp().cumsum(dim=-1)
            targets = torch.from_numpy(np.stack(uniforms)).to(DTYPE)[:, None] * cdf[..., -1:]  # (S, H, B, G)
            draws = torch.searchsorted(cdf, targets).clamp_(max=K - 1)
            draw_logps = sampler.gather(-1, draws)
            draw_rewards = penalised_rewards(rewards.gather(-1, draws), draw_logps, kl_coef, log_ref)
            first, second, paired = _pairs(draw_rewards, by_generations, shape.whiten_rewards)
            y1, y2 = draws.gather(-1, first), draws.gather(-1, second)
            base1, base2 = draw_logps.gather(-1, first)[..., 0], draw_logps.gather(-1, second)[..., 0]
            r1, r2 = paired.gather(-1, first)[..., 0], paired.gather(-1, second)[..., 0]
            log.identical_pairs_course.append((y1 == y2).double().mean(dim=(2, 3)).numpy())
        for epoch in range(shape.epochs):
            if epoch > 0:
                logps = trainer.log_probs(features)
            losses = rebel_loss(
                logps.gather(-1, y1)[..., 0], logps.gather(-1, y2)[..., 0], base1, base2, r1, r2, trainer.scale
            )
            trainer.step(losses, types)
        if iteration in shape.checkpoints:
            log.checkpoints[iteration] = trainer.snapshot()
            log.updates_at[iteration] = len(log.type_weight_course)
    return log


def _pairs(draw_rewards: torch.Tensor, by_generations: Dict[int, torch.Tensor], whitened: bool):
    """Each configuration's pair among its first G draws (its columns in ``by_generations``):
    the indices (S, H, B, 1) of the two completions and the rewards (S, H, B, G_max) the
    regression uses (whitened over that configuration's G draws when ``whitened``)."""
    first = second = paired = None
    for g, columns in by_generations.items():
        rewards = draw_rewards[..., :g]
        if whitened:
            rewards = whiten(rewards)
        g_first, g_second = pick_pairs(rewards)
        padded = torch.nn.functional.pad(rewards, (0, draw_rewards.shape[-1] - g))
        if first is None:
            first, second, paired = g_first, g_second, padded
        else:
            mask = columns[None, :, None, None]
            first, second = torch.where(mask, g_first, first), torch.where(mask, g_second, second)
            paired = torch.where(mask, padded, paired)
    return first, second, paired


def train_dpo_many(
    pool: CandidateSet, seeds: Sequence[SeedData], configs: Sequence[Config], shape: DpoShape
) -> ManyLog:
    """DPO for every configuration on every seed, on pairs drawn once per seed uniformly from
    each prompt's candidates and labelled by a Bradley-Terry draw under the prompt's type;
    theta (S, H, d) after each checkpoint epoch."""
    if any(c.uniform_types for c in configs):
        raise ValueError("DPO's configurations share the seed's labels: no uniform-type data")
    features_all = torch.from_numpy(pool.features.astype(np.float32))
    K, T = pool.rewards.shape[1], pool.rewards.shape[2]
    trainer = _Trainer(configs, seeds, features_all.shape[-1], T)
    S, H, B = len(seeds), len(configs), shape.batch_size
    prompts, chosen, rejected, pair_types = [], [], [], []
    for seed in seeds:
        rng = seed.generator(_DPO_PAIRS_STREAM, 0)
        local = np.repeat(np.arange(seed.rows.size), shape.pairs_per_prompt)
        a = rng.integers(K, size=local.size)
        b = (a + 1 + rng.integers(K - 1, size=local.size)) % K  # a different candidate
        rows = seed.rows[local]
        types = seed.types[local]
        gap = pool.rewards[rows, a, types] - pool.rewards[rows, b, types]
        prefer_a = rng.random(local.size) < 1.0 / (1.0 + np.exp(-shape.bt_scale * gap))
        prompts.append(rows)
        chosen.append(np.where(prefer_a, a, b))
        rejected.append(np.where(prefer_a, b, a))
        pair_types.append(types)
    prompts_t, chosen_t, rejected_t, types_t = (
        torch.from_numpy(np.stack(x).astype(np.int64)) for x in (prompts, chosen, rejected, pair_types)
    )
    pairs = prompts_t.shape[1]
    zero = torch.zeros(())  # the start policy is uniform: its log-ratios cancel in the margin
    for epoch in range(1, shape.epochs + 1):
        orders = torch.from_numpy(
            np.stack([s.generator(_DPO_ORDER_STREAM, epoch).permutation(pairs) for s in seeds]).astype(np.int64)
        )
        for start in range(0, pairs - B + 1, B):
            batch = orders[:, start : start + B]  # (S, B)
            features = features_all[prompts_t.gather(1, batch)]
            logps = trainer.log_probs(features)  # (S, H, B, K)
            c = chosen_t.gather(1, batch)[:, None, :, None].expand(S, H, B, 1)
            r = rejected_t.gather(1, batch)[:, None, :, None].expand(S, H, B, 1)
            losses = dpo_loss(logps.gather(-1, c)[..., 0], logps.gather(-1, r)[..., 0], zero, zero, trainer.scale)
            trainer.step(losses, types_t.gather(1, batch)[:, None, :].expand(S, H, B))
        if epoch in shape.checkpoints:
            trainer.log.checkpoints[epoch] = trainer.snapshot()
            trainer.log.updates_at[epoch] = len(trainer.log.type_weight_course)
    return trainer.log

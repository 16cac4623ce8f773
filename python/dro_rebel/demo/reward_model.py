"""The reward-model track (Mandal et al.): a Bradley-Terry reward head on frozen MiniLM
features, trained plainly and robustly on pairs labelled under one (skewed) preference
mixture, and judged by pairwise accuracy where that mixture no longer holds.

Pairs are human text: for a question asked in a chat, the reply it actually got against a
reply from another chat; on the shifted side, a chatterbot-corpus answer against an answer from
another dialogue. The pairs are fixed, like the primary study's prompts: a pool of training
pairs, from which each seed draws its own, and the held-out and shifted pairs every head is
judged on. Labels are Bradley-Terry draws under the preference type a seed assigns to the
prompt (types drawn from the training mixture). The head is linear on
[e(y), e(x) * e(y)] (MiniLM embeddings of prompt x and response y), so it can represent
relevance (the cosine is the sum of the product features) and approximate the rest.

Training is a short full-feature loop rather than ``RobustRewardTrainer``: that trainer runs a
tokenised transformer every step, and the point here is the head on features computed once.
The losses and the robust reduction are the library's (``bradley_terry_loss``,
``RobustLoss``).

Evaluation: accuracy against each preference type's noise-free preference (the sign of its
reward difference), on held-out chitchat questions and on shifted prompts, and agreement with
the human ratings shipped with chitchat-dataset: for two chats opened by the same question
whose mean ratings differ by at least one point, does the head score the better-rated chat's
opening exchange higher?
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from dro_rebel.demo.candidates import cut
from dro_rebel.demo.comparisons import holm, paired_difference
from dro_rebel.demo.data import Chat
from dro_rebel.demo.embeddings import Encoder
from dro_rebel.demo.preferences import PreferenceTypes, bradley_terry_labels
from dro_rebel.demo.rewards import Objectives
from dro_rebel.torch import RobustLoss, bradley_terry_loss

__all__ = [
    "PairSet",
    "RewardPools",
    "chat_pairs",
    "shift_pairs",
    "build_pools",
    "train_head",
    "evaluate_head",
    "run_track",
    "run_reward_track",
]

# The opening exchange of a rated chat, as one response: enough to judge its tone.
_EXCERPT_TURNS, _EXCERPT_WORDS = 4, 64


@dataclass
class PairSet:
    """Response pairs (a, b) to prompts, with everything needed to label and score them."""

    prompts: List[str]
    a: List[str]
    b: List[str]
    rewards_a: np.ndarray
    """(n, K) reward of each preference type for response a."""
    rewards_b: np.ndarray
    features_a: np.ndarray
    """(n, 768) reward-head features of (prompt, a)."""
    features_b: np.ndarray

    def subset(self, indices: Sequence[int]) -> "PairSet":
        """The pairs at ``indices``, in that order."""
        take = np.asarray(indices, dtype=int)
        return PairSet(
            [self.prompts[i] for i in take],
            [self.a[i] for i in take],
            [self.b[i] for i in take],
            self.rewards_a[take],
            self.rewards_b[take],
            self.features_a[take],
            self.features_b[take],
        )


def features(encoder: Encoder, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """[e(y), e(x) * e(y)]: the frozen features the reward head is linear in."""
    prompt_vectors = encoder.encode(list(prompts))
    response_vectors = encoder.encode(list(responses))
    return np.concatenate([response_vectors, prompt_vectors * response_vectors], axis=1)


def _pair_set(prompts, a, b, encoder, objectives, types) -> PairSet:
    return PairSet(
        list(prompts),
        list(a),
        list(b),
        types.rewards(objectives(prompts, a)),
        types.rewards(objectives(prompts, b)),
        features(encoder, prompts, a),
        features(encoder, prompts, b),
    )


def chat_pairs(
    chats: Sequence[Chat],
    n: int,
    rng: np.random.Generator,
    encoder: Encoder,
    objectives: Objectives,
    types: PreferenceTypes,
) -> PairSet:
    """n (question, its actual reply, a reply from another chat) triples."""
    candidates = [
        (chat_index, turn)
        for chat_index, chat in enumerate(chats)
        for turn in range(len(chat.turns) - 1)
        if chat.turns[turn].endswith("?") and chat.turns[turn + 1]
    ]
    chosen = rng.choice(len(candidates), size=min(n, len(candidates)), replace=False)
    prompts, a, b = [], [], []
    for index in chosen:
        chat_index, turn = candidates[index]
        other = chats[(chat_index + 1 + rng.integers(len(chats) - 1)) % len(chats)]
        prompts.append(cut(chats[chat_index].turns[turn]))
        a.append(cut(chats[chat_index].turns[turn + 1]))
        b.append(cut(other.turns[rng.integers(1, len(other.turns))] if len(other.turns) > 1 else other.turns[0]))
    return _pair_set(prompts, a, b, encoder, objectives, types)


def shift_pairs(
    dialogues: Sequence[Tuple[str, str, str]],
    n: int,
    rng: np.random.Generator,
    encoder: Encoder,
    objectives: Objectives,
    types: PreferenceTypes,
) -> PairSet:
    """n (chatterbot prompt, its answer, the answer of another dialogue) triples."""
    chosen = rng.choice(len(dialogues), size=min(n, len(dialogues)), replace=False)
    prompts, a, b = [], [], []
    for index in chosen:
        other = dialogues[(index + 1 + rng.integers(len(dialogues) - 1)) % len(dialogues)]
        prompts.append(cut(dialogues[index][1]))
        a.append(cut(dialogues[index][2]))
        b.append(cut(other[2]))
    return _pair_set(prompts, a, b, encoder, objectives, types)


def train_head(
    pairs: PairSet,
    prefer_a: np.ndarray,
    groups: np.ndarray,
    robust: RobustLoss,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> np.ndarray:
    """Fit the linear head w by Adam on the (robust) Bradley-Terry loss; returns w."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.as_tensor(np.where(prefer_a[:, None], pairs.features_a, pairs.features_b))
    rejected = torch.as_tensor(np.where(prefer_a[:, None], pairs.features_b, pairs.features_a))
    labels = torch.as_tensor(groups)
    weight = torch.zeros(chosen.shape[1], dtype=chosen.dtype, requires_grad=True)
    optimizer = torch.optim.Adam([weight], lr=learning_rate)
    for _ in range(steps):
        batch = torch.randint(len(chosen), (batch_size,), generator=generator)
        losses = bradley_terry_loss(chosen[batch] @ weight, rejected[batch] @ weight)
        optimizer.zero_grad()
        robust(losses, groups=labels[batch]).backward()
        optimizer.step()
    return weight.detach().numpy().astype(float)


def _accuracy(scores_a: np.ndarray, scores_b: np.ndarray, truth_a: np.ndarray, truth_b: np.ndarray) -> float:
    decided = np.abs(truth_a - truth_b) > 1e-9
    return float(np.mean((scores_a > scores_b)[decided] == (truth_a > truth_b)[decided]))


def evaluate_head(weight: np.ndarray, pairs: PairSet, types: PreferenceTypes) -> Dict[str, float]:
    """Pairwise accuracy against each type, the training mixture and the worst type."""
    scores_a, scores_b = pairs.features_a @ weight, pairs.features_b @ weight
    out = {
        f"only {name}": _accuracy(scores_a, scores_b, pairs.rewards_a[:, k], pairs.rewards_b[:, k])
        for k, name in enumerate(types.names)
    }
    out["worst type"] = min(out.values())
    mixture = types.train_mixture
    out["training mixture"] = _accuracy(scores_a, scores_b, pairs.rewards_a @ mixture, pairs.rewards_b @ mixture)
    return out


def human_agreement(score: np.ndarray, chats: Sequence[Chat], max_pairs: int, rng: np.random.Generator) -> float:
    """How often ``score`` ranks two same-opening chats like their mean human ratings (pairs
    whose ratings differ by at least one point)."""
    by_opening: Dict[str, List[int]] = {}
    for index, chat in enumerate(chats):
        by_opening.setdefault(chat.opening, []).append(index)
    pairs = []
    for members in by_opening.values():
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                first, second = chats[members[i]], chats[members[j]]
                if abs(first.rating - second.rating) >= 1.0:
                    pairs.append((members[i], members[j]))
    if len(pairs) > max_pairs:
        pairs = [pairs[k] for k in rng.choice(len(pairs), size=max_pairs, replace=False)]
    agree = [(score[i] > score[j]) == (chats[i].rating > chats[j].rating) for i, j in pairs]
    return float(np.mean(agree)) if agree else float("nan")


def excerpt(chat: Chat) -> str:
    """The opening exchange of a chat, as the response to its opening question."""
    words = " ".join(chat.turns[:_EXCERPT_TURNS]).split()
    return " ".join(words[:_EXCERPT_WORDS])


@dataclass
class RewardPools:
    """The track's fixed data, built and encoded once: a pool of training pairs (each seed
    draws its own from it), the held-out and shifted pairs every head is judged on, and the
    rated chats with their features and the oracle's scores."""

    train: PairSet
    held_out: PairSet
    shifted: PairSet
    rated: List[Chat]
    rated_features: np.ndarray
    oracle_scores: np.ndarray
    """The training mixture's true reward of each rated chat's opening exchange."""


def build_pools(
    train_chats: Sequence[Chat],
    test_chats: Sequence[Chat],
    dialogues: Sequence[Tuple[str, str, str]],
    *,
    encoder: Encoder,
    objectives: Objectives,
    types: PreferenceTypes,
    n_pool: int,
    n_eval: int,
    n_rated: int,
) -> RewardPools:
    """The track's pools (the split is fixed, seed 0, like the primary study's prompts).

    Encoding is the track's cost: pairs drawn anew for every seed would encode every seed's
    texts again, where a pool is encoded once and seeds differ in what training sees."""
    rng = np.random.default_rng(0)
    train = chat_pairs(train_chats, n_pool, rng, encoder, objectives, types)
    held_out = chat_pairs(test_chats, n_eval, rng, encoder, objectives, types)
    shifted = shift_pairs(dialogues, n_eval, rng, encoder, objectives, types)
    rated = [chat for chat in test_chats if chat.rating is not None]
    rated = [rated[k] for k in rng.choice(len(rated), size=min(n_rated, len(rated)), replace=False)]
    rated_prompts, rated_texts = [c.opening for c in rated], [excerpt(c) for c in rated]
    return RewardPools(
        train,
        held_out,
        shifted,
        rated,
        features(encoder, rated_prompts, rated_texts),
        types.rewards(objectives(rated_prompts, rated_texts)) @ types.train_mixture,
    )


def run_track(
    pools: RewardPools,
    *,
    types: PreferenceTypes,
    n_train: int,
    bt_scale: float,
    methods: Dict[str, RobustLoss],
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> Dict[str, Dict[str, float]]:
    """One seed: draw ``n_train`` training pairs from the pool, their types and labels; train
    one head per entry of ``methods`` and evaluate each on the fixed sets. An oracle row (the
    training mixture's true reward) shows what the ratings allow."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(pools.train.prompts), size=min(n_train, len(pools.train.prompts)), replace=False)
    train = pools.train.subset(chosen)
    groups = types.assign(len(train.prompts), rng)
    rows = np.arange(len(groups))
    prefer_a = bradley_terry_labels(train.rewards_a[rows, groups], train.rewards_b[rows, groups], bt_scale, rng)

    results: Dict[str, Dict[str, float]] = {}
    for name, robust in methods.items():
        weight = train_head(
            train, prefer_a, groups, robust, steps=steps, batch_size=batch_size, learning_rate=learning_rate, seed=seed
        )
        results[name] = {
            "train_label_accuracy": float(np.mean(((train.features_a - train.features_b) @ weight > 0) == prefer_a)),
            **{f"held_out/{k}": v for k, v in evaluate_head(weight, pools.held_out, types).items()},
            **{f"shifted/{k}": v for k, v in evaluate_head(weight, pools.shifted, types).items()},
            "human_ratings_agreement": human_agreement(
                pools.rated_features @ weight, pools.rated, 2000, np.random.default_rng(seed)
            ),
        }
    results["oracle (true training-mixture reward)"] = {
        "human_ratings_agreement": human_agreement(pools.oracle_scores, pools.rated, 2000, np.random.default_rng(seed)),
    }
    return results


PLAIN_HEAD = "Bradley-Terry"
ROBUST_HEAD = "chi2-DRO Bradley-Terry (types)"
TRACK_COMPARED = ("held_out/worst type", "shifted/worst type", "held_out/training mixture")


def run_reward_track(corpus, encoder, objectives, types, radius, preset) -> Dict[str, Any]:
    """The track over ``preset.rm_seeds``: the pools built once, then per seed its training
    pairs drawn from the pool, their types, labels and batch order; a plain and a robust head
    (chi-square ball over type mixtures, the primary study's radius). Returns the per-seed
    metrics of each head and the paired comparisons, Holm-corrected across this track's
    family."""
    methods = {
        PLAIN_HEAD: lambda: RobustLoss("chi2", radius=0.0),
        ROBUST_HEAD: lambda: RobustLoss("chi2", radius=radius["chi2"]),
    }
    pools = build_pools(
        corpus.train_chats, corpus.test_chats, corpus.shift_dialogues,
        encoder=encoder, objectives=objectives, types=types,
        n_pool=preset.rm_pool_pairs, n_eval=preset.rm_eval_pairs, n_rated=preset.rm_rated_chats,
    )  # fmt: skip
    per_seed: Dict[str, Dict[str, List[float]]] = {name: {} for name in methods}
    for seed in tqdm(preset.rm_seeds, desc="reward-model track"):
        results = run_track(
            pools, types=types, n_train=preset.rm_train_pairs, bt_scale=preset.bt_scale,
            methods={name: make() for name, make in methods.items()},
            steps=preset.rm_steps, batch_size=preset.rm_batch_size, learning_rate=preset.rm_learning_rate,
            seed=seed,
        )  # fmt: skip
        for name in methods:
            for key, value in results[name].items():
                per_seed[name].setdefault(key, []).append(value)
    comparisons = []
    for metric in TRACK_COMPARED:
        stats = paired_difference(per_seed[ROBUST_HEAD][metric], per_seed[PLAIN_HEAD][metric])
        comparisons.append({"robust": ROBUST_HEAD, "plain": PLAIN_HEAD, "metric": metric, **stats})
    for comparison, adjusted in zip(comparisons, holm([c["p"] for c in comparisons])):
        comparison["p_holm"] = adjusted
    return {
        "seeds": list(preset.rm_seeds),
        "pairs": {
            "train_pool": len(pools.train.prompts),
            "held_out": len(pools.held_out.prompts),
            "shifted": len(pools.shifted.prompts),
            "rated_chats": len(pools.rated),
        },
        "radius": {"chi2 (types)": radius["chi2"]},
        "heads": per_seed,
        "comparisons": comparisons,
    }

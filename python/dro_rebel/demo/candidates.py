"""The primary study's data: real prompts, each with K real candidate replies, scored once.

A prompt's candidates are the reply it actually got (a chitchat-dataset chat turn, or the
chatterbot-corpus answer) and K - 1 replies to other prompts of the same split, one from each
length stratum of that split's replies: short, medium and long answers are all on offer, so
that every preference type (one of them wants brevity) can be served by some policy.

Everything a policy needs is computed here, once: the frozen features phi(x, y) = [e(y),
e(x) * e(y)] (MiniLM embeddings; the product's sum is the cosine, so relevance is linear in
them) and the reward of every preference type for every candidate, standardised per type
with the training prompts' mean and spread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from dro_rebel.demo.data import Chat
from dro_rebel.demo.embeddings import Encoder
from dro_rebel.demo.preferences import PreferenceTypes
from dro_rebel.demo.rewards import Objectives

__all__ = ["CandidateSet", "chat_exchanges", "dialogue_exchanges", "build_candidates", "standardise", "cut"]

# Chat turns are sometimes paragraphs; a reply is cut to what a chat partner would say.
REPLY_WORDS = 48


def cut(text: str) -> str:
    """``text`` up to its first ``REPLY_WORDS`` words."""
    return " ".join(text.split()[:REPLY_WORDS])


@dataclass
class CandidateSet:
    """P prompts with K candidates each."""

    prompts: List[str]
    candidates: List[List[str]]
    """(P, K) texts; candidate 0 is the prompt's own reply."""
    features: np.ndarray
    """(P, K, d) float32: phi(x, y)."""
    rewards: np.ndarray
    """(P, K, T): the reward of each of T preference types (standardised once
    :func:`standardise` has run)."""

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, rows: Sequence[int]) -> "CandidateSet":
        rows = list(rows)
        return CandidateSet(
            [self.prompts[i] for i in rows],
            [self.candidates[i] for i in rows],
            self.features[rows],
            self.rewards[rows],
        )


def chat_exchanges(chats: Sequence[Chat]) -> List[Tuple[str, str]]:
    """(question, the reply it got) for every question asked in the chats, once per question."""
    seen = set()
    out = []
    for chat in chats:
        for turn in range(len(chat.turns) - 1):
            question, reply = chat.turns[turn], chat.turns[turn + 1]
            if question.endswith("?") and 4 <= len(question.split()) <= 30 and reply.strip():
                if question.lower() not in seen:
                    seen.add(question.lower())
                    out.append((cut(question), cut(reply)))
    return out


def dialogue_exchanges(dialogues: Sequence[Tuple[str, str, str]]) -> List[Tuple[str, str]]:
    """(prompt, answer) of the chatterbot-corpus dialogues, once per prompt."""
    seen = set()
    out = []
    for _, prompt, reply in dialogues:
        if prompt.lower() not in seen:
            seen.add(prompt.lower())
            out.append((cut(prompt), cut(reply)))
    return out


def _strata(replies: Sequence[str], count: int) -> List[np.ndarray]:
    """The replies' indices in ``count`` strata of equal size by length in words."""
    order = np.argsort([len(r.split()) for r in replies], kind="stable")
    return np.array_split(order, count)


def build_candidates(
    exchanges: Sequence[Tuple[str, str]],
    k: int,
    rng: np.random.Generator,
    encoder: Encoder,
    objectives: Objectives,
    types: PreferenceTypes,
) -> CandidateSet:
    """The prompts of ``exchanges``, each with its own reply and one reply to another prompt
    of ``exchanges`` from each of k - 1 length strata."""
    prompts = [question for question, _ in exchanges]
    replies = [reply for _, reply in exchanges]
    strata = _strata(replies, k - 1)
    candidates = []
    for own, reply in enumerate(replies):
        others = []
        for stratum in strata:
            pick = int(stratum[rng.integers(len(stratum))])
            while pick == own:
                pick = int(stratum[rng.integers(len(stratum))])
            others.append(replies[pick])
        candidates.append([reply] + others)
    flat_prompts = [p for p in prompts for _ in range(k)]
    flat_replies = [c for row in candidates for c in row]
    prompt_vectors = encoder.encode(flat_prompts)
    reply_vectors = encoder.encode(flat_replies)
    features = np.concatenate([reply_vectors, prompt_vectors * reply_vectors], axis=1)
    rewards = types.rewards(objectives(flat_prompts, flat_replies))
    return CandidateSet(
        prompts, candidates, features.reshape(len(prompts), k, -1), rewards.reshape(len(prompts), k, -1)
    )


def standardise(sets: Sequence[CandidateSet], reference: CandidateSet) -> None:
    """Rewards per type to mean 0 and standard deviation 1 over ``reference``'s candidates (the
    training prompts), the same affine map for every set: types then weigh alike, whatever
    their objectives' scales."""
    flat = reference.rewards.reshape(-1, reference.rewards.shape[-1])
    mean, spread = flat.mean(axis=0), flat.std(axis=0)
    for candidate_set in sets:
        candidate_set.rewards = (candidate_set.rewards - mean) / spread

"""Diverse human preferences: preference types, mixtures of them, and Bradley-Terry labels.

A *preference type* k weights the objectives (``rewards.OBJECTIVES``): r_k(x, y) = w_k . phi(x, y).
A *mixture* m on the simplex says how often each type labels a pair; its reward is
r_m = sum_k m_k r_k. Training pairs come from one skewed mixture; evaluation asks how the
policies do under mixtures they never saw: each vertex of the simplex (one type alone) and the
worst mixture inside a chi-square ball around the training mixture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from dro_rebel.demo.rewards import OBJECTIVES

__all__ = ["PreferenceTypes", "DEFAULT_TYPES", "bradley_terry_labels"]


@dataclass(frozen=True)
class PreferenceTypes:
    """K preference types over the objectives and the skewed mixture that labels training data."""

    names: Tuple[str, ...]
    weights: np.ndarray
    """(K, len(OBJECTIVES)): row k is w_k."""
    train_mixture: np.ndarray
    """(K,) on the simplex."""

    def rewards(self, objectives: np.ndarray) -> np.ndarray:
        """Per-type rewards r_k, shape (n, K), from objective scores of shape (n, d)."""
        return objectives @ self.weights.T

    def assign(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Which type labels each of n training prompts: i.i.d. draws from the training mixture."""
        return rng.choice(len(self.names), size=n, p=self.train_mixture)

    def held_out_mixtures(self) -> Dict[str, np.ndarray]:
        """The fixed evaluation mixtures: every vertex of the simplex and the uniform mixture.

        (The worst case of a linear reward over any set of mixtures lies at one of that set's
        extreme points, so the vertices bound every mixture; the adversarial mixture in a ball
        around the training mixture is computed per policy in ``evaluate.py``.)"""
        k = len(self.names)
        mixtures = {f"only {name}": np.eye(k)[i] for i, name in enumerate(self.names)}
        mixtures["uniform"] = np.full(k, 1.0 / k)
        return mixtures


def _types() -> PreferenceTypes:
    columns = {name: i for i, name in enumerate(OBJECTIVES)}

    def row(**weights: float) -> List[float]:
        out = [0.0] * len(OBJECTIVES)
        for name, value in weights.items():
            out[columns[name]] = value
        return out

    names = ("warm", "informative", "concise")
    weights = np.array(
        [
            # A friendly chat partner: upbeat, personal, polite.
            row(sentiment=1.0, subjectivity=0.5, harmlessness=0.5),
            # An informative answer: on topic, factual rather than opinionated.
            row(relevance=1.5, subjectivity=-0.5, harmlessness=0.5, length=0.3),
            # Someone in a hurry: short and to the point.
            row(relevance=0.5, harmlessness=0.5, length=-1.0),
        ]
    )
    return PreferenceTypes(names, weights, np.array([0.7, 0.2, 0.1]))


DEFAULT_TYPES = _types()
"""Three types that pull in different directions, and a training mixture skewed 70/20/10
towards the first: plain training on it serves the majority type."""


def bradley_terry_labels(
    reward_a: np.ndarray, reward_b: np.ndarray, scale: float, rng: np.random.Generator
) -> np.ndarray:
    """Noisy human labels: True where a is preferred, drawn with P(a > b) =
    sigmoid(scale * (r_a - r_b)) (the Bradley-Terry model)."""
    logits = scale * (np.asarray(reward_a) - np.asarray(reward_b))
    return rng.random(logits.shape) < 1.0 / (1.0 + np.exp(-logits))

"""Synthetic candidates for the primary study's tests: three types whose rewards are linear in
the features, the first opposed to the other two."""

from __future__ import annotations

import numpy as np

from dro_rebel.demo.candidates import CandidateSet


def synthetic(prompts=40, k=5, dim=6, seed=0) -> CandidateSet:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(prompts, k, dim)).astype(np.float32)
    directions = np.array([[1.0, 0, 0, 0, 0, 0], [-0.5, 1.0, 0, 0, 0, 0], [-0.5, 0, 1.0, 0, 0, 0]])
    rewards = features.astype(np.float64) @ directions.T
    return CandidateSet([f"p{i}" for i in range(prompts)], [[""] * k] * prompts, features, rewards)

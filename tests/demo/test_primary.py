"""The primary study's pieces on synthetic candidates: exact evaluation, the majority rule,
the radii that hold the uniform mixture, the minimax ceiling, and the training loops."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from dro_rebel import worst_case  # noqa: E402
from dro_rebel.demo.candidates import CandidateSet  # noqa: E402
from dro_rebel.demo.loglinear import DpoSettings, RebelSettings, expected_rewards, train_dpo, train_rebel  # noqa: E402
from dro_rebel.demo.primary import majority_type, minimax_ceiling, radii, training_mixture  # noqa: E402
from dro_rebel.torch import RobustLoss  # noqa: E402


def synthetic(prompts=40, k=5, dim=6, seed=0) -> CandidateSet:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(prompts, k, dim)).astype(np.float32)
    # Three types whose rewards are linear in the features, the first opposed to the others.
    directions = np.array([[1.0, 0, 0, 0, 0, 0], [-0.5, 1.0, 0, 0, 0, 0], [-0.5, 0, 1.0, 0, 0, 0]])
    rewards = features.astype(np.float64) @ directions.T
    return CandidateSet([f"p{i}" for i in range(prompts)], [[""] * k] * prompts, features, rewards)


def test_expected_rewards_are_the_policy_weighted_rewards():
    data = synthetic()
    np.testing.assert_allclose(expected_rewards(np.zeros(6), data), data.rewards.mean(axis=(0, 1)))
    theta = np.random.default_rng(1).normal(size=6)
    logits = data.features.astype(np.float64) @ theta
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    manual = (probs[:, :, None] * data.rewards).sum(axis=1).mean(axis=0)
    np.testing.assert_allclose(expected_rewards(theta, data), manual)


def test_the_majority_is_the_type_least_correlated_with_the_others():
    assert majority_type(synthetic()) == 0


def test_the_radii_are_the_smallest_balls_that_hold_the_uniform_mixture():
    mixture = training_mixture(3, 0, 0.9)
    assert mixture.tolist() == pytest.approx([0.9, 0.05, 0.05])
    group_losses = np.array([0.1, 2.0, 1.0])
    for ambiguity, radius in radii(mixture).items():
        # Over groups with reference mass = the mixture, the worst case at that radius reaches the
        # uniform mixture's loss, and a slightly smaller ball does not.
        value = worst_case(group_losses, ambiguity, radius=radius, reference=mixture).value
        assert value >= group_losses.mean() - 1e-9
        smaller = worst_case(group_losses, ambiguity, radius=0.5 * radius, reference=mixture).value
        assert smaller < value


def test_the_minimax_ceiling_bounds_every_policys_worst_type():
    data = synthetic()
    ceiling = minimax_ceiling(data, grid=50)["worst_type_reward"]
    rng = np.random.default_rng(2)
    for _ in range(50):
        assert expected_rewards(rng.normal(scale=3.0, size=6), data).min() <= ceiling + 1e-9


def test_rebel_and_dpo_learn_the_majority_and_robust_weights_move_to_the_minority():
    data = synthetic(prompts=60)
    types_of = np.where(np.arange(60) % 10 == 0, 1, 0)  # 10% of the prompts are type 1
    settings = RebelSettings(learning_rate=0.05, eta=1.0, iterations=40, epochs=2, batch_size=20)
    plain, plain_log = train_rebel(data, types_of, settings, RobustLoss("chi2", radius=0.0), np.random.default_rng(0))
    robust, robust_log = train_rebel(
        data, types_of, settings, RobustLoss("chi2", radius=2.0), np.random.default_rng(0), by_group=True
    )
    assert expected_rewards(plain, data)[0] > expected_rewards(np.zeros(6), data)[0] + 0.3
    # The worst case gives the minority more than its share of the batch.
    assert np.mean(robust_log.group_weights, axis=0)[1] > 1.5 * np.mean(plain_log.group_weights, axis=0)[1]
    assert len(robust_log.group_weights) == 40 * 2
    theta, log = train_dpo(
        data, types_of, DpoSettings(learning_rate=0.05, beta=0.5, epochs=3, batch_size=20),
        RobustLoss("chi2", radius=0.0), np.random.default_rng(0), pairs_per_prompt=2, bt_scale=5.0, checkpoints=(1, 3),
    )  # fmt: skip
    assert set(log.checkpoints) == {1, 3}
    assert expected_rewards(theta, data)[0] > expected_rewards(np.zeros(6), data)[0] + 0.3

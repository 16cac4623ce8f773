"""The demo's trainer of many log-linear policies at once, against one policy computed by hand
with the library's own pieces: the sampling, REBEL's pairs (kl_coef, G, whitening), the weights
of each arm, Adam; and the independence of the configurations trained together."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from synthetic_candidates import synthetic  # noqa: E402

import dro_rebel  # noqa: E402
from dro_rebel.demo.loglinear import (  # noqa: E402
    MAX_GENERATIONS,
    Config,
    DpoShape,
    RebelShape,
    Weighting,
    expected_rewards,
    expected_rewards_many,
    online_adversary_weights,
    penalised_rewards,
    pick_pairs,
    seed_data,
    train_dpo_many,
    train_rebel_many,
    whiten,
)
from dro_rebel.torch import dpo_loss, rebel_loss  # noqa: E402

MIXTURE = np.array([0.8, 0.1, 0.1])
CHI2_TYPES = Weighting("exact", "chi2", 0.5, by_group=True)


def test_expected_rewards_are_the_policy_weighted_rewards():
    data = synthetic()
    np.testing.assert_allclose(expected_rewards(np.zeros(6), data), data.rewards.mean(axis=(0, 1)))
    thetas = np.random.default_rng(1).normal(size=(2, 3, 6))
    many = expected_rewards_many(thetas, data)
    for s in range(2):
        for h in range(3):
            logits = data.features.astype(np.float64) @ thetas[s, h]
            probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            np.testing.assert_allclose(many[s, h], (probs[:, :, None] * data.rewards).sum(axis=1).mean(axis=0))


def test_the_kl_penalty_whitening_and_pairs_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 0.5, 2.0], [0.0, 0.0, 0.0, 0.0]])
    logps = torch.tensor([[-1.0, -0.5, -2.0, -3.0], [-1.0, -1.0, -1.0, -1.0]])
    penalised = penalised_rewards(rewards, logps, 0.05, math.log(0.25))
    np.testing.assert_allclose(penalised, rewards - 0.05 * (logps - math.log(0.25)))
    # G = 4: the best and the worst by the penalised reward, first index on ties. The penalty
    # decides the best of row 0: candidates 1 and 3 have the same reward, 3 is the less likely.
    first, second = pick_pairs(penalised)
    assert first[:, 0].tolist() == [3, 0] and second[:, 0].tolist() == [2, 0]
    assert pick_pairs(rewards)[0][:, 0].tolist() == [1, 0]
    # G = 2: the pair as sampled, whatever the rewards.
    first, second = pick_pairs(torch.tensor([[5.0, 1.0], [1.0, 5.0]]))
    assert first[:, 0].tolist() == [0, 0] and second[:, 0].tolist() == [1, 1]
    batch = torch.tensor([[[1.0, 3.0], [2.0, 6.0]]])  # one row, B = 2 prompts, G = 2
    values = np.array([1.0, 3.0, 2.0, 6.0])
    expected = (values - values.mean()) / math.sqrt(values.var(ddof=1) + 1e-8)
    np.testing.assert_allclose(whiten(batch).reshape(-1), expected, rtol=1e-6)


def test_the_online_adversary_follows_its_update_with_a_group_absent():
    log_q = torch.zeros(1, 3, dtype=torch.float64)
    step = torch.tensor([0.5], dtype=torch.float64)
    history = [
        (torch.tensor([[1.0, 3.0, 2.0, 2.0]]), torch.tensor([[0, 0, 1, 1]])),  # type 2 absent
        (torch.tensor([[0.5, 4.0, 1.0, 0.0]]), torch.tensor([[0, 2, 2, 1]])),
    ]
    expected_log_q = np.zeros(3)
    for losses, groups in history:
        weights = online_adversary_weights(log_q, losses, groups, step, 3)
        present = sorted(set(groups[0].tolist()))
        for g in present:
            expected_log_q[g] += 0.5 * losses[0][groups[0] == g].double().mean().item()
        q = np.exp(expected_log_q[present] - expected_log_q[present].max())
        q /= q.sum()
        by_group = dict(zip(present, q))
        expected = [by_group[g] / (groups[0] == g).sum().item() for g in groups[0].tolist()]
        np.testing.assert_allclose(weights[0].numpy(), expected, rtol=1e-12)
        np.testing.assert_allclose(log_q[0].numpy(), expected_log_q, rtol=1e-12)
        assert weights.sum().item() == pytest.approx(1.0)


def _configs():
    return [
        Config("plain", Weighting("mean"), 0.05, 1.0),
        Config("robust", CHI2_TYPES, 0.1, 3.0, kl_coef=0.05),
        Config("online", Weighting("online"), 0.05, 1.0, adversary_step_size=0.3),
        Config("samples", Weighting("exact", "chi2", "calibrated"), 0.05, 1.0),
        Config("reweighted", Weighting("reference", type_weights=(0.5, 3.0, 3.0)), 0.05, 1.0),
        Config("oracle", Weighting("mean"), 0.05, 1.0, uniform_types=True),
    ]


def test_one_rebel_step_by_hand_with_the_librarys_loss_weights_and_adam():
    data = synthetic()
    seed = seed_data(len(data), 30, MIXTURE, 7)
    config = Config("robust", CHI2_TYPES, 0.1, 3.0, kl_coef=0.05)
    log = train_rebel_many(data, [seed], [config], RebelShape(1, 2, 1, 8, False, (1,)))
    # By hand: the seed's batch and uniforms, inverse-transform sampling from the uniform start.
    rng = seed.generator(1, 1)
    local = rng.choice(30, size=8, replace=False)
    uniforms = rng.random((8, MAX_GENERATIONS))[:, :2]
    rows = seed.rows[local]
    types = torch.from_numpy(seed.types[local])
    features = torch.from_numpy(data.features[rows])
    theta = torch.zeros(6, requires_grad=True)
    logps0 = torch.log_softmax(features @ theta.detach(), dim=-1)
    cdf = logps0.exp().cumsum(-1)
    draws = torch.searchsorted(cdf, torch.from_numpy(uniforms).float() * cdf[:, -1:]).clamp(max=4)
    picks = torch.arange(8)
    rewards = torch.from_numpy(data.rewards[rows]).float()[picks[:, None], draws, types[:, None]]
    base = logps0[picks[:, None], draws]
    rewards = rewards - 0.05 * (base - math.log(1 / 5))
    optimiser = torch.optim.Adam([theta], lr=0.1)
    logps = torch.log_softmax(features @ theta, dim=-1)
    losses = rebel_loss(
        logps[picks, draws[:, 0]], logps[picks, draws[:, 1]], base[:, 0], base[:, 1], rewards[:, 0], rewards[:, 1], 3.0
    )
    weights = dro_rebel.robust_weights(losses.detach().double().numpy(), "chi2", radius=0.5, groups=types.numpy())
    (torch.from_numpy(weights).float() * losses).sum().backward()
    optimiser.step()
    np.testing.assert_allclose(log.checkpoints[1][0, 0], theta.detach().numpy(), rtol=1e-5, atol=1e-7)


def test_configurations_trained_together_equal_each_trained_alone():
    data = synthetic()
    seeds = [seed_data(len(data), 30, MIXTURE, s) for s in (3, 4)]
    configs = _configs()
    for generations in (2, 3):
        shape = RebelShape(2, generations, 6, 8, True, (3, 6))
        together = train_rebel_many(data, seeds, configs, shape)
        for column, config in enumerate(configs):
            alone = train_rebel_many(data, seeds[1:], [config], shape)
            for count in (3, 6):
                np.testing.assert_allclose(
                    together.checkpoints[count][1, column], alone.checkpoints[count][0, 0], rtol=1e-4, atol=1e-6
                )
    dpo_configs = [Config("plain", Weighting("mean"), 0.05, 0.3), Config("robust", CHI2_TYPES, 0.1, 1.0)]
    shape = DpoShape(2, 8, 2, 5.0, (1, 2))
    together = train_dpo_many(data, seeds, dpo_configs, shape)
    for column, config in enumerate(dpo_configs):
        alone = train_dpo_many(data, seeds[:1], [config], shape)
        np.testing.assert_allclose(together.checkpoints[2][0, column], alone.checkpoints[2][0, 0], rtol=1e-4, atol=1e-6)


def test_one_dpo_step_by_hand():
    data = synthetic()
    seed = seed_data(len(data), 16, MIXTURE, 5)
    log = train_dpo_many(data, [seed], [Config("robust", CHI2_TYPES, 0.1, 0.5)], DpoShape(1, 32, 2, 5.0, (1,)))
    rng = seed.generator(2, 0)
    local = np.repeat(np.arange(16), 2)
    a = rng.integers(5, size=32)
    b = (a + 1 + rng.integers(4, size=32)) % 5
    rows, types = seed.rows[local], seed.types[local]
    gap = data.rewards[rows, a, types] - data.rewards[rows, b, types]
    prefer_a = rng.random(32) < 1 / (1 + np.exp(-5.0 * gap))
    chosen, rejected = np.where(prefer_a, a, b), np.where(prefer_a, b, a)
    order = seed.generator(3, 1).permutation(32)
    theta = torch.zeros(6, requires_grad=True)
    optimiser = torch.optim.Adam([theta], lr=0.1)
    logps = torch.log_softmax(torch.from_numpy(data.features[rows[order]]) @ theta, dim=-1)
    picks = torch.arange(32)
    zero = torch.zeros(())
    losses = dpo_loss(logps[picks, chosen[order]], logps[picks, rejected[order]], zero, zero, 0.5)
    weights = dro_rebel.robust_weights(losses.detach().double().numpy(), "chi2", radius=0.5, groups=types[order])
    (torch.from_numpy(weights).float() * losses).sum().backward()
    optimiser.step()
    np.testing.assert_allclose(log.checkpoints[1][0, 0], theta.detach().numpy(), rtol=1e-5, atol=1e-7)


def test_robust_weights_move_to_the_minority_and_policies_learn():
    data = synthetic(prompts=60)
    seeds = [seed_data(len(data), 60, MIXTURE, s) for s in (0, 1)]
    wide = Weighting("exact", "chi2", 2.0, by_group=True)
    configs = [Config("plain", Weighting("mean"), 0.05, 1.0), Config("robust", wide, 0.05, 1.0)]
    log = train_rebel_many(data, seeds, configs, RebelShape(2, 2, 40, 20, False, (40,)))
    weights = log.type_weights()  # (S, H, T)
    assert np.all(weights[:, 1, 1:].sum(axis=-1) > 1.3 * weights[:, 0, 1:].sum(axis=-1))
    rewards = expected_rewards_many(log.checkpoints[40], data)
    assert np.all(rewards[:, 0, 0] > expected_rewards(np.zeros(6), data)[0] + 0.3)
    assert 0.0 <= log.identical_pairs().min() <= log.identical_pairs().max() <= 1.0


def test_the_start_is_uniform_and_common_random_numbers_are_shared():
    """Two configurations identical but for their names see the same batches and draws."""
    data = synthetic()
    seeds = [seed_data(len(data), 30, MIXTURE, 9)]
    configs = [Config("a", Weighting("mean"), 0.05, 1.0), Config("b", Weighting("mean"), 0.05, 1.0)]
    log = train_rebel_many(data, seeds, configs, RebelShape(2, 4, 5, 8, False, (5,)))
    np.testing.assert_array_equal(log.checkpoints[5][0, 0], log.checkpoints[5][0, 1])
    with pytest.raises(ValueError, match="num_generations"):
        train_rebel_many(data, seeds, configs, RebelShape(1, 1, 1, 8))


def test_the_demos_pairs_and_adversary_are_the_librarys():
    """The batched versions against the library's (dro_rebel.torch.rebel_pairs and
    OnlineGroupAdversary), the ones DroRebelTrainer and RobustLoss use."""
    from dro_rebel.torch import OnlineGroupAdversary, rebel_pairs

    rng = np.random.default_rng(0)
    B, G = 6, 4
    rewards = torch.from_numpy(rng.normal(size=(B, G)))
    rewards[0] = 1.0  # a prompt whose completions tie on the reward
    logps = torch.from_numpy(-rng.random(size=(B, G)) * 3)
    ours = whiten(penalised_rewards(rewards, logps, 0.05, math.log(1 / 8))[None])[0]
    # The library lays completions out sample-major: entry k * B + j is completion k of prompt j.
    flat = lambda values: values.T.reshape(-1)  # noqa: E731
    theirs = rebel_pairs.whitened_rewards(
        rebel_pairs.kl_penalised_rewards(flat(rewards), flat(logps), torch.full((B * G,), math.log(1 / 8)), 0.05)
    )
    np.testing.assert_allclose(flat(ours).numpy(), theirs.numpy(), rtol=1e-12)
    first, second = pick_pairs(ours)
    their_first, their_second = rebel_pairs.pick_pairs(theirs, G)
    assert first[:, 0].tolist() == their_first.tolist() and second[:, 0].tolist() == their_second.tolist()

    adversary = OnlineGroupAdversary(0.7)
    log_q = torch.zeros(1, 3, dtype=torch.float64)
    for step in range(5):
        losses = rng.random(8) * 2
        groups = rng.integers(0, 3 if step != 2 else 2, size=8)
        expected = adversary.weights(losses, groups)
        got = online_adversary_weights(
            log_q,
            torch.from_numpy(losses)[None],
            torch.from_numpy(groups)[None],
            torch.tensor([0.7], dtype=torch.float64),
            3,
        )
        np.testing.assert_allclose(got[0].numpy(), expected, rtol=1e-12)


def test_configurations_of_different_g_and_length_share_a_call():
    """A call mixing G = 2 and G = 4, read off at two lengths, equals separate calls."""
    data = synthetic()
    seeds = [seed_data(len(data), 30, MIXTURE, s) for s in (5, 6)]
    two = Config("two", CHI2_TYPES, 0.05, 1.0, kl_coef=0.05, num_generations=2)
    four = Config("four", Weighting("online"), 0.1, 3.0, adversary_step_size=0.5, num_generations=4)
    for whitened in (False, True):
        mixed = train_rebel_many(data, seeds, [two, four], RebelShape(2, 2, 6, 8, whitened, (3, 6)))
        alone_two = train_rebel_many(data, seeds, [two], RebelShape(2, 2, 3, 8, whitened, (3,)))
        alone_four = train_rebel_many(data, seeds, [four], RebelShape(2, 4, 6, 8, whitened, (6,)))
        early, late = mixed.until(3, 0), mixed.until(6, 1)
        np.testing.assert_allclose(early["theta"], alone_two.checkpoints[3][:, 0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(late["theta"], alone_four.checkpoints[6][:, 0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(early["type_weights"], alone_two.type_weights()[:, 0].mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(early["identical_pairs"], alone_two.identical_pairs()[:, 0], rtol=1e-12)
        np.testing.assert_allclose(late["identical_pairs"], alone_four.identical_pairs()[:, 0], rtol=1e-12)

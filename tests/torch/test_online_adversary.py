"""The online group adversary (docs/method.md#online-group-adversary): its update is the
formula, step by step by hand, a group absent from a batch keeps its weight, and
``RobustLoss(adversary="online")`` uses it, in training mode only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_models import tiny_llama

from dro_rebel.torch import DroRebelConfig, DroRebelTrainer, OnlineGroupAdversary, RobustDPOConfig, RobustLoss

ETA = 0.5


def short_reward(prompts, completions):
    return [-len(text) / 10.0 for text in completions]


# Three batches; group 7 is absent from the second, group 2 first appears in the third.
BATCHES = [
    ([1.0, 3.0, 2.0, 0.5], [0, 0, 7, 7]),
    ([4.0, 2.0, 1.0], [0, 0, 0]),
    ([1.0, 2.0, 6.0, 3.0, 0.0], [7, 0, 2, 7, 0]),
]


def _by_hand():
    """The weights of each batch, written out from the formula (uniform reference)."""
    # Batch 1: L_0 = (1 + 3) / 2 = 2, L_7 = (2 + 0.5) / 2 = 1.25.
    log_q = {0: ETA * 2.0, 7: ETA * 1.25}
    q0, q7 = math.exp(log_q[0]), math.exp(log_q[7])
    first = [q0 / (q0 + q7) / 2] * 2 + [q7 / (q0 + q7) / 2] * 2
    # Batch 2: only group 0 (L_0 = 7/3): it holds all the weight; group 7 keeps its log q.
    log_q[0] += ETA * 7.0 / 3.0
    second = [1.0 / 3.0] * 3
    # Batch 3: L_7 = (1 + 3) / 2 = 2, L_0 = (2 + 0) / 2 = 1, L_2 = 6 (new: starts at 0).
    log_q[7] += ETA * 2.0
    log_q[0] += ETA * 1.0
    log_q[2] = ETA * 6.0
    q = {g: math.exp(v) for g, v in log_q.items()}
    total = sum(q.values())
    third = [q[7] / total / 2, q[0] / total / 2, q[2] / total, q[7] / total / 2, q[0] / total / 2]
    return [first, second, third], log_q


def test_the_update_is_the_formula_with_a_group_absent_in_one_step():
    adversary = OnlineGroupAdversary(step_size=ETA)
    expected, log_q = _by_hand()
    for (losses, groups), want in zip(BATCHES, expected):
        got = adversary.weights(np.array(losses), np.array(groups))
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)
        assert got.sum() == pytest.approx(1.0, abs=1e-15)
    assert adversary.log_weights.keys() == log_q.keys()
    for label, value in log_q.items():
        assert adversary.log_weights[label] == pytest.approx(value, rel=1e-15)


def test_a_reference_weighs_the_group_means_and_the_shares_inside_a_group():
    adversary = OnlineGroupAdversary(step_size=ETA)
    p = np.array([1.0, 3.0, 2.0, 2.0])
    losses, groups = np.array([1.0, 3.0, 2.0, 0.5]), np.array([0, 0, 7, 7])
    got = adversary.weights(losses, groups, p)
    # P_0 = 4/8, P_7 = 4/8; L_0 = (1*1 + 3*3) / 4 = 2.5, L_7 = (2*2 + 2*0.5) / 4 = 1.25.
    q0, q7 = math.exp(ETA * 2.5), math.exp(ETA * 1.25)
    want = [q0 / (q0 + q7) * 0.25, q0 / (q0 + q7) * 0.75, q7 / (q0 + q7) * 0.5, q7 / (q0 + q7) * 0.5]
    np.testing.assert_allclose(got, want, rtol=1e-14)
    # A group whose samples all have zero reference mass is absent: no update, zero weight.
    got = adversary.weights(np.array([5.0, 1.0, 9.0]), np.array([0, 7, 3]), np.array([1.0, 1.0, 0.0]))
    assert got[2] == 0.0 and 3 not in adversary.log_weights
    assert got.sum() == pytest.approx(1.0)


def test_large_accumulated_losses_do_not_overflow():
    adversary = OnlineGroupAdversary(step_size=1.0)
    for _ in range(3):
        got = adversary.weights(np.array([1e300, 1.0]), np.array([0, 1]))
    assert np.isfinite(got).all() and got.tolist() == [1.0, 0.0]


def test_update_false_weighs_without_moving_the_state():
    adversary = OnlineGroupAdversary(step_size=ETA)
    adversary.weights(np.array([1.0, 3.0]), np.array([0, 1]))
    before = dict(adversary.log_weights)
    got = adversary.weights(np.array([9.0, 0.0, 0.0]), np.array([0, 1, 5]), update=False)
    assert adversary.log_weights == before
    q = np.exp([ETA * 1.0, ETA * 3.0, 0.0])
    np.testing.assert_allclose(got, [q[0] / q.sum(), q[1] / q.sum(), q[2] / q.sum()], rtol=1e-14)


def test_the_state_round_trips_and_bad_states_are_refused():
    adversary = OnlineGroupAdversary(step_size=ETA)
    for losses, groups in BATCHES[:2]:
        adversary.weights(np.array(losses), np.array(groups))
    restored = OnlineGroupAdversary(step_size=ETA)
    restored.load_state_dict(adversary.state_dict())
    assert restored.log_weights == adversary.log_weights
    losses, groups = BATCHES[2]
    assert np.array_equal(
        restored.weights(np.array(losses), np.array(groups)), adversary.weights(np.array(losses), np.array(groups))
    )
    with pytest.raises(ValueError, match="2 labels but 1 log weights"):
        restored.load_state_dict({"labels": [0, 1], "log_weights": [0.0]})
    with pytest.raises(ValueError, match="finite"):
        restored.load_state_dict({"labels": [0], "log_weights": [float("nan")]})


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda a: a.weights(np.array([1.0, 2.0]), None), "pass groups="),
        (lambda a: a.weights(np.array([1.0, 2.0]), np.array([0.5, 1.0])), "integer labels"),
        (lambda a: a.weights(np.array([1.0, 2.0]), np.array([0, 1, 1])), "shape"),
        (lambda a: a.weights(np.array([1.0, np.nan]), np.array([0, 1])), "finite"),
        (lambda a: a.weights(np.array([1.0, 2.0]), np.array([0, 1]), np.array([0.0, 0.0])), "positive sum"),
    ],
)
def test_bad_input_is_a_value_error_that_names_it(call, message):
    adversary = OnlineGroupAdversary()
    with pytest.raises(ValueError, match=message):
        call(adversary)
    assert adversary.log_weights == {}


def test_a_negative_step_size_is_refused():
    with pytest.raises(ValueError, match="adversary_step_size"):
        OnlineGroupAdversary(step_size=-0.1)


def test_robust_loss_online_uses_the_adversary_and_fills_its_stats():
    robust = RobustLoss(adversary="online", adversary_step_size=ETA)
    adversary = OnlineGroupAdversary(step_size=ETA)
    for losses, groups in BATCHES:
        values = torch.tensor(losses, requires_grad=True)
        loss = robust(values, groups=torch.tensor(groups))
        loss.backward()
        want = adversary.weights(np.array(losses), np.array(groups))
        # Danskin: the gradient is the (detached) weights.
        np.testing.assert_allclose(values.grad.numpy(), want, rtol=1e-6)
        assert robust.last.value == pytest.approx(float(want @ np.array(losses)))
        assert robust.last.mean == pytest.approx(float(np.mean(losses)))
        assert robust.last.ess == pytest.approx(1.0 / float(want @ want))
        assert robust.last.max_weight == pytest.approx(float(want.max()))
        assert robust.last.radius is None
    assert robust.adversary.log_weights == pytest.approx(adversary.log_weights)


def test_robust_loss_online_in_eval_mode_does_not_update():
    robust = RobustLoss(adversary="online", adversary_step_size=ETA)
    robust(torch.tensor([1.0, 2.0]), groups=torch.tensor([0, 1]))
    before = dict(robust.adversary.log_weights)
    robust.eval()
    robust(torch.tensor([5.0, 0.0]), groups=torch.tensor([0, 1]))
    assert robust.adversary.log_weights == before


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"adversary": "online", "radius": 0.1}, "leave radius unset"),
        ({"adversary": "online", "penalty": 1.0, "alpha": 0.5}, "leave penalty, alpha unset"),
        ({"adversary": "sometimes"}, "adversary must be one of"),
        ({"adversary": "online", "adversary_step_size": float("inf")}, "adversary_step_size"),
    ],
)
def test_robust_loss_online_misuse_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RobustLoss("chi2", **kwargs)


def test_robust_loss_online_needs_groups():
    with pytest.raises(ValueError, match="pass groups="):
        RobustLoss(adversary="online")(torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"adversary": "online"}, "set group_column"),
        ({"adversary": "online", "group_column": "group", "radius": 0.1}, "leave radius unset"),
        ({"adversary": "online", "group_column": "group", "gradient_penalty": "rebel"}, "leave gradient_penalty unset"),
        ({"adversary": "online", "group_column": "group", "adversary_step_size": -1.0}, "adversary_step_size"),
        ({"adversary": "exact", "adversary_step_size": float("nan")}, "adversary_step_size"),
        ({"adversary": "Online", "group_column": "group"}, "adversary must be one of"),
    ],
)
def test_config_misuse_is_named_when_built(fields, message):
    with pytest.raises(ValueError, match=message):
        RobustDPOConfig(**fields)


def test_a_config_asks_robust_loss_for_the_online_adversary():
    config = DroRebelConfig(group_column="group", adversary="online", adversary_step_size=0.2)
    robust = RobustLoss(config.ambiguity, **config.robust_kwargs())
    assert robust.adversary is not None and robust.adversary.step_size == 0.2
    assert config.radius_at(10) is None


def test_rebel_with_the_online_adversary_updates_once_per_optimiser_step(tokenizer, prompts, tmp_path):
    config = DroRebelConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_new_tokens=4,
        max_steps=1,
        rollout_epochs=2,
        group_column="group",
        adversary="online",
        adversary_step_size=ETA,
        disable_tqdm=True,
    )
    trainer = DroRebelTrainer(tiny_llama(tokenizer), tokenizer, config, prompts, short_reward)
    rollout = trainer.next_batch(1)
    losses = []
    compute_losses = trainer.compute_losses

    def recording(batch):
        output = compute_losses(batch)
        losses.append((output[0].detach().double().numpy(), batch["groups"].numpy()))
        return output

    trainer.compute_losses = recording
    trainer.optimise(rollout)
    # Two epochs, one mini-batch each: two updates, each with the group means of its losses.
    want = {}
    for step_losses, groups in losses:
        for label in np.unique(groups).tolist():
            want[label] = want.get(label, 0.0) + ETA * float(step_losses[groups == label].mean())
    assert trainer.robust_loss.adversary.log_weights == pytest.approx(want, rel=1e-12)

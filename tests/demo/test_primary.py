"""The primary study's pieces on synthetic candidates: the majority rule, the radii that hold
the uniform mixture, the minimax ceiling, the tuning rule with its edge extension, the seeds."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from synthetic_candidates import synthetic  # noqa: E402

from dro_rebel import worst_case  # noqa: E402
from dro_rebel.demo.loglinear import Config, expected_rewards  # noqa: E402
from dro_rebel.demo.preferences import DEFAULT_TYPES  # noqa: E402
from dro_rebel.demo.primary import (  # noqa: E402
    COMPARISONS,
    StudySize,
    _by_length,
    _test,
    _tune,
    arms,
    majority_type,
    minimax_ceiling,
    radii,
    run_primary,
    training_mixture,
)


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


def _size(**changes) -> StudySize:
    values = dict(
        test_seeds=(3000, 3001),
        tuning_seeds=(2000,),
        other_majority_test_seeds=(3000, 3001),
        n_train=30,
        k=5,
        majority_share=0.8,
        batch_size=8,
        rebel_learning_rates=(0.1,),
        rebel_etas=(1.0,),
        rebel_kl_coefs=(0.0,),
        rebel_generations=(2,),
        rebel_epochs=1,
        rebel_iterations=(2, 4),
        adversary_step_sizes=(0.1,),
        dpo_learning_rates=(0.1,),
        dpo_betas=(0.3,),
        dpo_epochs=(1, 2),
        pairs_per_prompt=2,
        bt_scale=5.0,
        learning_rate_ladder=(0.03, 0.1, 0.3),
        max_extensions=2,
    )
    values.update(changes)
    return StudySize(**values)


def test_every_arm_takes_its_best_validation_worst_type_point_and_edges_extend_the_grid():
    pool, validation = synthetic(prompts=40, k=5), synthetic(prompts=20, k=5, seed=1)
    mixture = training_mixture(3, 0, 0.8)
    study_arms = arms(mixture)
    chosen, average, record = _tune(pool, validation, _size(), mixture, study_arms, progress=False)
    # One learning rate is both ends of the grid: the first round adds both neighbours.
    first_round = [e for e in record["extensions"] if e["round"] == 1]
    assert {e["arm"] for e in first_round} == {a.name for a in study_arms}
    for arm in study_arms:
        assert set(record["learning_rates"][arm.name]) >= {0.03, 0.1, 0.3}
        scores = {}
        for entry in record["grid"]:
            if entry["arm"] == arm.name:
                rewards = np.asarray(entry["validation_type_rewards"])
                scores[tuple(entry["point"])] = rewards.min()
        # One tuning seed: the mean over seeds of the minimum is the minimum of the mean.
        assert scores[tuple(chosen[arm.name])] == pytest.approx(max(scores.values()))
        assert record["validation_worst_type_reward"][arm.name] == pytest.approx(max(scores.values()))
    assert average["REBEL"] == average["chi2-REBEL (types)"] and average["DPO"] == average["chi2-DPO (types)"]
    assert len(COMPARISONS) * 2 == 20


def test_settings_side_by_side_in_processes_equal_one_after_the_other():
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool, validation = synthetic(prompts=40, k=5), synthetic(prompts=20, k=5, seed=1)
    test, shift = synthetic(prompts=20, k=5, seed=2), synthetic(prompts=20, k=5, seed=3)
    size = _size(max_extensions=0)
    one_by_one = run_primary(pool, validation, test, shift, DEFAULT_TYPES, size, progress=False)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as executor:
        side_by_side = run_primary(
            pool, validation, test, shift, DEFAULT_TYPES, size, progress=False, map_settings=executor.map
        )
    assert set(side_by_side["other_majorities"]) == set(DEFAULT_TYPES.names) - {one_by_one["majority_type"]}
    for ours, theirs in [(side_by_side, one_by_one)] + [
        (side_by_side["other_majorities"][name], one_by_one["other_majorities"][name])
        for name in one_by_one["other_majorities"]
    ]:
        assert ours["arms"] == theirs["arms"] and ours["tuning"]["chosen"] == theirs["tuning"]["chosen"]


def test_a_run_per_length_reads_each_choice_as_one_long_run_does():
    pool, test = synthetic(prompts=40, k=5), synthetic(prompts=20, k=5, seed=2)
    mixture = training_mixture(3, 0, 0.8)
    study_arms = arms(mixture)
    rebel = {a.name: a for a in study_arms if a.family == "rebel"}
    points = {name: (0.1, 1.0, 0.0, 0.1 if arm.online else 0.0, 2, 4) for name, arm in rebel.items()}
    # Two readings: one agrees with the first at another length, one runs longer.
    short = {name: point[:-1] + (2,) for name, point in points.items()}
    longer = dict(points, REBEL=(0.3, 1.0, 0.0, 0.0, 2, 8))
    size = _size()
    grouped = _test(pool, test, test, size, mixture, study_arms, {"a": points, "b": short, "c": longer},
                    (3000, 3001), progress=False)  # fmt: skip
    assert [(length, len(configs)) for length, configs, _ in _by_length(
        [(r, n, Config(n, rebel[n].weighting, *p[:4], rebel[n].uniform_types, p[4]), p[5])
         for r, chosen in {"a": points, "b": short, "c": longer}.items() for n, p in chosen.items()]
    )] == [(4, len(rebel)), (8, 1)]  # fmt: skip
    for reading, chosen in {"a": points, "b": short, "c": longer}.items():
        alone = _test(pool, test, test, size, mixture, study_arms, {reading: chosen}, (3000, 3001), progress=False)
        for name in chosen:
            np.testing.assert_allclose(
                grouped[reading][name]["metrics"]["type_rewards"], alone[reading][name]["metrics"]["type_rewards"],
                rtol=1e-4, atol=1e-6,
            )  # fmt: skip


def test_tuning_and_test_seeds_must_be_disjoint():
    data = synthetic(prompts=40, k=5)
    with pytest.raises(ValueError, match="disjoint"):
        run_primary(data, data, data, data, DEFAULT_TYPES, _size(test_seeds=(2000, 3000)), progress=False)


def test_the_command_line_picks_the_test_seeds_and_refuses_tuning_seeds():
    import argparse

    from dro_rebel.demo.cli import _with_seeds
    from dro_rebel.demo.presets import PRESETS

    preset = PRESETS["default"]

    def seeds(**flags):
        values = {"seeds": None, "first_seed": None, "full": False, "other_majorities": None,
                  "tuning_seeds": None, "max_learning_rate": None, **flags}  # fmt: skip
        return _with_seeds(preset, argparse.Namespace(**values)).primary

    assert seeds().test_seeds == preset.primary.test_seeds
    assert seeds().other_majority_test_seeds == preset.primary.other_majority_test_seeds
    chosen = seeds(seeds=30, first_seed=5000)
    # The protocol's other majorities: the first 10 test seeds, wherever those start.
    assert chosen.test_seeds == tuple(range(5000, 5030))
    assert chosen.other_majority_test_seeds == tuple(range(5000, 5010))
    assert seeds(other_majorities=10).other_majority_test_seeds == tuple(range(3000, 3010))
    assert seeds(other_majorities=0).other_majority_test_seeds == ()
    assert seeds(full=True).other_majority_test_seeds == preset.primary.test_seeds
    assert not set(preset.primary.tuning_seeds) & set(preset.primary.test_seeds)
    sturdier = seeds(tuning_seeds=10, max_learning_rate=1.0, first_seed=4000)
    assert sturdier.tuning_seeds == tuple(range(2000, 2010)) and sturdier.test_seeds[0] == 4000
    assert max(sturdier.learning_rate_ladder) == 1.0 and sturdier.rebel_learning_rates == (0.03, 0.1, 0.3)
    with pytest.raises(SystemExit, match="below every learning rate"):
        seeds(max_learning_rate=0.01)
    with pytest.raises(SystemExit, match="are tuning seeds"):
        seeds(tuning_seeds=1001)
    with pytest.raises(SystemExit, match="tuning seeds"):
        seeds(first_seed=preset.primary.tuning_seeds[0])
    with pytest.raises(SystemExit, match="at least 2"):
        seeds(seeds=1)

"""The primary study: does robust training buy a better worst case, judged the way group DRO is
judged? The protocol is written down in docs/demo.md#protocol; this file carries it out.

data       real prompts with K real candidate replies each      (candidates.py)
mixture    types drawn 90/5/5 for the training prompts; the headline majority by a rule fixed
           before any evaluation (the type whose reward agrees least with the others'); the
           other two majorities reported beside it
radii      from the geometry, fixed in advance: the divergence from the training mixture to
           the uniform one (types), and "calibrated" (per sample)
tuning     every arm, plain ones included, chooses its own hyper-parameters by its validation
           worst-type reward, mean over the tuning seeds, on one grid (REBEL: learning rate,
           eta, kl_coef, G, iterations; DPO: learning rate, beta, epochs); a choice on the
           grid's edge in learning rate or length extends the grid on that side
test       fresh seeds, disjoint from the tuning seeds; every arm at its own choice
second     today's practice: the plain arm's validation training-mixture reward chooses one
reading    point for its whole family (the "average-tuned" reading), on the same test seeds
statistics per comparison the paired difference over test seeds, its 95% t-interval and a
           paired t-test, Holm-corrected across the endpoints of one setting
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterable, List, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from dro_rebel.demo.candidates import CandidateSet
from dro_rebel.demo.comparisons import holm, paired_difference
from dro_rebel.demo.loglinear import (
    Config,
    DpoShape,
    RebelShape,
    Weighting,
    expected_rewards_many,
    seed_data,
    train_dpo_many,
    train_rebel_many,
)
from dro_rebel.demo.preferences import PreferenceTypes

__all__ = [
    "StudySize",
    "Arm",
    "majority_type",
    "training_mixture",
    "radii",
    "arms",
    "settings",
    "run_setting",
    "run_primary",
    "sweep_rebel",
    "minimax_ceiling",
    "COMPARISONS",
    "PROTOCOL_COMMIT",
]


@dataclass(frozen=True)
class StudySize:
    """How much of the primary study to run and its grid (recorded in report.json)."""

    test_seeds: Tuple[int, ...]
    """The headline setting's test seeds."""
    tuning_seeds: Tuple[int, ...]
    other_majority_test_seeds: Tuple[int, ...]
    """The test seeds of the two other majorities (a prefix of ``test_seeds`` when smaller)."""
    n_train: int
    """Training prompts drawn per seed from the training pool."""
    k: int
    """Candidates per prompt."""
    majority_share: float
    batch_size: int
    rebel_learning_rates: Tuple[float, ...]
    rebel_etas: Tuple[float, ...]
    rebel_kl_coefs: Tuple[float, ...]
    rebel_generations: Tuple[int, ...]
    rebel_epochs: int
    """Regression passes over each rollout (REBEL's practice: several)."""
    rebel_iterations: Tuple[int, ...]
    """Checkpoints of one run, the candidates for the number of iterations."""
    adversary_step_sizes: Tuple[float, ...]
    """The online adversary's step sizes (its arm's grid only)."""
    dpo_learning_rates: Tuple[float, ...]
    dpo_betas: Tuple[float, ...]
    dpo_epochs: Tuple[int, ...]
    pairs_per_prompt: int
    bt_scale: float
    learning_rate_ladder: Tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
    """Where an edge choice extends the learning rates: the next value on this ladder."""
    max_extensions: int = 2
    """Rounds of edge extension at most."""


@dataclass(frozen=True)
class Arm:
    """One row of the study: its family (``"rebel"`` or ``"dpo"``), its weighting, its data."""

    name: str
    family: str
    weighting: Weighting
    uniform_types: bool = False
    """Types drawn from the uniform mixture (the oracle)."""
    online: bool = False
    """Its grid has the online adversary's step sizes."""
    description: str = ""


def majority_type(pool: CandidateSet) -> int:
    """The type whose reward is least correlated, on average, with the other types' rewards
    over the training pool's candidates: a majority that conflicts most with the minorities
    is the shift most worth guarding against. Uses training prompts only."""
    flat = pool.rewards.reshape(-1, pool.rewards.shape[-1])
    correlation = np.corrcoef(flat.T)
    count = correlation.shape[0]
    mean_with_others = (correlation.sum(axis=1) - 1.0) / (count - 1)
    return int(np.argmin(mean_with_others))


def training_mixture(count: int, majority: int, share: float) -> np.ndarray:
    mixture = np.full(count, (1.0 - share) / (count - 1))
    mixture[majority] = share
    return mixture


def radii(mixture: np.ndarray) -> Dict[str, float]:
    """The divergence from the training mixture p to the uniform one u, in each set's
    convention: the smallest ball around p that holds the uniform mixture."""
    uniform = np.full_like(mixture, 1.0 / mixture.size)
    return {
        "chi2": float(0.5 * np.sum(mixture * (uniform / mixture - 1.0) ** 2)),
        "kl": float(np.sum(uniform * np.log(uniform / mixture))),
    }


def _to_uniform(mixture: np.ndarray) -> Tuple[float, ...]:
    """Per-type weights that turn the training mixture into the uniform one."""
    return tuple(float(w) for w in (1.0 / mixture.size) / mixture)


def arms(mixture: np.ndarray) -> List[Arm]:
    radius = radii(mixture)
    chi2, kl = radius["chi2"], radius["kl"]
    return [
        Arm("REBEL", "rebel", Weighting("mean"), description="plain REBEL"),
        Arm(
            "chi2-REBEL (types)", "rebel", Weighting("exact", "chi2", chi2, by_group=True),
            description=f"the batch's exact worst case in a chi2 ball of radius {chi2:.3f} over mixtures of the types",
        ),
        Arm(
            "KL-REBEL (types)", "rebel", Weighting("exact", "kl", kl, by_group=True),
            description=f"the batch's exact worst case in a KL ball of radius {kl:.3f} over mixtures of the types",
        ),
        Arm(
            "online-REBEL (types)", "rebel", Weighting("online"), online=True,
            description="Sagawa et al.'s online group adversary over the types (weights persist across steps)",
        ),
        Arm(
            "chi2-REBEL (samples)", "rebel", Weighting("exact", "chi2", "calibrated"),
            description="DRO-REBEL's chi2 ball over the batch's samples, radius calibrated (1.353 / batch size)",
        ),
        Arm(
            "REBEL reweighted", "rebel", Weighting("reference", type_weights=_to_uniform(mixture)),
            description="fixed weights that make the training mixture uniform (knows the test mixture)",
        ),
        Arm(
            "oracle (uniform data)", "rebel", Weighting("mean"), uniform_types=True,
            description="REBEL on prompts whose types are drawn uniformly: the upper reference",
        ),
        Arm("DPO", "dpo", Weighting("mean"), description="plain DPO"),
        Arm(
            "chi2-DPO (types)", "dpo", Weighting("exact", "chi2", chi2, by_group=True),
            description=f"the batch's exact worst case in a chi2 ball of radius {chi2:.3f} over mixtures of the types",
        ),
    ]  # fmt: skip


ROBUST_REBEL = ("chi2-REBEL (types)", "KL-REBEL (types)", "online-REBEL (types)", "chi2-REBEL (samples)")
COMPARED = ("worst_type_reward", "train_mixture_reward")
COMPARISONS: Tuple[Tuple[str, str], ...] = (
    *((robust, "REBEL") for robust in ROBUST_REBEL),
    *((robust, "REBEL reweighted") for robust in ROBUST_REBEL),
    ("REBEL reweighted", "REBEL"),
    ("chi2-DPO (types)", "DPO"),
)
"""(robust, plain) pairs compared on both metrics of ``COMPARED``: every endpoint of a setting."""


def minimax_ceiling(data: CandidateSet, grid: int = 100) -> Dict[str, Any]:
    """The best worst-type reward of any policy on ``data`` with full information:
    max_pi min_k mean_x E_pi r_k = min_w mean_x max_y sum_k w_k r_k(x, y) over mixtures w
    (minimax theorem; each prompt's policy is free), found on a grid of the simplex."""
    count = data.rewards.shape[-1]
    best_value, best_mixture = np.inf, None
    for point in itertools.product(range(grid + 1), repeat=count - 1):
        if sum(point) > grid:
            continue
        mixture = np.array(list(point) + [grid - sum(point)], dtype=float) / grid
        value = float((data.rewards @ mixture).max(axis=1).mean())
        if value < best_value:
            best_value, best_mixture = value, mixture
    return {"worst_type_reward": best_value, "mixture": best_mixture.tolist()}


# A grid point: REBEL (learning rate, eta, kl_coef, adversary step size, G, iterations);
# DPO (learning rate, beta, epochs).
Point = Tuple[Any, ...]


def _points_to_dict(family: str, point: Point) -> Dict[str, Any]:
    if family == "rebel":
        keys = ("learning_rate", "eta", "kl_coef", "adversary_step_size", "num_generations", "iterations")
    else:
        keys = ("learning_rate", "beta", "epochs")
    return dict(zip(keys, point))


class _Grid:
    """Every (arm, grid point) trained on some seeds, scored on named prompt sets: what tuning
    (validation prompts, tuning seeds) and the sweep (validation and test, sweep seeds) share."""

    def __init__(self, pool, sets: Dict[str, CandidateSet], size: StudySize, mixture: np.ndarray, seeds, bar):
        self.pool, self.sets, self.size, self.mixture, self.bar = pool, sets, size, mixture, bar
        self.seeds = [seed_data(len(pool), size.n_train, mixture, s) for s in seeds]
        # scores[(arm, point)][set name] = (seeds, T) rewards of each type
        self.scores: Dict[Tuple[str, Point], Dict[str, np.ndarray]] = {}

    def run_rebel(self, arm_list: Sequence[Arm], learning_rates: Dict[str, Sequence[float]], iterations: int) -> None:
        size = self.size
        checkpoints = tuple(sorted({i for i in size.rebel_iterations if i <= iterations} | {iterations}))
        for generations in size.rebel_generations:
            configs = []
            for arm in arm_list:
                steps = size.adversary_step_sizes if arm.online else (0.0,)
                for lr, eta, kl, step in itertools.product(learning_rates[arm.name], size.rebel_etas,
                                                           size.rebel_kl_coefs, steps):  # fmt: skip
                    configs.append(Config(arm.name, arm.weighting, lr, eta, kl, step, arm.uniform_types))
            if not configs:
                continue
            shape = RebelShape(size.rebel_epochs, generations, iterations, size.batch_size, False, checkpoints)
            log = train_rebel_many(self.pool, self.seeds, configs, shape)
            for count, thetas in log.checkpoints.items():
                scored = {name: expected_rewards_many(thetas, data) for name, data in self.sets.items()}
                for column, c in enumerate(configs):
                    point = (c.learning_rate, c.scale, c.kl_coef, c.adversary_step_size, generations, count)
                    self.scores[(c.arm, point)] = {name: values[:, column] for name, values in scored.items()}
            self.bar.update(1)

    def run_dpo(self, arm_list: Sequence[Arm], learning_rates: Dict[str, Sequence[float]], epochs: int) -> None:
        size = self.size
        checkpoints = tuple(sorted({e for e in size.dpo_epochs if e <= epochs} | {epochs}))
        configs = [
            Config(arm.name, arm.weighting, lr, beta)
            for arm in arm_list
            for lr, beta in itertools.product(learning_rates[arm.name], size.dpo_betas)
        ]
        if not configs:
            return
        shape = DpoShape(epochs, size.batch_size, size.pairs_per_prompt, size.bt_scale, checkpoints)
        log = train_dpo_many(self.pool, self.seeds, configs, shape)
        for count, thetas in log.checkpoints.items():
            scored = {name: expected_rewards_many(thetas, data) for name, data in self.sets.items()}
            for column, c in enumerate(configs):
                self.scores[(c.arm, (c.learning_rate, c.scale, count))] = {
                    name: values[:, column] for name, values in scored.items()
                }
        self.bar.update(1)

    def criterion(self, arm: str, rule: str, set_name: str = "validation") -> Dict[Point, float]:
        """Each of ``arm``'s points scored by ``rule``, mean over seeds: ``"worst_type"`` (the
        minimum over types) or ``"train_mixture"``."""
        out = {}
        for (name, point), sets in self.scores.items():
            if name != arm:
                continue
            rewards = sets[set_name]
            value = rewards.min(axis=1) if rule == "worst_type" else rewards @ self.mixture
            out[point] = float(np.mean(value))
        return out


def _best(scores: Dict[Point, float]) -> Point:
    """The best point; ties go to the first in sorted order (smallest values)."""
    return max(sorted(scores), key=lambda point: scores[point])


def _tune(
    pool, validation, size: StudySize, mixture: np.ndarray, study_arms: List[Arm], progress: bool, label: str = ""
):
    """Every arm's choice by its own validation worst-type reward (with edge extension), and
    each plain arm's choice by its validation training-mixture reward (the second reading)."""
    bar = tqdm(desc=f"{label}tuning on validation prompts", disable=not progress, unit="call")
    grid = _Grid(pool, {"validation": validation}, size, mixture, size.tuning_seeds, bar)
    rebel_arms = [a for a in study_arms if a.family == "rebel"]
    dpo_arms = [a for a in study_arms if a.family == "dpo"]
    lrs = {a.name: list(size.rebel_learning_rates) for a in rebel_arms}
    lrs.update({a.name: list(size.dpo_learning_rates) for a in dpo_arms})
    length = {a.name: max(size.rebel_iterations) for a in rebel_arms}
    length.update({a.name: max(size.dpo_epochs) for a in dpo_arms})
    grid.run_rebel(rebel_arms, lrs, max(size.rebel_iterations))
    grid.run_dpo(dpo_arms, lrs, max(size.dpo_epochs))
    extensions: List[Dict[str, Any]] = []
    ladder = list(size.learning_rate_ladder)
    by_name = {a.name: a for a in study_arms}
    for round_ in range(size.max_extensions):
        # (family, run length) -> {arm: the learning rates to run at that length}
        work: Dict[Tuple[str, int], Dict[str, List[float]]] = {}
        for arm in study_arms:
            choice = _best(grid.criterion(arm.name, "worst_type"))
            lr, run_length = choice[0], choice[-1]
            extra = []
            if lr == max(lrs[arm.name]) and lr in ladder and ladder.index(lr) + 1 < len(ladder):
                extra.append(ladder[ladder.index(lr) + 1])
            if lr == min(lrs[arm.name]) and lr in ladder and ladder.index(lr) > 0:
                extra.append(ladder[ladder.index(lr) - 1])
            longer = run_length == length[arm.name]
            if not extra and not longer:
                continue
            extensions.append(
                {"round": round_ + 1, "arm": arm.name, "choice": _points_to_dict(arm.family, choice),
                 "new_learning_rates": extra, "longer": longer}
            )  # fmt: skip
            lrs[arm.name] = sorted(set(lrs[arm.name]) | set(extra))
            if longer:
                # A longer run for every learning rate: its scores replace the shorter run's.
                length[arm.name] *= 2
                work.setdefault((arm.family, length[arm.name]), {})[arm.name] = lrs[arm.name]
            else:
                work.setdefault((arm.family, length[arm.name]), {})[arm.name] = extra
        if not work:
            break
        for (family, run_length), todo in work.items():
            run = grid.run_rebel if family == "rebel" else grid.run_dpo
            run([by_name[name] for name in todo], todo, run_length)
    bar.close()
    chosen = {a.name: _best(grid.criterion(a.name, "worst_type")) for a in study_arms}
    average = {
        "rebel": _best(grid.criterion("REBEL", "train_mixture")),
        "dpo": _best(grid.criterion("DPO", "train_mixture")),
    }
    average_points = {}
    for arm in study_arms:
        point = average[arm.family]
        if arm.online:
            # Its one dimension the plain arm lacks, the step size, by the same criterion.
            scores = grid.criterion(arm.name, "train_mixture")
            same = {p: v for p, v in scores.items() if p[:3] == point[:3] and p[4:] == point[4:]}
            point = _best(same) if same else point[:3] + (size.adversary_step_sizes[0],) + point[4:]
        average_points[arm.name] = point
    record = {
        "criterion": "each arm's own validation worst-type reward, mean over the tuning seeds",
        "tuning_seeds": list(size.tuning_seeds),
        "chosen": {a.name: _points_to_dict(a.family, chosen[a.name]) for a in study_arms},
        "validation_worst_type_reward": {
            a.name: grid.criterion(a.name, "worst_type")[chosen[a.name]] for a in study_arms
        },
        "extensions": extensions,
        "learning_rates": lrs,
        "lengths": length,
        "average_tuned": {
            "criterion": "the plain arm's validation training-mixture reward, mean over the tuning seeds; "
            "its choice is used by every arm of its family",
            "rebel": _points_to_dict("rebel", average["rebel"]),
            "dpo": _points_to_dict("dpo", average["dpo"]),
            "points": {name: list(point) for name, point in average_points.items()},
        },
        "grid": [
            {"arm": arm, "point": list(point), "validation_type_rewards": sets["validation"].mean(axis=0).tolist()}
            for (arm, point), sets in sorted(grid.scores.items(), key=str)
        ],
    }
    return chosen, average_points, record


def _evaluate_many(thetas: np.ndarray, test: CandidateSet, shift: CandidateSet, mixture: np.ndarray):
    """(S, d) thetas of one configuration -> the per-seed metrics of report.json."""
    test_rewards, shift_rewards = expected_rewards_many(thetas, test), expected_rewards_many(thetas, shift)
    return {
        "type_rewards": test_rewards.tolist(),
        "worst_type_reward": test_rewards.min(axis=1).tolist(),
        "train_mixture_reward": (test_rewards @ mixture).tolist(),
        "uniform_mixture_reward": test_rewards.mean(axis=1).tolist(),
        "shifted_type_rewards": shift_rewards.tolist(),
        "shifted_reward": shift_rewards.min(axis=1).tolist(),
    }


def _test(pool, test, shift, size, mixture, study_arms, assignments, seeds, progress, label=""):
    """Train every (reading, arm) of ``assignments`` at its point on the test seeds; returns,
    per reading, the arms' per-seed metrics, mean type weights, their course and the share of
    identical pairs."""
    by_name = {a.name: a for a in study_arms}
    entries: Dict[str, List[Tuple[str, str, Config, int]]] = {"rebel": [], "dpo": []}
    for reading, chosen in assignments.items():
        for name, point in chosen.items():
            arm = by_name[name]
            if arm.family == "rebel":
                lr, eta, kl, step, generations, iterations = point
                config = Config(name, arm.weighting, lr, eta, kl, step, arm.uniform_types, generations)
                entries["rebel"].append((reading, name, config, iterations))
            else:
                lr, beta, epochs = point
                entries["dpo"].append((reading, name, Config(name, arm.weighting, lr, beta), epochs))
    seed_list = [seed_data(len(pool), size.n_train, mixture, s) for s in seeds]
    out: Dict[str, Dict[str, Any]] = {reading: {} for reading in assignments}
    calls = [(family, group) for family in ("rebel", "dpo") for group in _by_length(entries[family])]
    for family, (length, configs, checkpoints) in tqdm(
        calls, desc=f"{label}training on the test seeds", disable=not progress
    ):
        if family == "rebel":
            shape = RebelShape(size.rebel_epochs, 2, length, size.batch_size, False, checkpoints)
            log = train_rebel_many(pool, seed_list, configs, shape)
        else:
            shape = DpoShape(length, size.batch_size, size.pairs_per_prompt, size.bt_scale, checkpoints)
            log = train_dpo_many(pool, seed_list, configs, shape)
        for reading, name, config, at in entries[family]:
            if config not in configs:
                continue
            record = log.until(at, configs.index(config))
            identical = record["identical_pairs"]
            out[reading][name] = {
                "metrics": _evaluate_many(record["theta"], test, shift, mixture),
                "type_weights": {
                    "mean": record["type_weights"].tolist(),
                    "course": [stretch.tolist() for stretch in record["course"]],
                },
                "identical_pairs": None if identical is None else identical.tolist(),
            }
    return out


def _by_length(entries: Sequence[Tuple[str, str, Config, int]]) -> List[Tuple[int, List[Config], Tuple[int, ...]]]:
    """One training call per run length: (length, its configurations, their checkpoints).

    A configuration (readings that agree share one) runs as long as its longest reading asks
    and is read off at each. Grouping by length keeps a 25-iteration choice from running as
    long as the longest choice of its family: a configuration's run does not depend on the
    others in its call (tests/demo/test_loglinear.py)."""
    wanted: Dict[Config, set] = {}
    for _, _, config, length in entries:
        wanted.setdefault(config, set()).add(length)
    groups: Dict[int, Tuple[List[Config], set]] = {}
    for config, lengths in wanted.items():
        configs, checkpoints = groups.setdefault(max(lengths), ([], set()))
        configs.append(config)
        checkpoints.update(lengths)
    return [(length, configs, tuple(sorted(points))) for length, (configs, points) in sorted(groups.items())]


def compare(results: Dict[str, Dict[str, List[Any]]]) -> List[Dict[str, Any]]:
    """Every endpoint of ``COMPARISONS`` on both metrics, paired over seeds, Holm across them."""
    comparisons = []
    for robust, plain in COMPARISONS:
        if robust not in results or plain not in results:
            continue
        for metric in COMPARED:
            stats = paired_difference(results[robust][metric], results[plain][metric])
            comparisons.append({"robust": robust, "plain": plain, "metric": metric, **stats})
    for comparison, adjusted in zip(comparisons, holm([c["p"] for c in comparisons])):
        comparison["p_holm"] = adjusted
    return comparisons


def _setting(pool, validation, test, shift, types, size, majority, seeds, progress) -> Dict[str, Any]:
    """The whole protocol with ``majority`` as the majority type, tested on ``seeds``."""
    mixture = training_mixture(len(types.names), majority, size.majority_share)
    study_arms = arms(mixture)
    # Settings may run side by side: their progress bars say whose they are.
    label = f"{types.names[majority]} majority: "
    chosen, average_points, tuning = _tune(pool, validation, size, mixture, study_arms, progress, label)
    assignments = {"primary": chosen, "average": average_points}
    trained = _test(pool, test, shift, size, mixture, study_arms, assignments, seeds, progress, label)

    def reading(name: str) -> Dict[str, Any]:
        arms_out = {a.name: trained[name][a.name]["metrics"] for a in study_arms}
        return {
            "arms": arms_out,
            "comparisons": compare(arms_out),
            "type_weights": {a.name: trained[name][a.name]["type_weights"] for a in study_arms},
            "identical_pairs": {
                a.name: float(np.mean(trained[name][a.name]["identical_pairs"]))
                for a in study_arms
                if trained[name][a.name]["identical_pairs"] is not None
            },
        }

    primary, average_tuned = reading("primary"), reading("average")
    average_tuned["hyperparameters"] = tuning["average_tuned"]
    radius = radii(mixture)
    return {
        "majority_type": types.names[majority],
        "training_mixture": mixture.tolist(),
        "radii": {
            "chi2 (types)": radius["chi2"],
            "KL (types)": radius["kl"],
            "chi2 (samples)": f"calibrated: 1.353 / {size.batch_size}",
            "rule": "the divergence from the training mixture to the uniform one; per sample, 'calibrated'",
        },
        "arm_descriptions": {a.name: a.description for a in study_arms},
        "test_seeds": list(seeds),
        "tuning": tuning,
        **primary,
        "average_tuned": average_tuned,
    }


PROTOCOL_COMMIT = "1bf38ea96e2c35dbdd54259b27888c3dfcea2f58"
"""The commit that wrote the protocol of docs/demo.md#protocol, before the study ran under it
(recorded in report.json; a test checks that the protocol has not changed since)."""


def settings(pool: CandidateSet, types: PreferenceTypes, size: StudySize) -> List[Tuple[int, Tuple[int, ...]]]:
    """The protocol's settings, (majority type, test seeds) each: the rule's majority on
    ``size.test_seeds`` first, then each other type on ``size.other_majority_test_seeds``
    (none when that is empty)."""
    majority = majority_type(pool)
    out = [(majority, tuple(size.test_seeds))]
    if size.other_majority_test_seeds:
        others = tuple(size.other_majority_test_seeds)
        out += [(other, others) for other in range(len(types.names)) if other != majority]
    return out


def run_setting(
    setting: Tuple[int, Tuple[int, ...]],
    *,
    pool: CandidateSet,
    validation: CandidateSet,
    test: CandidateSet,
    shift: CandidateSet,
    types: PreferenceTypes,
    size: StudySize,
    progress: bool = True,
) -> Dict[str, Any]:
    """One setting of the protocol, on one thread: its results then do not depend on the
    machine's thread count, and settings can run side by side in processes of their own."""
    majority, seeds = setting
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _setting(pool, validation, test, shift, types, size, majority, seeds, progress)
    finally:
        torch.set_num_threads(threads)


def run_primary(
    pool: CandidateSet,
    validation: CandidateSet,
    test: CandidateSet,
    shift: CandidateSet,
    types: PreferenceTypes,
    size: StudySize,
    *,
    progress: bool = True,
    map_settings: Callable[..., Iterable[Dict[str, Any]]] = map,
) -> Dict[str, Any]:
    """The whole study; returns the ``"primary"`` object of report.json: the headline setting
    (the rule's majority) at its top level, ``other_majorities`` per type name (run when
    ``size.other_majority_test_seeds`` is not empty), and ``protocol``.

    The settings are independent: ``map_settings(function, settings)`` runs them, one after
    the other by default; a process pool's ``map`` runs them side by side."""
    if set(size.tuning_seeds) & set(size.test_seeds) or set(size.tuning_seeds) & set(size.other_majority_test_seeds):
        raise ValueError("the tuning seeds and the test seeds must be disjoint")
    jobs = settings(pool, types, size)
    run = functools.partial(
        run_setting, pool=pool, validation=validation, test=test, shift=shift, types=types, size=size,
        progress=progress,
    )  # fmt: skip
    headline, *rest = list(map_settings(run, jobs))
    others = {types.names[majority]: result for (majority, _), result in zip(jobs[1:], rest)}
    grid = {
        "rebel": {
            "learning_rate": list(size.rebel_learning_rates),
            "eta": list(size.rebel_etas),
            "kl_coef": list(size.rebel_kl_coefs),
            "num_generations": list(size.rebel_generations),
            "iterations": list(size.rebel_iterations),
            "epochs": size.rebel_epochs,
            "adversary_step_size": list(size.adversary_step_sizes),
        },
        "dpo": {"learning_rate": list(size.dpo_learning_rates), "beta": list(size.dpo_betas),
                "epochs": list(size.dpo_epochs)},
        "edge_rule": "a choice at the grid's largest or smallest learning rate adds the next value of "
        f"{list(size.learning_rate_ladder)} on that side; a choice at the longest run doubles its length; "
        f"at most {size.max_extensions} rounds; the choice is over the union",
    }  # fmt: skip
    return {
        "types": list(types.names),
        "majority_rule": "the type whose reward is least correlated on average with the others' (training pool)",
        **headline,
        "protocol": {
            "tuning": "validation_worst_type",
            "tuning_seeds": list(size.tuning_seeds),
            "test_seeds": list(size.test_seeds),
            "other_majority_test_seeds": list(size.other_majority_test_seeds),
            "protocol_commit": PROTOCOL_COMMIT,
            "grid": grid,
            "chosen": headline["tuning"]["chosen"],
            "size": asdict(size),
        },
        "prompts": {"train_pool": len(pool), "validation": len(validation), "test": len(test), "shifted": len(shift)},
        "ceiling": {"test": minimax_ceiling(test), "shifted": minimax_ceiling(shift)},
        "other_majorities": others,
    }


SWEPT_ARMS = ("REBEL", "chi2-REBEL (types)", "KL-REBEL (types)", "online-REBEL (types)", "REBEL reweighted")


def sweep_rebel(
    pool: CandidateSet,
    validation: CandidateSet,
    test: CandidateSet,
    types: PreferenceTypes,
    size: StudySize,
    seeds: Tuple[int, ...],
    *,
    progress: bool = True,
) -> Dict[str, Any]:
    """The sensitivity of the REBEL comparison to the hyper-parameters: every point of the
    base grid, each arm of ``SWEPT_ARMS`` over ``seeds``, scored on the validation and the test
    prompts (the headline majority). Reports the whole grid, not a choice from it."""
    majority = majority_type(pool)
    mixture = training_mixture(len(types.names), majority, size.majority_share)
    by_name = {arm.name: arm for arm in arms(mixture)}
    swept = [by_name[name] for name in SWEPT_ARMS]
    bar = tqdm(desc="REBEL sweep", disable=not progress, unit="call")
    grid = _Grid(pool, {"validation": validation, "test": test}, size, mixture, seeds, bar)
    grid.run_rebel(swept, {a.name: size.rebel_learning_rates for a in swept}, max(size.rebel_iterations))
    bar.close()
    rows: Dict[Point, Dict[str, Dict[str, List[float]]]] = {}
    for (name, point), sets in grid.scores.items():
        # The online arm's step size is a grid dimension of its own: the sweep shows the first.
        if by_name[name].online and point[3] != size.adversary_step_sizes[0]:
            continue
        key = (point[0], point[1], point[2], point[4], point[5])
        rows.setdefault(key, {})[name] = {
            "worst_type_reward": sets["test"].min(axis=1).tolist(),
            "train_mixture_reward": (sets["test"] @ mixture).tolist(),
            "validation_worst_type_reward": sets["validation"].min(axis=1).tolist(),
            "validation_train_mixture_reward": (sets["validation"] @ mixture).tolist(),
        }
    return {
        "seeds": list(seeds),
        "arms": list(SWEPT_ARMS),
        "grid": [
            {"learning_rate": lr, "eta": eta, "kl_coef": kl, "num_generations": g, "iterations": it, "arms": cells}
            for (lr, eta, kl, g, it), cells in sorted(rows.items())
        ],
    }

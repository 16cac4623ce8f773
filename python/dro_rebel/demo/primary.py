"""The primary study: does robust training buy a better worst case, over many seeds?

data       real prompts with K real candidate replies each      (candidates.py)
mixture    types drawn 90/5/5 for the training prompts; the majority type by a rule
           fixed before any evaluation: the one whose reward agrees least with the others'
radii      from the geometry, fixed in advance: the divergence from the training mixture
           to the uniform one (types), and "calibrated" (per sample)
tuning     learning rate, eta, epochs and iterations (REBEL), learning rate, beta and
           epochs (DPO): chosen by the *plain* arm's training-mixture reward on validation
           prompts over tuning seeds, then used by every arm of its family
seeds      for each seed: the training prompts, their types, the labels, the batch order,
           the sampling; every arm trains from theta = 0 (the uniform policy)
evaluation exact expected reward on held-out prompts under each type alone, the uniform
           and the training mixture, and on shifted (chatterbot-corpus) prompts
statistics per comparison (robust arm against its plain arm) the paired difference over
           seeds, its 95% t-interval and a Holm-corrected p-value
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from dro_rebel.demo.candidates import CandidateSet
from dro_rebel.demo.comparisons import holm, paired_difference
from dro_rebel.demo.loglinear import DpoSettings, RebelSettings, expected_rewards, train_dpo, train_rebel
from dro_rebel.demo.preferences import PreferenceTypes
from dro_rebel.torch import RobustLoss

__all__ = ["StudySize", "Arm", "majority_type", "training_mixture", "radii", "run_primary", "minimax_ceiling"]


@dataclass(frozen=True)
class StudySize:
    """How much of the primary study to run (recorded in report.json)."""

    seeds: Tuple[int, ...]
    tuning_seeds: Tuple[int, ...]
    n_train: int
    """Training prompts drawn per seed from the training pool."""
    k: int
    """Candidates per prompt."""
    majority_share: float
    batch_size: int
    rebel_learning_rates: Tuple[float, ...]
    rebel_etas: Tuple[float, ...]
    rebel_epochs: Tuple[int, ...]
    rebel_iterations: Tuple[int, ...]
    """Checkpoints of one run, the candidates for the number of iterations."""
    dpo_learning_rates: Tuple[float, ...]
    dpo_betas: Tuple[float, ...]
    dpo_epochs: Tuple[int, ...]
    pairs_per_prompt: int
    bt_scale: float


@dataclass(frozen=True)
class Arm:
    """One row of the comparison: its family (``"rebel"`` or ``"dpo"``), its robust loss, and
    how its data differ from the plain arm's."""

    name: str
    family: str
    robust: Callable[[], RobustLoss]
    by_group: bool = False
    plain: Optional[str] = None
    """The arm it is compared with (None: a plain arm or a reference)."""
    reweighted: bool = False
    """Fixed weights that turn the training mixture into the uniform one."""
    uniform_data: bool = False
    """Types drawn from the uniform mixture (the oracle)."""
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


def arms(radius: Dict[str, float]) -> List[Arm]:
    chi2, kl = radius["chi2"], radius["kl"]
    return [
        Arm("REBEL", "rebel", lambda: RobustLoss("chi2", radius=0.0), description="plain REBEL"),
        Arm(
            "chi2-REBEL (types)", "rebel", lambda: RobustLoss("chi2", radius=chi2), by_group=True, plain="REBEL",
            description=f"chi2 ball of radius {chi2:.3f} over mixtures of the types",
        ),
        Arm(
            "KL-REBEL (types)", "rebel", lambda: RobustLoss("kl", radius=kl), by_group=True, plain="REBEL",
            description=f"KL ball of radius {kl:.3f} over mixtures of the types",
        ),
        Arm(
            "chi2-REBEL (samples)", "rebel", lambda: RobustLoss("chi2", radius="calibrated"), plain="REBEL",
            description="chi2 ball over the batch's samples, radius calibrated (1.353 / batch size)",
        ),
        Arm(
            "REBEL reweighted", "rebel", lambda: RobustLoss("chi2", radius=0.0), reweighted=True, plain="REBEL",
            description="fixed weights that make the training mixture uniform (knows the test mixture)",
        ),
        Arm(
            "oracle (uniform data)", "rebel", lambda: RobustLoss("chi2", radius=0.0), uniform_data=True,
            description="REBEL on prompts whose types are drawn uniformly: the upper reference",
        ),
        Arm("DPO", "dpo", lambda: RobustLoss("chi2", radius=0.0), description="plain DPO"),
        Arm(
            "chi2-DPO (types)", "dpo", lambda: RobustLoss("chi2", radius=chi2), by_group=True, plain="DPO",
            description=f"chi2 ball of radius {chi2:.3f} over mixtures of the types",
        ),
    ]  # fmt: skip


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


def _uniform_weights(mixture: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Nominal weights of a batch's samples that turn the training mixture into the uniform."""
    per_type = (1.0 / mixture.size) / mixture

    def reference(types: np.ndarray) -> np.ndarray:
        weights = per_type[types]
        return weights / weights.sum()

    return reference


def _train(
    arm: Arm,
    data: CandidateSet,
    types_of: np.ndarray,
    rebel: RebelSettings,
    dpo: DpoSettings,
    size: StudySize,
    mixture: np.ndarray,
    rng: np.random.Generator,
    checkpoints: tuple = (),
):
    if arm.family == "rebel":
        return train_rebel(
            data, types_of, rebel, arm.robust(), rng, by_group=arm.by_group,
            reference=_uniform_weights(mixture) if arm.reweighted else None,
            checkpoints=checkpoints, group_count=mixture.size,
        )  # fmt: skip
    return train_dpo(
        data, types_of, dpo, arm.robust(), rng, pairs_per_prompt=size.pairs_per_prompt, bt_scale=size.bt_scale,
        by_group=arm.by_group, checkpoints=checkpoints, group_count=mixture.size,
    )  # fmt: skip


def _draw(pool: CandidateSet, size: StudySize, mixture: np.ndarray, seed: int, uniform: bool):
    """A seed's training prompts and their types, and the generator of everything after."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(pool), size=min(size.n_train, len(pool)), replace=False)
    draw_from = np.full(mixture.size, 1.0 / mixture.size) if uniform else mixture
    types_of = rng.choice(mixture.size, size=rows.size, p=draw_from)
    return pool.subset(rows), types_of, rng


def tune(
    pool: CandidateSet, validation: CandidateSet, size: StudySize, mixture: np.ndarray, progress: bool = True
) -> Tuple[RebelSettings, DpoSettings, Dict[str, Any]]:
    """The hyper-parameters of each family, chosen by its plain arm's training-mixture reward
    on the validation prompts, averaged over the tuning seeds. Test prompts are never seen."""
    plain_rebel = Arm("REBEL", "rebel", lambda: RobustLoss("chi2", radius=0.0))
    plain_dpo = Arm("DPO", "dpo", lambda: RobustLoss("chi2", radius=0.0))
    scores: Dict[Any, List[float]] = {}
    rebel_grid = list(itertools.product(size.rebel_learning_rates, size.rebel_etas, size.rebel_epochs))
    dpo_grid = list(itertools.product(size.dpo_learning_rates, size.dpo_betas))
    total = len(size.tuning_seeds) * (len(rebel_grid) + len(dpo_grid))
    bar = tqdm(total=total, desc="tuning on validation prompts", disable=not progress)
    last_iterations, last_epoch = max(size.rebel_iterations), max(size.dpo_epochs)
    for seed in size.tuning_seeds:
        for lr, eta, epochs in rebel_grid:
            data, types_of, rng = _draw(pool, size, mixture, seed, uniform=False)
            settings = RebelSettings(lr, eta, last_iterations, epochs, size.batch_size)
            _, log = _train(plain_rebel, data, types_of, settings, None, size, mixture, rng, size.rebel_iterations)
            for iterations, theta in log.checkpoints.items():
                value = float(mixture @ expected_rewards(theta, validation))
                scores.setdefault(("rebel", lr, eta, epochs, iterations), []).append(value)
            bar.update(1)
        for lr, beta in dpo_grid:
            data, types_of, rng = _draw(pool, size, mixture, seed, uniform=False)
            settings = DpoSettings(lr, beta, last_epoch, size.batch_size)
            _, log = _train(plain_dpo, data, types_of, None, settings, size, mixture, rng, size.dpo_epochs)
            for epochs, theta in log.checkpoints.items():
                value = float(mixture @ expected_rewards(theta, validation))
                scores.setdefault(("dpo", lr, beta, epochs), []).append(value)
            bar.update(1)
    bar.close()
    means = {key: float(np.mean(values)) for key, values in scores.items()}
    best_rebel = max((k for k in means if k[0] == "rebel"), key=means.get)
    best_dpo = max((k for k in means if k[0] == "dpo"), key=means.get)
    rebel = RebelSettings(best_rebel[1], best_rebel[2], best_rebel[4], best_rebel[3], size.batch_size)
    dpo = DpoSettings(best_dpo[1], best_dpo[2], best_dpo[3], size.batch_size)
    record = {
        "criterion": "plain arm's training-mixture reward on the validation prompts, mean over tuning seeds",
        "validation_prompts": len(validation),
        "tuning_seeds": list(size.tuning_seeds),
        "rebel": {"chosen": asdict(rebel), "validation_reward": means[best_rebel]},
        "dpo": {"chosen": asdict(dpo), "validation_reward": means[best_dpo]},
        "grid": [{"key": list(key), "validation_reward": value} for key, value in sorted(means.items(), key=str)],
    }
    return rebel, dpo, record


def _evaluate(theta: np.ndarray, test: CandidateSet, shift: CandidateSet, mixture: np.ndarray) -> Dict[str, Any]:
    test_rewards, shift_rewards = expected_rewards(theta, test), expected_rewards(theta, shift)
    return {
        "type_rewards": test_rewards.tolist(),
        "worst_type_reward": float(test_rewards.min()),
        "train_mixture_reward": float(mixture @ test_rewards),
        "uniform_mixture_reward": float(test_rewards.mean()),
        "shifted_type_rewards": shift_rewards.tolist(),
        "shifted_reward": float(shift_rewards.min()),
    }


PER_SEED = (
    "worst_type_reward",
    "train_mixture_reward",
    "shifted_reward",
    "uniform_mixture_reward",
    "type_rewards",
    "shifted_type_rewards",
)
COMPARED = ("worst_type_reward", "train_mixture_reward")


def run_primary(
    pool: CandidateSet,
    validation: CandidateSet,
    test: CandidateSet,
    shift: CandidateSet,
    types: PreferenceTypes,
    size: StudySize,
    *,
    progress: bool = True,
) -> Dict[str, Any]:
    """The whole study; returns the ``"primary"`` object of report.json."""
    torch_threads = torch.get_num_threads()
    # Every tensor here is small: one thread is faster than several, and leaves the others free.
    torch.set_num_threads(1)
    try:
        return _run(pool, validation, test, shift, types, size, progress)
    finally:
        torch.set_num_threads(torch_threads)


def _run(pool, validation, test, shift, types, size, progress) -> Dict[str, Any]:
    majority = majority_type(pool)
    mixture = training_mixture(len(types.names), majority, size.majority_share)
    radius = radii(mixture)
    rebel, dpo, tuning = tune(pool, validation, size, mixture, progress)
    study_arms = arms(radius)
    results: Dict[str, Dict[str, List[Any]]] = {arm.name: {key: [] for key in PER_SEED} for arm in study_arms}
    weights: Dict[str, List[np.ndarray]] = {}
    identical: Dict[str, List[float]] = {}
    bar = tqdm(total=len(size.seeds) * len(study_arms), desc="primary study", disable=not progress)
    for seed in size.seeds:
        for arm in study_arms:
            data, types_of, rng = _draw(pool, size, mixture, seed, uniform=arm.uniform_data)
            theta, log = _train(arm, data, types_of, rebel, dpo, size, mixture, rng)
            for key, value in _evaluate(theta, test, shift, mixture).items():
                results[arm.name][key].append(value)
            weights.setdefault(arm.name, []).append(np.asarray(log.group_weights))
            if log.identical_pairs:
                identical.setdefault(arm.name, []).append(float(np.mean(log.identical_pairs)))
            bar.update(1)
    bar.close()

    comparisons = []
    for arm in study_arms:
        if arm.plain is None:
            continue
        for metric in COMPARED:
            stats = paired_difference(results[arm.name][metric], results[arm.plain][metric])
            comparisons.append({"robust": arm.name, "plain": arm.plain, "metric": metric, **stats})
    for comparison, adjusted in zip(comparisons, holm([c["p"] for c in comparisons])):
        comparison["p_holm"] = adjusted

    return {
        "types": list(types.names),
        "majority_type": types.names[majority],
        "majority_rule": "the type whose reward is least correlated on average with the others' (training pool)",
        "training_mixture": mixture.tolist(),
        "radii": {
            "chi2 (types)": radius["chi2"],
            "KL (types)": radius["kl"],
            "chi2 (samples)": f"calibrated: 1.353 / {size.batch_size}",
            "rule": "the divergence from the training mixture to the uniform one; per sample, 'calibrated'",
        },
        "hyperparameters": {"rebel": asdict(rebel), "dpo": asdict(dpo), "size": asdict(size)},
        "tuning": tuning,
        "prompts": {"train_pool": len(pool), "validation": len(validation), "test": len(test), "shifted": len(shift)},
        "arms": results,
        "arm_descriptions": {arm.name: arm.description for arm in study_arms},
        "comparisons": comparisons,
        "ceiling": {"test": minimax_ceiling(test), "shifted": minimax_ceiling(shift)},
        "type_weights": _weights_over_training(weights),
        "identical_pairs": {name: float(np.mean(values)) for name, values in identical.items()},
    }


def _weights_over_training(weights: Dict[str, List[np.ndarray]], points: int = 20) -> Dict[str, Any]:
    """Each arm's worst-case weight of each type: the mean over training, and its course (the
    mean over seeds of ``points`` equal stretches of the run), as fractions of the batch."""
    out: Dict[str, Any] = {}
    for name, runs in weights.items():
        stacked = np.stack([run[: min(len(r) for r in runs)] for run in runs])  # (seeds, updates, types)
        stretches = np.array_split(np.arange(stacked.shape[1]), points)
        out[name] = {
            "mean": stacked.mean(axis=(0, 1)).tolist(),
            "course": [stacked[:, rows].mean(axis=(0, 1)).tolist() for rows in stretches if rows.size],
        }
    return out


SWEPT_ARMS = ("REBEL", "chi2-REBEL (types)", "KL-REBEL (types)", "REBEL reweighted")


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
    tuning grid (learning rate, eta, epochs, and each iteration checkpoint), each REBEL arm of
    ``SWEPT_ARMS`` over ``seeds``, scored on the validation and the test prompts. Reports the
    whole grid, not a choice from it."""
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        majority = majority_type(pool)
        mixture = training_mixture(len(types.names), majority, size.majority_share)
        by_name = {arm.name: arm for arm in arms(radii(mixture))}
        grid = list(itertools.product(size.rebel_learning_rates, size.rebel_etas, size.rebel_epochs))
        last = max(size.rebel_iterations)
        rows: Dict[Tuple[float, float, int, int], Dict[str, Dict[str, List[float]]]] = {}
        bar = tqdm(total=len(grid) * len(SWEPT_ARMS) * len(seeds), desc="REBEL sweep", disable=not progress)
        for lr, eta, epochs in grid:
            settings = RebelSettings(lr, eta, last, epochs, size.batch_size)
            for name in SWEPT_ARMS:
                for seed in seeds:
                    data, types_of, rng = _draw(pool, size, mixture, seed, uniform=False)
                    _, log = _train(by_name[name], data, types_of, settings, None, size, mixture, rng,
                                    size.rebel_iterations)  # fmt: skip
                    for iterations, theta in log.checkpoints.items():
                        test_rewards, validation_rewards = (
                            expected_rewards(theta, test),
                            expected_rewards(theta, validation),
                        )
                        cell = rows.setdefault((lr, eta, epochs, iterations), {}).setdefault(name, {})
                        for key, value in (
                            ("worst_type_reward", float(test_rewards.min())),
                            ("train_mixture_reward", float(mixture @ test_rewards)),
                            ("validation_worst_type_reward", float(validation_rewards.min())),
                            ("validation_train_mixture_reward", float(mixture @ validation_rewards)),
                        ):
                            cell.setdefault(key, []).append(value)
                    bar.update(1)
        bar.close()
    finally:
        torch.set_num_threads(torch_threads)
    return {
        "seeds": list(seeds),
        "arms": list(SWEPT_ARMS),
        "grid": [
            {"learning_rate": lr, "eta": eta, "epochs": epochs, "iterations": iterations, "arms": cells}
            for (lr, eta, epochs, iterations), cells in rows.items()
        ],
    }

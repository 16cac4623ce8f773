"""The real-LM pipeline check's report: its table, the robust-versus-plain verdict and its plot.

How to read the table (one row per policy, ``start`` is the untrained model):

* **average reward**: the mean reward on held-out prompts under the *training* mixture of
  preference types, what plain training optimises;
* **worst-case reward**: the lowest mean reward over the held-out mixtures (each type alone,
  the uniform mixture, the adversarial mixture in a chi-square ball around the training one);
  a linear function's minimum over mixtures sits at a vertex, so this is the worst-served type;
* **shifted prompts**: the training-mixture reward on chatterbot-corpus prompts;
* **KL to start**: the mean of log pi(y|x) - log pi_0(y|x) over sampled responses.

Intervals are 95%: Student-t over seeds when the preset has several, otherwise a percentile
bootstrap over the evaluation prompts (which says nothing about training noise).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

import numpy as np

from dro_rebel.demo.evaluate import PolicyEval, adversarial_mixture, summarise
from dro_rebel.demo.intervals import bootstrap, over_seeds
from dro_rebel.demo.preferences import PreferenceTypes
from dro_rebel.demo.presets import Preset
from dro_rebel.demo.rewards import OBJECTIVES

__all__ = ["build_report", "print_report", "write_plot"]

HEADLINE = {
    "average_reward": "average reward",
    "worst_case_reward": "worst-case reward",
    "shift_reward": "shifted prompts",
    "kl_to_start": "KL to start",
}
PLAIN = ("REBEL", "DPO")

Statistic = Callable[[PolicyEval, np.ndarray, np.ndarray], float]


def _statistics(types: PreferenceTypes, adversarial_radius: float) -> Dict[str, Statistic]:
    """Every reported number as a function of one evaluation and the indices of the test
    and shifted prompts it is computed on (all of them, or a bootstrap resample)."""
    mixture = types.train_mixture

    def means(e: PolicyEval, ti: np.ndarray) -> np.ndarray:
        return e.test_rewards[ti].mean(axis=0)

    stats: Dict[str, Statistic] = {
        "average_reward": lambda e, ti, si: float(mixture @ means(e, ti)),
        "worst_case_reward": lambda e, ti, si: float(means(e, ti).min()),
        "shift_reward": lambda e, ti, si: float(mixture @ e.shift_rewards[si].mean(axis=0)),
        "kl_to_start": lambda e, ti, si: float(e.test_kl[ti].mean()),
    }
    for name, m in types.held_out_mixtures().items():
        stats[f"mixture/{name}"] = lambda e, ti, si, m=m: float(m @ means(e, ti))
    stats["mixture/training mixture"] = stats["average_reward"]
    stats["mixture/adversarial"] = lambda e, ti, si: float(
        adversarial_mixture(means(e, ti), mixture, adversarial_radius) @ means(e, ti)
    )
    return stats


def _interval(stat: Statistic, runs: List[PolicyEval], seed: int = 0) -> Dict[str, float]:
    """Mean over seeds and the half-width of its 95% interval."""
    everything = [(np.arange(len(e.test_kl)), np.arange(len(e.shift_rewards))) for e in runs]
    values = [stat(e, ti, si) for e, (ti, si) in zip(runs, everything)]
    if len(runs) > 1:
        mean, half = over_seeds(values)
    else:
        e = runs[0]
        n_test, n_shift = len(e.test_kl), len(e.shift_rewards)
        rng = np.random.default_rng(seed)
        mean = values[0]
        half = bootstrap(lambda ti: stat(e, ti, rng.integers(0, n_shift, n_shift)), n_test, seed=seed)
    return {"mean": float(mean), "ci95": float(half)}


def _difference(stat: Statistic, runs: List[PolicyEval], baseline: List[PolicyEval]) -> Dict[str, float]:
    """Paired difference stat(runs) - stat(baseline): over seeds, or a bootstrap resampling
    the same prompts for both (they were asked the same prompts with the same random numbers)."""

    def paired(ti: np.ndarray, si: np.ndarray, a: PolicyEval, b: PolicyEval) -> float:
        return stat(a, ti, si) - stat(b, ti, si)

    if len(runs) > 1:
        values = [
            paired(np.arange(len(a.test_kl)), np.arange(len(a.shift_rewards)), a, b) for a, b in zip(runs, baseline)
        ]
        mean, half = over_seeds(values)
    else:
        a, b = runs[0], baseline[0]
        n_test, n_shift = len(a.test_kl), len(a.shift_rewards)
        mean = paired(np.arange(n_test), np.arange(n_shift), a, b)
        half = bootstrap(lambda ti: paired(ti, np.arange(n_shift), a, b), n_test)
    return {"mean": float(mean), "ci95": float(half)}


def _verdict(difference: Dict[str, float]) -> str:
    mean, half = difference["mean"], difference["ci95"]
    if np.isnan(half):
        return "higher (one run: no interval)" if mean > 0 else "not higher (one run: no interval)"
    if abs(mean) <= half:
        return "not resolved: the interval contains 0"
    return "higher, interval excludes 0" if mean > 0 else "lower, interval excludes 0"


def build_report(
    preset: Preset,
    types: PreferenceTypes,
    corpus: Dict[str, Any],
    evaluations: Dict[str, List[PolicyEval]],
    logs: Dict[str, List[List[Dict[str, Any]]]],
    timings: Dict[str, float],
    robust: Dict[str, bool],
) -> Dict[str, Any]:
    """Everything the run measured, as one JSON-serialisable dict."""
    stats = _statistics(types, preset.adversarial_radius)
    rows: Dict[str, Any] = {}
    for name, runs in evaluations.items():
        rows[name] = {
            "robust": robust.get(name, False),
            **{key: _interval(stats[key], runs) for key in HEADLINE},
            "reward_by_mixture": {
                key.split("/", 1)[1]: _interval(stat, runs) for key, stat in stats.items() if key.startswith("mixture/")
            },
            "per_seed": [summarise(e, types, preset.adversarial_radius) for e in runs],
            "examples": runs[0].examples,
            "final_training_log": [log[-1] for log in logs.get(name, []) if log],
        }
    comparisons = []
    for name, row in rows.items():
        if not row["robust"]:
            continue
        # Each robust method against the plain method of its own trainer ("chi2-DPO" against
        # "DPO"): across trainers the difference says nothing about robustness.
        for plain in PLAIN:
            if plain not in evaluations or not name.endswith(plain):
                continue
            difference = _difference(stats["worst_case_reward"], evaluations[name], evaluations[plain])
            comparisons.append(
                {
                    "robust": name,
                    "plain": plain,
                    "worst_case_difference": difference,
                    "verdict": _verdict(difference),
                }
            )
    return {
        "preset": preset.to_dict(),
        "interval": "95% Student-t over seeds"
        if len(preset.seeds) > 1
        else "95% percentile bootstrap over evaluation prompts (one seed)",
        "preference_types": {name: dict(zip(OBJECTIVES, map(float, w))) for name, w in zip(types.names, types.weights)},
        "training_mixture": dict(zip(types.names, map(float, types.train_mixture))),
        "corpus": corpus,
        "methods": rows,
        "worst_case_comparisons": comparisons,
        "timings_s": timings,
    }


def _cell(value: Dict[str, float]) -> str:
    if np.isnan(value["ci95"]):
        return f"{value['mean']:+.3f}"
    return f"{value['mean']:+.3f} ± {value['ci95']:.3f}"


def format_table(report: Dict[str, Any]) -> str:
    """The policies' headline numbers as a Markdown table."""
    header = "| method | " + " | ".join(HEADLINE.values()) + " |"
    lines = [header, "|" + "---|" * (len(HEADLINE) + 1)]
    for name, row in report["methods"].items():
        lines.append(f"| {name} | " + " | ".join(_cell(row[key]) for key in HEADLINE) + " |")
    return "\n".join(lines)


def print_report(report: Dict[str, Any]) -> None:
    """Print the pipeline check's table, its verdict and the time taken."""
    print(f"\nReal-LM pipeline check ({report['interval']}):\n")
    print(format_table(report))
    print("\nWorst case over held-out mixtures, robust minus plain:")
    for c in report["worst_case_comparisons"]:
        d = c["worst_case_difference"]
        print(f"  {c['robust']:>10} vs {c['plain']:<5}: {_cell(d):>18}  {c['verdict']}")
    print(f"\n(pipeline check: {report['timings_s']['total']:.0f} s)")


def write_plot(report: Dict[str, Any], path) -> None:
    """Bars of each policy's reward under each held-out mixture, with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["methods"]
    mixtures = list(next(iter(rows.values()))["reward_by_mixture"])
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(mixtures)), 4.5))
    x = np.arange(len(mixtures))
    for i, (name, row) in enumerate(rows.items()):
        means = [row["reward_by_mixture"][m]["mean"] for m in mixtures]
        errors = [row["reward_by_mixture"][m]["ci95"] for m in mixtures]
        ax.bar(
            x + (i - (len(rows) - 1) / 2) * width,
            means,
            width,
            yerr=errors,
            capsize=2,
            label=name,
            hatch="//" if row["robust"] else None,
            edgecolor="black",
            linewidth=0.4,
        )
    ax.set_xticks(x, mixtures, rotation=15)
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.set_ylabel("mean reward on held-out prompts")
    ax.set_title(f"Reward under held-out preference mixtures (preset {report['preset']['name']}; hatched: robust)")
    ax.legend(fontsize=8, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

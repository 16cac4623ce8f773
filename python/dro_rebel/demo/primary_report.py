"""Tables and the plot of the primary study and the reward-model track, from report.json's
objects (so the docs' tables can be rebuilt from a saved report)."""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from dro_rebel.demo.comparisons import paired_difference
from dro_rebel.demo.intervals import over_seeds

__all__ = [
    "format_primary",
    "format_comparisons",
    "format_chosen",
    "format_reward_track",
    "format_sweep",
    "format_sweep_summary",
    "print_primary",
    "print_reward_track",
    "write_primary_plot",
    "write_sweep_plot",
]

COLUMNS = {
    "worst_type_reward": "worst type",
    "train_mixture_reward": "training mixture",
    "uniform_mixture_reward": "uniform mixture",
    "shifted_reward": "shifted, worst type",
}


def _cell(values: List[float]) -> str:
    mean, half = over_seeds(values)
    return f"{mean:+.3f}" if np.isnan(half) else f"{mean:+.3f} ± {half:.3f}"


def format_primary(primary: Dict[str, Any]) -> str:
    """Each arm's held-out reward (mean ± 95% t half-width over seeds), every type's too."""
    names = primary["types"]
    header = ["arm", *COLUMNS.values(), *(f"only {t}" for t in names)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, row in primary["arms"].items():
        per_type = np.asarray(row["type_rewards"])
        cells = [_cell(row[key]) for key in COLUMNS] + [_cell(per_type[:, k]) for k in range(len(names))]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    ceiling = primary.get("ceiling")
    if not ceiling:
        return "\n".join(lines)
    blank = [""] * (len(header) - 5)
    lines.append(
        f"| minimax policy (full information) | {ceiling['test']['worst_type_reward']:+.3f} | | | "
        f"{ceiling['shifted']['worst_type_reward']:+.3f} | " + " | ".join(blank) + " |"
    )
    return "\n".join(lines)


def format_comparisons(comparisons: List[Dict[str, Any]]) -> str:
    """Robust minus plain, paired over seeds: mean, 95% interval, Holm-corrected p."""
    lines = [
        "| robust | plain | metric | difference | 95% interval | p (Holm) |",
        "|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        low, high = c["ci95"]
        lines.append(
            f"| {c['robust']} | {c['plain']} | {c['metric']} | {c['mean_difference']:+.3f} | "
            f"[{low:+.3f}, {high:+.3f}] | {c['p_holm']:.2g} |"
        )
    return "\n".join(lines)


def format_type_weights(primary: Dict[str, Any]) -> str:
    """Each arm's mean worst-case weight of each type over training."""
    names = primary["types"]
    lines = ["| arm | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for arm, row in primary["type_weights"].items():
        lines.append(f"| {arm} | " + " | ".join(f"{w:.2f}" for w in row["mean"]) + " |")
    return "\n".join(lines)


def format_reward_track(track: Dict[str, Any]) -> str:
    """The heads' pairwise accuracies (mean ± 95% t half-width over seeds)."""
    columns = [
        "held_out/training mixture",
        "held_out/worst type",
        "shifted/training mixture",
        "shifted/worst type",
        "human_ratings_agreement",
    ]
    lines = ["| reward model | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, metrics in track["heads"].items():
        lines.append(f"| {name} | " + " | ".join(_cell(metrics[c]) for c in columns) + " |")
    return "\n".join(lines)


def format_chosen(primary: Dict[str, Any]) -> str:
    """Each arm's tuned point (the protocol's rule), its share of identical pairs at the test
    seeds, and the average-tuned reading's points."""
    chosen = primary["protocol"]["chosen"]
    keys = sorted({key for point in chosen.values() for key in point}, key=list(_POINT_ORDER).index)
    lines = ["| arm | " + " | ".join(keys) + " | identical pairs |", "|" + "---|" * (len(keys) + 2)]
    for arm, point in chosen.items():
        identical = primary.get("identical_pairs", {}).get(arm)
        cells = [f"{point[k]:g}" if k in point else "" for k in keys]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {'' if identical is None else f'{identical:.2f}'} |")
    return "\n".join(lines)


_POINT_ORDER = (
    "learning_rate", "eta", "beta", "kl_coef", "num_generations", "adversary_step_size", "iterations", "epochs"
)  # fmt: skip


def _print_setting(setting: Dict[str, Any], types: List[str], title: str) -> None:
    seeds = len(next(iter(setting["arms"].values()))["worst_type_reward"])
    mixture = ", ".join(f"{t} {p:.2f}" for t, p in zip(types, setting["training_mixture"]))
    print(f"\n{title}: held-out reward, mean ± 95% t half-width over {seeds} seeds (training mixture {mixture})\n")
    print(format_primary({**setting, "types": types, "ceiling": setting.get("ceiling")}))
    print("\nEach robust arm against its comparison, paired over seeds (Holm across the table):\n")
    print(format_comparisons(setting["comparisons"]))


def print_primary(primary: Dict[str, Any]) -> None:
    types = primary["types"]
    _print_setting(primary, types, f"Primary study, tuned for the worst type (majority {primary['majority_type']})")
    print("\nEach arm's choice on the validation prompts (its own worst type):\n")
    print(format_chosen(primary))
    print("\nMean worst-case weight of each type over training:\n")
    print(format_type_weights(primary))
    average = primary["average_tuned"]
    _print_setting(
        {**average, "training_mixture": primary["training_mixture"], "ceiling": primary["ceiling"]},
        types,
        "Second reading, tuned for the training mixture (the plain arm's choice for its family)",
    )
    for name, setting in primary.get("other_majorities", {}).items():
        _print_setting({**setting, "ceiling": None}, types, f"Majority {name}, tuned for the worst type")


def print_reward_track(track: Dict[str, Any]) -> None:
    print(f"\nReward-model track: pairwise accuracy over {len(track['seeds'])} seeds\n")
    print(format_reward_track(track))
    print("\nRobust minus plain head, paired over seeds (Holm across the table):\n")
    print(format_comparisons(track["comparisons"]))


def write_primary_plot(primary: Dict[str, Any], path) -> None:
    """Left: each arm's reward under each held-out mixture (bars, 95% intervals over seeds).
    Right: the weight the robust arms put on the majority type over training (the rest goes
    to the minorities)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = primary["types"]
    mixtures = [f"only {t}" for t in names] + ["uniform", "training", "shifted (worst type)"]
    arms = primary["arms"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 5), gridspec_kw={"width_ratios": [2.2, 1]})
    width = 0.8 / len(arms)
    x = np.arange(len(mixtures))
    for i, (arm, row) in enumerate(arms.items()):
        per_type = np.asarray(row["type_rewards"])
        series = [per_type[:, k] for k in range(len(names))]
        series += [row["uniform_mixture_reward"], row["train_mixture_reward"], row["shifted_reward"]]
        stats = [over_seeds(values) for values in series]
        left.bar(
            x + (i - (len(arms) - 1) / 2) * width,
            [m for m, _ in stats],
            width,
            yerr=[h for _, h in stats],
            capsize=2,
            label=arm,
            hatch="//" if "(" in arm and "oracle" not in arm else None,
            edgecolor="black",
            linewidth=0.4,
        )
    left.axhline(primary["ceiling"]["test"]["worst_type_reward"], color="grey", linestyle=":", linewidth=1)
    left.set_xticks(x, mixtures, rotation=15)
    left.axhline(0.0, color="black", linewidth=0.5)
    left.set_ylabel("expected reward on held-out prompts (standardised)")
    left.set_title("Reward under each held-out mixture (dotted: the minimax policy's worst type)")
    left.legend(fontsize=7, ncol=2)
    majority = names.index(primary["majority_type"])
    share = primary["training_mixture"][majority]
    for arm, row in primary["type_weights"].items():
        if arm in ("REBEL", "DPO") or "oracle" in arm:
            continue
        course = np.asarray(row["course"])[:, majority]
        right.plot(np.linspace(0, 1, len(course)), course, label=arm, linewidth=1.5)
    right.axhline(share, color="grey", linestyle="--", linewidth=1, label=f"its share of the data ({share:.2f})")
    right.set_ylim(0, 1)
    right.set_xlabel("fraction of training")
    right.set_ylabel(f"weight of the majority type ({primary['majority_type']})")
    right.set_title("Where the worst-case weights go over training")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _sweep_differences(point: Dict[str, Any], robust: str, metric: str, plain: str = "REBEL") -> List[float]:
    arms = point["arms"]
    return (np.asarray(arms[robust][metric]) - np.asarray(arms[plain][metric])).tolist()


def format_sweep_summary(sweep: Dict[str, Any]) -> str:
    """The sweep in one table: for each robust arm against plain REBEL and against REBEL
    reweighted, at the same grid point, on the test prompts' worst type: at how many points
    the 95% t-interval over the sweep's seeds lies above zero, contains it, or lies below,
    and the median difference. Descriptive: no correction for the many points."""
    lines = [
        "| robust | against | points | interval above 0 | contains 0 | below 0 | median difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for robust in (arm for arm in sweep["arms"] if arm not in ("REBEL", "REBEL reweighted")):
        for plain in ("REBEL", "REBEL reweighted"):
            counts, means = [0, 0, 0], []
            for point in sweep["grid"]:
                differences = np.asarray(_sweep_differences(point, robust, "worst_type_reward", plain))
                stats = paired_difference(differences, np.zeros_like(differences))
                low, high = stats["ci95"]
                counts[0 if low > 0 else 2 if high < 0 else 1] += 1
                means.append(stats["mean_difference"])
            lines.append(
                f"| {robust} | {plain} | {len(means)} | {counts[0]} | {counts[1]} | {counts[2]} | "
                f"{np.median(means):+.3f} |"
            )
    return "\n".join(lines)


def format_sweep(sweep: Dict[str, Any]) -> str:
    """One row per grid point: plain REBEL's validation worst-type reward (the tuning
    criterion), then each robust arm minus REBEL on the test prompts' worst type and training
    mixture (mean ± 95% t half-width over the sweep's seeds)."""
    robust = [arm for arm in sweep["arms"] if arm != "REBEL"]
    header = ["lr", "eta", "kl_coef", "G", "iterations", "REBEL validation worst type"]
    for arm in robust:
        header += [f"{arm}: worst type", f"{arm}: training mixture"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for point in sweep["grid"]:
        criterion = np.mean(point["arms"]["REBEL"]["validation_worst_type_reward"])
        cells = [f"{point['learning_rate']:g}", f"{point['eta']:g}", f"{point['kl_coef']:g}"]
        cells += [str(point["num_generations"]), str(point["iterations"])]
        cells.append(f"{criterion:+.3f}")
        for arm in robust:
            cells += [_cell(_sweep_differences(point, arm, m)) for m in ("worst_type_reward", "train_mixture_reward")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_sweep_plot(sweep: Dict[str, Any], path) -> None:
    """Each robust arm's worst-type gain over REBEL (test prompts) against plain REBEL's
    validation reward, one point per grid point, coloured by learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    robust = [arm for arm in sweep["arms"] if arm != "REBEL"]
    rates = sorted({point["learning_rate"] for point in sweep["grid"]})
    fig, axes = plt.subplots(1, len(robust), figsize=(5 * len(robust), 4.2), sharey=True)
    for axis, arm in zip(np.atleast_1d(axes), robust):
        for rate, colour in zip(rates, plt.cm.viridis(np.linspace(0, 0.9, len(rates)))):
            points = [p for p in sweep["grid"] if p["learning_rate"] == rate]
            x = [np.mean(p["arms"]["REBEL"]["validation_worst_type_reward"]) for p in points]
            y = [np.mean(_sweep_differences(p, arm, "worst_type_reward")) for p in points]
            axis.scatter(x, y, color=colour, label=f"lr {rate:g}", s=18)
        axis.axhline(0.0, color="black", linewidth=0.5)
        axis.set_title(f"{arm} minus REBEL")
        axis.set_xlabel("plain REBEL's validation worst-type reward")
    np.atleast_1d(axes)[0].set_ylabel("worst-type reward gain, test prompts")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(f"Every point of the REBEL tuning grid, {len(sweep['seeds'])} seeds each")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""The radius-coverage trade-off of chi-square DRO-REBEL, in the setting its theory analyses.

Setting (linear rewards, log-linear policy). With pi_theta(y|x) proportional to
exp(theta . psi(x, y)), REBEL's regression is linear: the loss of a pair is

    l(theta; z, d) = (theta . z - d)^2,

with z = psi(x, y) - psi(x, y') (the policy's log-ratio difference, eta absorbed) and d the
reward difference. Here d = theta* . z + eps, so theta* is what plain REBEL (ERM) recovers.

Design. z takes one of 12 values in R^3 with uneven probabilities; eps is mean-zero, skewed
(a rare large positive jump, a frequent small negative one) and heteroscedastic (its scale
grows with |z|). Both being discrete, the population lives on 24 points and a sample of size n
is a multinomial draw of counts: the empirical distribution, the chi-square DRO fit and the
divergence to the truth are all exact, for n up to millions, in microseconds.

Why skewed noise: chi-square DRO is, to first order, mean + sqrt(2 rho Var(l)). At theta* the
gradient of Var(l) is -4 E[z eps^3] (the centred terms vanish), which is zero for symmetric
noise: the DRO minimiser is then unbiased and every radius gives the parametric rate. With
skewed, heteroscedastic noise the minimiser is biased by O(sqrt(rho)), so a radius that shrinks
slower than 1/n (which the coverage of the truth needs) slows the rate.

The estimator is the exact minimiser over (theta, eta) of the chi-square dual
(docs/method.md#chi-square, Cressie-Read k=2 convention):

    F(theta, eta) = eta + sqrt(1 + 2 rho) * sqrt( sum_i p_i (l_i(theta) - eta)_+^2 ),

jointly convex in (theta, eta) (a norm of a convex, non-negative vector function), smooth where
some loss exceeds eta, and minimised by BFGS with its analytic gradient to 1e-12.

Coverage: the truth P lies in the ball around the empirical P_n iff
(1/2) sum_i (P_i - P_n,i)^2 / P_n,i <= rho (infinite where P_n misses a support point).
n * that divergence tends to (1/2) chi^2 with (24 - 1) degrees of freedom, which sets the
constant K of the K/n schedule that keeps 95% coverage.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
from scipy import optimize, stats
from tqdm.auto import tqdm

__all__ = [
    "Design",
    "DEFAULT_DESIGN",
    "ScheduleResult",
    "schedules",
    "fit_erm",
    "fit_chi2_dro",
    "chi2_divergence",
    "run_study",
    "plot_study",
    "format_table",
    "main",
]


@dataclass(frozen=True)
class Design:
    """A finite population of (z, d) pairs: atoms z_j with probabilities p_j, and per atom a
    two-point noise (up with probability ``jump``) of mean zero and standard deviation s_j."""

    atoms: np.ndarray
    """(12, 3) feature differences z_j."""
    probs: np.ndarray
    """(12,) uneven atom probabilities."""
    theta: np.ndarray
    """(3,) the true parameter theta*."""
    scales: np.ndarray
    """(12,) noise standard deviation per atom."""
    jump: float
    """Probability of the noise's upward jump (skewness grows as it shrinks)."""

    def support(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The population as 24 points: features Z (24, 3), targets d (24,), probabilities (24,)."""
        up = self.scales * np.sqrt((1.0 - self.jump) / self.jump)
        down = -self.scales * np.sqrt(self.jump / (1.0 - self.jump))
        mean = self.atoms @ self.theta
        features = np.concatenate([self.atoms, self.atoms])
        targets = np.concatenate([mean + up, mean + down])
        probs = np.concatenate([self.probs * self.jump, self.probs * (1.0 - self.jump)])
        return features, targets, probs


def _default_design() -> Design:
    rng = np.random.default_rng(20250)
    atoms = rng.normal(size=(12, 3))
    probs = 0.85 ** np.arange(12)
    # Heteroscedastic: the noise is loudest where the first feature is large, so E[z eps^3]
    # does not vanish.
    scales = 0.3 + 0.7 * np.abs(atoms[:, 0])
    return Design(
        atoms=atoms,
        probs=probs / probs.sum(),
        theta=np.array([1.0, -0.5, 0.25]),
        scales=scales,
        jump=0.15,
    )


DEFAULT_DESIGN = _default_design()


def schedules(support_size: int, level: float = 0.95) -> Dict[str, Callable[[int], float]]:
    """The radius schedules compared, as functions of n. ``K/n`` uses the asymptotic
    ``level`` quantile of n * divergence, (1/2) chi^2_{m-1}, so that it keeps that coverage."""
    k = 0.5 * stats.chi2.ppf(level, support_size - 1)
    return {
        "ERM": lambda n: 0.0,
        "n^-1/2": lambda n: n**-0.5,
        f"K/n (K={k:.1f})": lambda n: k / n,
        "1/n": lambda n: 1.0 / n,
        "n^-3/2": lambda n: n**-1.5,
    }


def fit_erm(features: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least squares: the minimiser of sum_i w_i (theta . z_i - d_i)^2."""
    root = np.sqrt(weights)
    return np.linalg.lstsq(features * root[:, None], targets * root, rcond=None)[0]


def fit_chi2_dro(
    features: np.ndarray, targets: np.ndarray, weights: np.ndarray, radius: float
) -> Tuple[np.ndarray, float, float]:
    """The exact minimiser over (theta, eta) of the chi-square DRO dual F (module docstring).

    Returns (theta, eta, value). Points with zero weight are dropped first (they carry no
    mass in the ball around the empirical distribution).
    """
    keep = weights > 0
    features, targets, weights = features[keep], targets[keep], weights[keep]
    theta0 = fit_erm(features, targets, weights)
    if radius == 0.0:
        residual = features @ theta0 - targets
        return theta0, float("nan"), float(weights @ residual**2)
    c = np.sqrt(1.0 + 2.0 * radius)
    # Work on a scale where the losses are O(1), so that tolerances are relative.
    scale = float(weights @ (features @ theta0 - targets) ** 2) or 1.0

    def objective(x: np.ndarray) -> Tuple[float, np.ndarray]:
        theta, eta = x[:-1], x[-1]
        residual = features @ theta - targets
        excess = np.maximum(residual**2 / scale - eta, 0.0)
        norm = np.sqrt(weights @ excess**2)
        if norm == 0.0:
            # All losses at or below eta: F = eta, and lowering eta is the only descent.
            return float(eta), np.concatenate([np.zeros_like(theta), [1.0]])
        d_excess = weights * excess / norm
        grad_theta = c * (features.T @ (d_excess * 2.0 * residual / scale))
        grad_eta = 1.0 - c * d_excess.sum()
        return float(eta + c * norm), np.concatenate([grad_theta, [grad_eta]])

    start = np.concatenate([theta0, [0.0]])
    result = optimize.minimize(objective, start, jac=True, method="BFGS", options={"gtol": 1e-12, "maxiter": 2000})
    return result.x[:-1], float(result.x[-1] * scale), float(result.fun * scale)


def chi2_divergence(truth: np.ndarray, centre: np.ndarray) -> float:
    """(1/2) sum_i (P_i - C_i)^2 / C_i, the chi-square divergence of the truth P from the
    ball's centre C; infinite where C misses a point the truth has."""
    if np.any((centre == 0) & (truth > 0)):
        return float("inf")
    mask = centre > 0
    return float(0.5 * np.sum((truth[mask] - centre[mask]) ** 2 / centre[mask]))


@dataclass
class ScheduleResult:
    """One schedule's results, one entry per n."""

    n: List[int]
    radius: List[float]
    mse: List[float]
    """Mean over replications of ||theta_hat - theta*||^2."""
    mse_se: List[float]
    """Its standard error."""
    coverage: List[float]
    """Fraction of replications whose ball contains the true distribution."""
    slope: float = field(default=float("nan"))
    """Least-squares slope of log(mse) against log(n)."""


def run_study(
    n_values: Sequence[int],
    replications: int,
    *,
    design: Design = DEFAULT_DESIGN,
    seed: int = 0,
    progress: bool = True,
) -> Dict[str, ScheduleResult]:
    """Fit every schedule on the same samples (common random numbers) for every n."""
    features, targets, probs = design.support()
    rules = schedules(len(probs))
    results = {name: ScheduleResult([], [], [], [], []) for name in rules}
    rng = np.random.default_rng(seed)
    with tqdm(total=len(n_values) * replications, desc="radius study", disable=not progress) as bar:
        for n in n_values:
            errors: Dict[str, List[float]] = {name: [] for name in rules}
            covered: Dict[str, List[bool]] = {name: [] for name in rules}
            for _ in range(replications):
                empirical = rng.multinomial(n, probs) / n
                divergence = chi2_divergence(probs, empirical)
                for name, rule in rules.items():
                    radius = rule(n)
                    theta, _, _ = fit_chi2_dro(features, targets, empirical, radius)
                    errors[name].append(float(np.sum((theta - design.theta) ** 2)))
                    covered[name].append(divergence <= radius)
                bar.update(1)
            for name, rule in rules.items():
                result = results[name]
                result.n.append(int(n))
                result.radius.append(rule(n))
                result.mse.append(float(np.mean(errors[name])))
                result.mse_se.append(float(np.std(errors[name], ddof=1) / np.sqrt(replications)))
                result.coverage.append(float(np.mean(covered[name])))
    for result in results.values():
        result.slope = float(np.polyfit(np.log(result.n), np.log(result.mse), 1)[0])
    return results


def plot_study(results: Dict[str, ScheduleResult], path: Path) -> None:
    """Two panels: the error against n (log-log, with each fitted slope) and the coverage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, result in results.items():
        n = np.asarray(result.n)
        left.errorbar(
            n,
            result.mse,
            yerr=result.mse_se,
            marker="o",
            ms=3,
            capsize=2,
            label=f"{name}: slope {result.slope:.2f}",
        )
        right.plot(n, result.coverage, marker="o", ms=3, label=name)
    left.set(xscale="log", yscale="log", xlabel="n", ylabel="mean ||theta_hat - theta*||^2", title="Parameter error")
    right.set(
        xscale="log",
        xlabel="n",
        ylabel="P(truth inside the ball)",
        ylim=(-0.03, 1.03),
        title="Coverage of the true distribution",
    )
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.suptitle("chi-square DRO-REBEL, linear rewards: radius schedule vs rate and coverage")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(results: Dict[str, ScheduleResult]) -> str:
    """The results as a fixed-width text table: error and coverage per n, and the slope."""
    names = list(results)
    n_values = results[names[0]].n
    width = max(len(name) for name in names) + 2
    lines = [
        "schedule".ljust(width) + "".join(f"{'n=' + str(n):>20}" for n in n_values) + f"{'slope':>8}",
        " " * width + "".join(f"{'mse / coverage':>20}" for _ in n_values),
    ]
    for name in names:
        result = results[name]
        cells = "".join(f"{m:>12.2e} / {c:>4.2f}" for m, c in zip(result.mse, result.coverage))
        lines.append(name.ljust(width) + cells + f"{result.slope:>8.2f}")
    return "\n".join(lines)


def main(args) -> int:
    """Run the study, print the table and (with ``--out``) write the JSON and the plot."""
    n_values = np.unique(np.geomspace(args.n_min, args.n_max, args.points).round().astype(int))
    results = run_study(n_values.tolist(), args.replications, seed=args.seed)
    print(format_table(results))
    if args.out is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        payload = {
            "setting": "chi2 DRO-REBEL, linear rewards, 12 atoms in R^3, skewed heteroscedastic noise",
            "replications": args.replications,
            "seed": args.seed,
            "schedules": {name: asdict(result) for name, result in results.items()},
        }
        (out / "radius_study.json").write_text(json.dumps(payload, indent=2))
        plot_study(results, out / "radius_study.png")
        print(f"wrote {out / 'radius_study.json'} and {out / 'radius_study.png'}")
    return 0

"""Group shift under a misspecified model: what the robust group objective buys, and what it costs.

The radius study (``radius.py``) is well specified: one theta* is right for every sample, so
robustness can only slow the estimator down. Here no single parameter is right: groups follow
different linear laws and share one linear fit, and the training data over-represent one group.
Robustness then trades risk on the training mixture for risk on the worst group.

Setting. G = 3 groups, features x ~ N(0, I_3), targets y = x . beta_g + eps, eps ~ N(0, sigma^2),
sigma = 1, with

    beta_0 = (1, 0, 0),   beta_1 = (0, 1, 0),   beta_2 = (-1, 0, 1/2):

the majority group's y follows x_1, one minority's x_2, the other's -x_1 + x_3 / 2, so the
groups pull the shared fit three ways. The population risk of theta on group g is, for
x ~ N(0, I),

    R_g(theta) = E (x . theta - y)^2 = ||theta - beta_g||^2 + sigma^2,

so every population quantity below is exact, with no Monte Carlo.

Training data. n samples with the training mixture P = (0.8, 0.1, 0.1) of the groups and the
labels known. The group counts are stratified, n_g = P_g n (largest remainders when P_g n is not
an integer), so the ball's centre, the empirical group mixture, is P itself for every n the
default run uses, and only the features and the noise are random.

Objective. One theta for all groups, fitted by the chi-square group DRO problem
(docs/method.md#groups, docs/method.md#chi-square):

    min_theta  max_{Q : (1/2) sum_g (Q_g - P_g)^2 / P_g <= rho}  sum_g Q_g L_g(theta),

L_g the mean squared loss on group g's samples, which is what
``dro_rebel.robust_weights(per_sample_losses, "chi2", radius=rho, groups=labels)`` maximises
over. Only the chi-square set is studied: its divergence is a smooth constraint on the group
weights, also where a group's weight reaches zero, which small samples produce; KL's gradient,
log(Q_g / P_g) + 1, is unbounded there.

Estimator. The minimax theorem (convex in theta, linear in Q, the ball compact) swaps the min
and the max: the fit solves the dual

    max_{Q in the ball}  h(Q),   h(Q) = min_theta sum_g Q_g L_g(theta),

and theta_hat is the weighted least squares fit for the maximiser Q. Each L_g is a quadratic in
theta, so h needs only the groups' second moments (``GroupQuadratics``); h is concave and smooth,
its gradient is the vector of group losses at the minimiser (Danskin,
docs/method.md#danskin-detached-weights), and SLSQP maximises it
over the ball (a quadratic constraint) and the simplex. Solving in Q rather than theta matters:
when the ball holds the majority group's vertex, as both non-zero radii below do, the optimum is
often where two or three group losses tie, a kink of the primal objective and of its dual in
(theta, eta) (the radius study's form), but a smooth point of h. Radius 0 is Q = P: ordinary
least squares on the pooled data.

Convergence check, by the library on the per-sample losses with ``groups=``
(docs/method.md#groups): V* = ``worst_case(l(theta_hat), "chi2", radius, groups=labels).value``
is the robust objective at theta_hat, an upper bound on the optimum, and h(Q) for the fit's Q
(kept inside the ball) a lower bound. Their relative difference, the duality gap, is recorded
for every fit (``max_gap``), and the tests hold it below 1e-7; SLSQP's accuracy in Q limits it
where group losses tie.

Radii compared, with n the number of training samples:

- ``0 (ERM)``: ordinary least squares on the pooled data.
- ``c/n``: c = z_0.95^2 / 2 = 1.353, i.e. ``calibrated_radius(n)``: the calibrated radius
  if the samples, not the groups, were the units of the ball (docs/method.md#radius-schedule
  and #calibrated-radius). It vanishes as n grows, so this fit tends to ERM.
- ``calibrated``: ``radius="calibrated"`` with ``groups=``, which takes n = G = 3
  (docs/method.md#calibrated-radius): rho = 1.353 / 3 = 0.451 for every n. That radius makes V*
  an upper confidence bound for the mean of three sampled losses; the three group losses are
  not samples, and their mixture P is known exactly here, so it is a fixed size set by G alone:
  it does not shrink as the data grow, and the fit does not tend to ERM. Its ball does not hold
  the uniform mixture (below).
- ``D(uniform || P)``: the fixed divergence from the training mixture to the uniform one U,
  (1/2) sum_g (1/3 - P_g)^2 / P_g = 0.681 for P = (0.8, 0.1, 0.1), so that the ball just holds U:
  the robust risk bounds the risk under a balanced deployment.

Metrics, population and exact, per n and radius over independent replications (common random
numbers across radii): the worst-group risk max_g R_g(theta_hat), the risk under the training
mixture sum_g P_g R_g and under the uniform one; mean and 95% Student-t interval (t quantile
with replications - 1 degrees of freedom). References: the exact minimax fit,
argmin_theta max_g R_g(theta), the centre of the smallest ball around the betas (the three are
equidistant from (0, 0, 1/4), each at risk 1 + 1/16 + sigma^2; dashed in the plot), and each
radius's population limit, the same fit on the population risks (n = infinity: ``limit`` in the
JSON, the table's last column).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import optimize, stats
from tqdm.auto import tqdm

import dro_rebel
from dro_rebel.study.radius import chi2_divergence

__all__ = [
    "Design",
    "DEFAULT_DESIGN",
    "GroupQuadratics",
    "METRICS",
    "radii",
    "fit_group_chi2",
    "duality_gap",
    "minimax",
    "Metric",
    "RadiusResult",
    "run_study",
    "plot_study",
    "format_table",
    "main",
]

Radius = Union[float, str]

METRICS = ("worst_group", "training_mixture", "uniform_mixture")
"""The population risks reported, in the order of the plot's panels."""


@dataclass(frozen=True)
class Design:
    """G groups of linear-regression data sharing one fit: x ~ N(0, I_d), y = x . beta_g + eps."""

    betas: np.ndarray
    """(G, d) the groups' true parameters."""
    sigma: float
    """Standard deviation of the Gaussian noise."""
    mixture: np.ndarray
    """(G,) the training mixture P of the groups."""

    def counts(self, n: int) -> np.ndarray:
        """Stratified group sizes n_g = P_g n, the remainder to the largest fractional parts."""
        exact = self.mixture * n
        counts = np.floor(exact).astype(int)
        counts[np.argsort(counts - exact)[: n - counts.sum()]] += 1
        if np.any(counts == 0):
            raise ValueError(f"n = {n} leaves a group of the mixture {self.mixture} without samples")
        return counts

    def sample(self, n: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """n training samples: features (n, d), targets (n,) and group labels (n,)."""
        labels = np.repeat(np.arange(len(self.mixture)), self.counts(n))
        features = rng.normal(size=(n, self.betas.shape[1]))
        targets = np.einsum("ij,ij->i", features, self.betas[labels]) + self.sigma * rng.normal(size=n)
        return features, targets, labels

    def risks(self, theta: np.ndarray) -> np.ndarray:
        """(G,) population risks ||theta - beta_g||^2 + sigma^2."""
        return np.sum((theta - self.betas) ** 2, axis=1) + self.sigma**2

    def metrics(self, theta: np.ndarray) -> Dict[str, float]:
        """The reported population risks of theta (see METRICS)."""
        risks = self.risks(theta)
        return {
            "worst_group": float(risks.max()),
            "training_mixture": float(self.mixture @ risks),
            "uniform_mixture": float(risks.mean()),
        }


DEFAULT_DESIGN = Design(
    betas=np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.5]]),
    sigma=1.0,
    mixture=np.array([0.8, 0.1, 0.1]),
)


@dataclass(frozen=True)
class GroupQuadratics:
    """The group losses L_g(theta) = theta' A_g theta - 2 b_g' theta + c_g and the groups' masses."""

    second: np.ndarray
    """(G, d, d) A_g."""
    first: np.ndarray
    """(G, d) b_g."""
    zeroth: np.ndarray
    """(G,) c_g."""
    mass: np.ndarray
    """(G,) P_g, the reference mixture of the groups."""

    @classmethod
    def from_sample(cls, features: np.ndarray, targets: np.ndarray, labels: np.ndarray) -> "GroupQuadratics":
        """Each group's mean squared loss on its samples; P_g = n_g / n."""
        groups = np.unique(labels)
        second, first, zeroth, size = [], [], [], []
        for g in groups:
            x, y = features[labels == g], targets[labels == g]
            second.append(x.T @ x / len(y))
            first.append(x.T @ y / len(y))
            zeroth.append(y @ y / len(y))
            size.append(len(y))
        size = np.asarray(size, dtype=float)
        return cls(np.array(second), np.array(first), np.array(zeroth), size / size.sum())

    @classmethod
    def population(cls, design: Design) -> "GroupQuadratics":
        """The population risks R_g (A_g = I, b_g = beta_g) with the training mixture as P."""
        groups, d = design.betas.shape
        return cls(
            np.broadcast_to(np.eye(d), (groups, d, d)).copy(),
            design.betas.copy(),
            np.sum(design.betas**2, axis=1) + design.sigma**2,
            design.mixture.copy(),
        )

    def losses(self, theta: np.ndarray) -> np.ndarray:
        return np.einsum("i,gij,j->g", theta, self.second, theta) - 2.0 * self.first @ theta + self.zeroth

    def minimiser(self, weights: np.ndarray) -> np.ndarray:
        """argmin_theta sum_g w_g L_g(theta)."""
        return np.linalg.solve(np.einsum("g,gij->ij", weights, self.second), weights @ self.first)


def radii(design: Design, n: Optional[int]) -> Dict[str, Radius]:
    """The radii compared at n training samples (module docstring), by name; n = None gives their
    population limits (c/n = 0, the ball centred at the training mixture)."""
    uniform = np.full(len(design.mixture), 1.0 / len(design.mixture))
    centre = design.mixture if n is None else design.counts(n) / n
    return {
        "0 (ERM)": 0.0,
        "c/n": 0.0 if n is None else dro_rebel.calibrated_radius(n),
        "calibrated": "calibrated",
        "D(uniform || P)": chi2_divergence(uniform, centre),
    }


def fit_group_chi2(quad: GroupQuadratics, radius: float) -> Tuple[np.ndarray, np.ndarray, float]:
    """The chi-square group DRO fit by its dual in the group weights Q (module docstring).

    Returns (theta, Q, h(Q)): the fit, the worst-case group weights and the dual value, a lower
    bound on the robust objective's minimum. Q is kept inside the ball (SLSQP may leave it by
    rounding) so that the bound holds.
    """
    mass = quad.mass
    if radius == 0.0:
        return quad.minimiser(mass), mass.copy(), float(mass @ quad.losses(quad.minimiser(mass)))

    def negative_dual(weights: np.ndarray) -> Tuple[float, np.ndarray]:
        losses = quad.losses(quad.minimiser(weights))
        return -float(weights @ losses), -losses

    constraints = [
        {"type": "ineq", "fun": lambda q: radius - chi2_divergence(q, mass), "jac": lambda q: -(q - mass) / mass},
        {"type": "eq", "fun": lambda q: q.sum() - 1.0, "jac": np.ones_like},
    ]
    result = optimize.minimize(
        negative_dual,
        mass.copy(),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * len(mass),
        constraints=constraints,
        options={"ftol": 1e-16, "maxiter": 500},
    )
    weights = np.clip(result.x, 0.0, None)
    weights /= weights.sum()
    divergence = chi2_divergence(weights, mass)
    if divergence > radius:
        # The divergence is quadratic in Q - P: this scaling lands on the sphere.
        weights = mass + (weights - mass) * np.sqrt(radius / divergence)
    theta = quad.minimiser(weights)
    return theta, weights, float(weights @ quad.losses(theta))


def duality_gap(
    features: np.ndarray, targets: np.ndarray, labels: np.ndarray, theta: np.ndarray, lower: float, radius: Radius
) -> float:
    """(V* - lower) / V*, V* the robust objective at theta by the library with ``groups=labels``
    and ``lower`` the fit's dual value: zero at the group DRO minimiser (module docstring)."""
    value = dro_rebel.worst_case((features @ theta - targets) ** 2, "chi2", radius=radius, groups=labels).value
    return (value - lower) / value


def minimax(betas: np.ndarray) -> np.ndarray:
    """argmin_theta max_g ||theta - beta_g||^2: the centre of the smallest ball holding the betas.

    That ball is the circumscribed ball (centre in their affine hull) of some subset of the
    betas; among the subsets whose ball holds every beta, the smallest is the one.
    """
    best, best_radius = betas[0], np.inf
    for size in range(1, len(betas) + 1):
        for subset in combinations(range(len(betas)), size):
            base, offsets = betas[subset[0]], betas[list(subset[1:])] - betas[subset[0]]
            centre = base
            if size > 1:
                gram = offsets @ offsets.T
                if np.linalg.matrix_rank(gram) < size - 1:
                    continue
                # |centre - beta_j|^2 equal over the subset, centre = base + offsets' a.
                centre = base + offsets.T @ np.linalg.solve(gram, 0.5 * np.sum(offsets**2, axis=1))
            radius = float(np.sum((centre - base) ** 2))
            if radius < best_radius and np.all(np.sum((betas - centre) ** 2, axis=1) <= radius * (1 + 1e-12)):
                best, best_radius = centre, radius
    return np.array(best, dtype=float)


@dataclass
class Metric:
    """One population risk of one radius: per n, the replications' values and their summary."""

    per_seed: List[List[float]] = field(default_factory=list)
    mean: List[float] = field(default_factory=list)
    low: List[float] = field(default_factory=list)
    """Lower end of the 95% Student-t interval of the mean."""
    high: List[float] = field(default_factory=list)
    limit: float = float("nan")
    """The population limit (n = infinity) of this radius's fit."""


@dataclass
class RadiusResult:
    """One radius's results, one entry per n."""

    n: List[int] = field(default_factory=list)
    radius: List[float] = field(default_factory=list)
    max_gap: List[float] = field(default_factory=list)
    """Largest relative duality gap over the replications (the convergence check)."""
    metrics: Dict[str, Metric] = field(default_factory=lambda: {name: Metric() for name in METRICS})


def _summarise(metric: Metric, values: List[float]) -> None:
    mean = float(np.mean(values))
    half = float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))
    metric.per_seed.append(values)
    metric.mean.append(mean)
    metric.low.append(mean - half)
    metric.high.append(mean + half)


def _numeric(radius: Radius, groups: int) -> float:
    """A radius as the number the library uses (``"calibrated"`` takes n = the number of groups)."""
    return dro_rebel.calibrated_radius(groups) if radius == "calibrated" else float(radius)


def run_study(
    n_values: Sequence[int],
    replications: int,
    *,
    design: Design = DEFAULT_DESIGN,
    seed: int = 0,
    progress: bool = True,
) -> Dict[str, RadiusResult]:
    """Fit every radius on the same samples (common random numbers) for every n."""
    groups = len(design.mixture)
    names = list(radii(design, int(n_values[0])))
    results = {name: RadiusResult() for name in names}
    rng = np.random.default_rng(seed)
    with tqdm(total=len(n_values) * replications, desc="shift study", disable=not progress) as bar:
        for n in n_values:
            rules = radii(design, int(n))
            values = {name: {metric: [] for metric in METRICS} for name in names}
            gaps: Dict[str, List[float]] = {name: [] for name in names}
            for _ in range(replications):
                features, targets, labels = design.sample(int(n), rng)
                quad = GroupQuadratics.from_sample(features, targets, labels)
                for name, radius in rules.items():
                    theta, _, lower = fit_group_chi2(quad, _numeric(radius, groups))
                    gaps[name].append(duality_gap(features, targets, labels, theta, lower, radius))
                    for metric, value in design.metrics(theta).items():
                        values[name][metric].append(value)
                bar.update(1)
            for name, radius in rules.items():
                result = results[name]
                result.n.append(int(n))
                result.radius.append(_numeric(radius, groups))
                result.max_gap.append(float(np.max(gaps[name])))
                for metric in METRICS:
                    _summarise(result.metrics[metric], values[name][metric])
    population = GroupQuadratics.population(design)
    for name, radius in radii(design, None).items():
        limit = design.metrics(fit_group_chi2(population, _numeric(radius, groups))[0])
        for metric in METRICS:
            results[name].metrics[metric].limit = limit[metric]
    return results


def plot_study(results: Dict[str, RadiusResult], reference: Dict[str, float], path: Path) -> None:
    """One panel per population risk against n: a line per radius with its 95% interval shaded,
    the exact minimax fit dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {
        "worst_group": "Worst-group risk",
        "training_mixture": "Risk under the training mixture (0.8/0.1/0.1)",
        "uniform_mixture": "Risk under the uniform mixture",
    }
    fig, axes = plt.subplots(1, len(METRICS), figsize=(15, 4.4))
    for axis, metric in zip(axes, METRICS):
        for name, result in results.items():
            summary = result.metrics[metric]
            (line,) = axis.plot(result.n, summary.mean, marker="o", ms=3, label=name)
            axis.fill_between(result.n, summary.low, summary.high, color=line.get_color(), alpha=0.2)
        axis.axhline(reference[metric], color="black", ls="--", lw=1, label="minimax fit (exact)")
        axis.set(xscale="log", xlabel="n (training samples)", ylabel="population risk", title=titles[metric])
    axes[0].legend(fontsize=8)
    fig.suptitle("chi-square group DRO, 3 linear groups, one shared fit: radius vs worst-group and mixture risk")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(results: Dict[str, RadiusResult]) -> str:
    """The mean worst-group and training-mixture risks per n and radius, and the population limit."""
    names = list(results)
    n_values = results[names[0]].n
    width = max(len(name) for name in names) + 2
    lines = [
        "radius".ljust(width) + "".join(f"{'n=' + str(n):>15}" for n in n_values) + f"{'n=inf':>15}",
        " " * width + "".join(f"{'worst / train':>15}" for _ in range(len(n_values) + 1)),
    ]
    for name in names:
        worst, train = results[name].metrics["worst_group"], results[name].metrics["training_mixture"]
        cells = "".join(f"{w:>7.3f} / {t:.3f}" for w, t in zip(worst.mean + [worst.limit], train.mean + [train.limit]))
        lines.append(name.ljust(width) + cells)
    return "\n".join(lines)


def main(args) -> int:
    """Run the study, print the table and (with ``--out``) write the JSON and the plot."""
    n_values = np.unique(np.geomspace(args.n_min, args.n_max, args.points).round().astype(int))
    results = run_study(n_values.tolist(), args.replications, seed=args.seed)
    reference_theta = minimax(DEFAULT_DESIGN.betas)
    reference = DEFAULT_DESIGN.metrics(reference_theta)
    print(format_table(results))
    print("minimax fit: " + ", ".join(f"{metric} {value:.3f}" for metric, value in reference.items()))
    gap = max(max(result.max_gap) for result in results.values())
    print(f"largest relative duality gap of any fit: {gap:.1e}")
    if args.out is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        payload = {
            "setting": "chi2 group DRO, 3 linear groups in R^3 with different betas, one shared fit",
            "design": {
                "betas": DEFAULT_DESIGN.betas.tolist(),
                "sigma": DEFAULT_DESIGN.sigma,
                "mixture": DEFAULT_DESIGN.mixture.tolist(),
            },
            "replications": args.replications,
            "seed": args.seed,
            "interval": "95% Student-t interval of the mean over replications",
            "minimax": {"theta": reference_theta.tolist(), **reference},
            "radii": {name: asdict(result) for name, result in results.items()},
        }
        (out / "shift_study.json").write_text(json.dumps(payload, indent=2))
        plot_study(results, reference, out / "shift_study.png")
        print(f"wrote {out / 'shift_study.json'} and {out / 'shift_study.png'}")
    return 0

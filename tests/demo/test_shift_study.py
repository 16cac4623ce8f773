"""The shift study's fit is the exact chi-square group DRO minimiser, its radii mean what they
say, the robust fits trade training-mixture risk for worst-group risk, and the CLI writes its files."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

import dro_rebel  # noqa: E402
from dro_rebel.cli import main as cli_main  # noqa: E402
from dro_rebel.study.radius import chi2_divergence  # noqa: E402
from dro_rebel.study.shift import (  # noqa: E402
    DEFAULT_DESIGN,
    METRICS,
    GroupQuadratics,
    duality_gap,
    fit_group_chi2,
    minimax,
    radii,
)

GROUPS = len(DEFAULT_DESIGN.mixture)
UNIFORM = np.full(GROUPS, 1.0 / GROUPS)


def _numeric(radius):
    return dro_rebel.calibrated_radius(GROUPS) if radius == "calibrated" else radius


def _sample(n, seed):
    features, targets, labels = DEFAULT_DESIGN.sample(n, np.random.default_rng(seed))
    return features, targets, labels, GroupQuadratics.from_sample(features, targets, labels)


def test_radius_zero_is_pooled_least_squares():
    features, targets, _, quad = _sample(200, 0)
    theta, weights, value = fit_group_chi2(quad, 0.0)
    np.testing.assert_allclose(theta, np.linalg.lstsq(features, targets, rcond=None)[0], atol=1e-12)
    np.testing.assert_allclose(weights, DEFAULT_DESIGN.mixture)
    assert value == pytest.approx(np.mean((features @ theta - targets) ** 2), rel=1e-12)


def test_group_quadratics_are_the_group_mean_losses():
    features, targets, labels, quad = _sample(100, 1)
    theta = np.array([0.3, -0.2, 0.7])
    losses = (features @ theta - targets) ** 2
    expected = [losses[labels == g].mean() for g in range(GROUPS)]
    np.testing.assert_allclose(quad.losses(theta), expected, rtol=1e-12)
    population = GroupQuadratics.population(DEFAULT_DESIGN)
    np.testing.assert_allclose(population.losses(theta), DEFAULT_DESIGN.risks(theta), rtol=1e-12)


@pytest.mark.parametrize("n", [50, 400])
@pytest.mark.parametrize("name", ["c/n", "calibrated", "D(uniform || P)"])
def test_fit_is_the_group_dro_minimiser(n, name):
    for seed in range(5):
        features, targets, labels, quad = _sample(n, seed)
        radius = radii(DEFAULT_DESIGN, n)[name]
        theta, weights, lower = fit_group_chi2(quad, _numeric(radius))
        # The dual weights are a point of the ball, so `lower` bounds the optimum from below ...
        assert np.all(weights >= 0) and weights.sum() == pytest.approx(1.0, abs=1e-12)
        assert chi2_divergence(weights, quad.mass) <= _numeric(radius) * (1 + 1e-12)
        # ... and the library's worst case at theta bounds it from above: they meet.
        gap = duality_gap(features, targets, labels, theta, lower, radius)
        assert -1e-12 < gap < 1e-7
        # The check has teeth: a nearby theta leaves a clear gap.
        assert duality_gap(features, targets, labels, theta + 0.05, lower, radius) > 1e-4


def test_calibrated_radius_counts_groups():
    features, targets, labels, _ = _sample(400, 0)
    solution = dro_rebel.worst_case((features @ np.zeros(3) - targets) ** 2, "chi2", radius="calibrated", groups=labels)
    assert solution.radius == pytest.approx(dro_rebel.calibrated_radius(GROUPS))
    # Not the sample count: the group radius does not shrink with n.
    assert radii(DEFAULT_DESIGN, 400)["c/n"] == pytest.approx(dro_rebel.calibrated_radius(400))
    # The calibrated ball is smaller than the one that just holds the uniform mixture.
    assert dro_rebel.calibrated_radius(GROUPS) < chi2_divergence(UNIFORM, DEFAULT_DESIGN.mixture)


def test_fixed_radius_ball_holds_the_uniform_mixture():
    features, targets, labels, quad = _sample(200, 3)
    radius = radii(DEFAULT_DESIGN, 200)["D(uniform || P)"]
    assert radius == pytest.approx(chi2_divergence(UNIFORM, quad.mass), rel=1e-15)
    fitted = fit_group_chi2(quad, radius)[0]
    for theta in [fitted, *np.random.default_rng(0).normal(size=(20, 3))]:
        losses = (features @ theta - targets) ** 2
        value = dro_rebel.worst_case(losses, "chi2", radius=radius, groups=labels).value
        assert value >= quad.losses(theta).mean() * (1 - 1e-12)


def test_minimax_is_the_largest_ball_fit():
    theta = minimax(DEFAULT_DESIGN.betas)
    risks = DEFAULT_DESIGN.risks(theta)
    np.testing.assert_allclose(risks, 1.0 + 1.0 / 16.0 + DEFAULT_DESIGN.sigma**2, rtol=1e-12)
    for other in np.random.default_rng(1).normal(scale=0.5, size=(50, 3)) + theta:
        assert DEFAULT_DESIGN.risks(other).max() >= risks.max()
    # A chi-square ball holding the whole simplex ((1 - P_g) / (2 P_g) <= 4.5) is the max over groups.
    fitted = fit_group_chi2(GroupQuadratics.population(DEFAULT_DESIGN), 10.0)[0]
    np.testing.assert_allclose(fitted, theta, atol=1e-6)


def test_robust_fits_trade_training_risk_for_worst_group():
    population = GroupQuadratics.population(DEFAULT_DESIGN)
    limits = {
        name: DEFAULT_DESIGN.metrics(fit_group_chi2(population, _numeric(radius))[0])
        for name, radius in radii(DEFAULT_DESIGN, None).items()
    }
    erm, calibrated, fixed = limits["0 (ERM)"], limits["calibrated"], limits["D(uniform || P)"]
    # n = infinity: the larger the ball, the lower the worst-group risk and the higher the training risk.
    assert fixed["worst_group"] < calibrated["worst_group"] < erm["worst_group"]
    assert fixed["training_mixture"] > calibrated["training_mixture"] > erm["training_mixture"]
    assert limits["c/n"] == erm
    # Large n, per sample: the non-vanishing radii make the same trade. c/n's radius (7e-5) still
    # lowers the worst-group risk, but moves the training risk by less than the sampling noise.
    n = 20_000
    for seed in range(3):
        _, _, _, quad = _sample(n, seed)
        fits = {
            name: DEFAULT_DESIGN.metrics(fit_group_chi2(quad, _numeric(radius))[0])
            for name, radius in radii(DEFAULT_DESIGN, n).items()
        }
        erm = fits["0 (ERM)"]
        assert fits["c/n"]["worst_group"] < erm["worst_group"]
        for name in ("calibrated", "D(uniform || P)"):
            assert fits[name]["worst_group"] < erm["worst_group"] - 1.0
            assert fits[name]["training_mixture"] > erm["training_mixture"] + 0.1


def test_cli_writes_json_and_plot(tmp_path, capsys):
    argv = ["study", "shift", "--out", str(tmp_path), "--replications", "3", "--n-min", "50", "--n-max", "200"]
    assert cli_main(argv + ["--points", "3"]) == 0
    payload = json.loads((tmp_path / "shift_study.json").read_text())
    assert payload["replications"] == 3
    assert set(payload["minimax"]) == {"theta", *METRICS}
    assert set(payload["radii"]) == {"0 (ERM)", "c/n", "calibrated", "D(uniform || P)"}
    for result in payload["radii"].values():
        assert result["n"] == [50, 100, 200]
        assert len(result["radius"]) == 3
        assert max(result["max_gap"]) < 1e-7
        for metric in METRICS:
            summary = result["metrics"][metric]
            assert np.array(summary["per_seed"]).shape == (3, 3)
            np.testing.assert_allclose(summary["mean"], np.mean(summary["per_seed"], axis=1))
            assert np.all(np.array(summary["low"]) <= summary["mean"])
            assert np.all(np.array(summary["mean"]) <= summary["high"])
            # Population risks are at least the noise variance; the minimax fit's worst group is a floor.
            assert np.isfinite(summary["limit"]) and summary["limit"] >= DEFAULT_DESIGN.sigma**2
    for result in payload["radii"].values():
        assert min(min(seeds) for seeds in result["metrics"]["worst_group"]["per_seed"]) >= (
            payload["minimax"]["worst_group"] - 1e-9
        )
    assert payload["radii"]["calibrated"]["radius"] == [pytest.approx(dro_rebel.calibrated_radius(3))] * 3
    assert (tmp_path / "shift_study.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "worst / train" in out and "shift_study.json" in out

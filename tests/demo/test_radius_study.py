"""The radius study's chi-square fit is the exact DRO minimiser, and the CLI writes its files."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

pytest.importorskip("scipy", reason='the study needs pip install "dro-rebel[study]"')

import dro_rebel  # noqa: E402
from dro_rebel.study.radius import DEFAULT_DESIGN, chi2_divergence, fit_chi2_dro, fit_erm, main  # noqa: E402


@pytest.mark.parametrize("n, radius", [(300, 0.05), (3000, 1e-3), (300_000, 1e-7), (500, 2.0)])
def test_fit_is_the_exact_dro_minimiser(n, radius):
    features, targets, probs = DEFAULT_DESIGN.support()
    empirical = np.random.default_rng(n).multinomial(n, probs) / n
    theta, _, value = fit_chi2_dro(features, targets, empirical, radius)
    keep = empirical > 0
    residual = features[keep] @ theta - targets[keep]
    solution = dro_rebel.worst_case(residual**2, "chi2", radius=radius, reference=empirical[keep])
    # The fitted dual value is the worst-case risk at theta (the inner max solved exactly) ...
    assert value == pytest.approx(solution.value, rel=1e-9)
    # ... and theta is stationary for it: Danskin's gradient sum_i q_i grad l_i vanishes.
    gradient = features[keep].T @ (solution.weights * 2.0 * residual)
    assert np.abs(gradient).max() < 1e-6 * max(1.0, value)


def test_radius_zero_is_least_squares():
    features, targets, probs = DEFAULT_DESIGN.support()
    theta, _, _ = fit_chi2_dro(features, targets, probs, 0.0)
    np.testing.assert_allclose(theta, DEFAULT_DESIGN.theta, atol=1e-12)
    np.testing.assert_allclose(fit_erm(features, targets, probs), DEFAULT_DESIGN.theta, atol=1e-12)


def test_divergence_is_infinite_off_support_and_zero_at_truth():
    _, _, probs = DEFAULT_DESIGN.support()
    assert chi2_divergence(probs, probs) == 0.0
    centre = probs.copy()
    centre[0], centre[1] = 0.0, centre[1] + probs[0]
    assert chi2_divergence(probs, centre) == float("inf")


def test_cli_writes_json_and_plot(tmp_path, capsys):
    args = argparse.Namespace(out=tmp_path, replications=3, n_min=300, n_max=3000, points=3, seed=0)
    assert main(args) == 0
    payload = json.loads((tmp_path / "radius_study.json").read_text())
    schedules = payload["schedules"]
    assert {"ERM", "n^-1/2", "1/n", "n^-3/2"} <= set(schedules)
    for result in schedules.values():
        assert len(result["n"]) == len(result["mse"]) == len(result["coverage"]) == 3
        assert np.isfinite(result["slope"])
    assert (tmp_path / "radius_study.png").stat().st_size > 0
    assert "slope" in capsys.readouterr().out

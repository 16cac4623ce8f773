"""The dro-rebel command line: weights from files, training from TOML, the bench hook."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import numpy as np
import pytest
from tiny_models import PAIRS, PROMPTS, tiny_llama, tiny_reward_model

from dro_rebel import robust_weights
from dro_rebel.cli import main

LOSSES = np.array([0.5, 2.0, 1.0, 3.0])


def test_weights_printed_from_csv(tmp_path, capsys):
    path = tmp_path / "losses.csv"
    path.write_text("\n".join(map(str, LOSSES)))
    assert main(["weights", str(path), "--ambiguity", "kl", "--radius", "0.1"]) == 0
    printed = np.array([float(line) for line in capsys.readouterr().out.split()])
    np.testing.assert_array_equal(printed, robust_weights(LOSSES, "kl", radius=0.1))


def test_weights_written_to_npy_with_groups(tmp_path):
    np.save(tmp_path / "losses.npy", LOSSES)
    np.savetxt(tmp_path / "groups.csv", [0, 0, 1, 1])
    out = tmp_path / "w.npy"
    argv = [
        "weights",
        str(tmp_path / "losses.npy"),
        "--alpha",
        "0.5",
        "-a",
        "cvar",
        "--groups",
        str(tmp_path / "groups.csv"),
    ]
    assert main(argv + ["-o", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), robust_weights(LOSSES, "cvar", alpha=0.5, groups=[0, 0, 1, 1]))


def test_weights_wasserstein_on_features(tmp_path, capsys):
    np.savetxt(tmp_path / "losses.csv", LOSSES)
    features = np.array([[0.0], [1.0], [2.0], [3.5]])
    np.savetxt(tmp_path / "features.csv", features, delimiter=",")
    argv = ["weights", str(tmp_path / "losses.csv"), "-a", "wasserstein", "-r", "0.5"]
    assert main(argv + ["--features", str(tmp_path / "features.csv")]) == 0
    printed = np.array([float(line) for line in capsys.readouterr().out.split()])
    np.testing.assert_array_equal(printed, robust_weights(LOSSES, "wasserstein", radius=0.5, features=features))


def test_weights_needs_exactly_one_size(tmp_path):
    np.save(tmp_path / "losses.npy", LOSSES)
    with pytest.raises(SystemExit):
        main(["weights", str(tmp_path / "losses.npy"), "--radius", "0.1", "--penalty", "1.0"])


def _save(model, tokenizer, path):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.mark.parametrize("trainer", ["dpo", "reward", "rebel"])
def test_train_from_toml(tokenizer, tmp_path, capsys, trainer):
    builder = tiny_reward_model if trainer == "reward" else tiny_llama
    _save(builder(tokenizer), tokenizer, tmp_path / "model")
    rows = PAIRS if trainer != "rebel" else [{"prompt": p, "group": i % 2} for i, p in enumerate(PROMPTS)]
    _write_jsonl(tmp_path / "train.jsonl", rows)
    (tmp_path / "rewards_for_cli_test.py").write_text(
        "def length(prompts, completions):\n    return [len(c) / 10.0 for c in completions]\n"
    )
    (tmp_path / "run.toml").write_text(
        f'trainer = "{trainer}"\n'
        'model = "model"\n'
        'reward_fn = "rewards_for_cli_test:length"\n'
        "[data]\n"
        'train = "train.jsonl"\n'
        'eval = "train.jsonl"\n'
        "[config]\n"
        'output_dir = "out"\n'
        "max_steps = 2\n"
        "eval_steps = 2\n"
        "per_device_train_batch_size = 4\n"
        'ambiguity = "chi2"\n'
        "radius = 0.2\n"
        'group_column = "group"\n'
        "disable_tqdm = true\n" + ("max_new_tokens = 4\n" if trainer == "rebel" else "")
    )
    assert main(["train", str(tmp_path / "run.toml")]) == 0
    assert "loss=" in capsys.readouterr().out
    assert (tmp_path / "out" / "checkpoint-2.pt").exists()
    assert main(["train", str(tmp_path / "run.toml"), "--resume"]) == 0  # already at max_steps


def test_train_rejects_unknown_config_fields(tokenizer, tmp_path):
    _save(tiny_llama(tokenizer), tokenizer, tmp_path / "model")
    _write_jsonl(tmp_path / "train.jsonl", PAIRS)
    (tmp_path / "run.toml").write_text(
        'trainer = "dpo"\nmodel = "model"\n[data]\ntrain = "train.jsonl"\n[config]\nbetta = 0.1\n'
    )
    with pytest.raises(ValueError, match="unknown RobustDPOConfig fields: betta"):
        main(["train", str(tmp_path / "run.toml")])


def test_bench_tabulates_an_earlier_run(monkeypatch, tmp_path):
    seen = []
    table = types.ModuleType("dro_rebel.bench_table")
    table.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "dro_rebel.bench_table", table)
    assert main(["bench", str(tmp_path / "bench.json")]) == 0
    assert seen == [[str(tmp_path / "bench.json")]]


def test_bench_runs_pytest_then_the_table(monkeypatch, tmp_path):
    calls = []
    table = types.ModuleType("dro_rebel.bench_table")
    table.main = lambda argv: calls.append(("table", argv)) or 0
    monkeypatch.setitem(sys.modules, "dro_rebel.bench_table", table)
    monkeypatch.setattr(subprocess, "call", lambda command: calls.append(("pytest", command)) or 0)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "benches").mkdir()
    assert main(["bench"]) == 0
    (_, command), (_, argv) = calls
    assert command[1:6] == ["-m", "pytest", "benches/", "-m", "benchmark"]
    assert "--benchmark-json=runs/bench.json" in command and argv == ["runs/bench.json"]


def test_bench_says_how_outside_a_checkout(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench"]) == 1
    assert "pytest benches/ -m benchmark --benchmark-only" in capsys.readouterr().err

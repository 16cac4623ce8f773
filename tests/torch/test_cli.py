"""The dro-rebel command line: training from TOML (the `weights` subcommand: tests/test_cli_weights.py)."""

from __future__ import annotations

import json

import pytest
from tiny_models import PAIRS, PROMPTS, tiny_llama, tiny_reward_model

from dro_rebel.cli import main


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


def test_train_rejects_unknown_config_fields(tokenizer, tmp_path, capsys):
    _save(tiny_llama(tokenizer), tokenizer, tmp_path / "model")
    _write_jsonl(tmp_path / "train.jsonl", PAIRS)
    (tmp_path / "run.toml").write_text(
        'trainer = "dpo"\nmodel = "model"\n[data]\ntrain = "train.jsonl"\n[config]\nbetta = 0.1\n'
    )
    capsys.readouterr()  # progress bars of saving and loading
    assert main(["train", str(tmp_path / "run.toml")]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == "dro-rebel train: error: unknown RobustDPOConfig fields: betta"
    with pytest.raises(ValueError, match="unknown RobustDPOConfig fields: betta"):
        main(["train", str(tmp_path / "run.toml"), "--debug"])


def test_every_config_field_is_documented():
    """docs/train-config.md, which `dro-rebel train --help` points to, names every [config] key."""
    from dataclasses import fields
    from pathlib import Path

    from dro_rebel.cli import TRAIN_CONFIG_DOC
    from dro_rebel.torch import DroRebelConfig, RobustDPOConfig, RobustRewardConfig

    doc = (Path(__file__).resolve().parents[2] / TRAIN_CONFIG_DOC).read_text()
    for config in (DroRebelConfig, RobustDPOConfig, RobustRewardConfig):
        undocumented = [field.name for field in fields(config) if f"| `{field.name}` |" not in doc]
        assert not undocumented, f"{config.__name__} fields missing from {TRAIN_CONFIG_DOC}: {undocumented}"

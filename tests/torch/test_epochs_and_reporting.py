"""The trainers in transformers' terms: ``num_train_epochs`` beside ``max_steps`` and
``report_to`` (TensorBoard, Weights & Biases), logging what ``log.jsonl`` logs."""

from __future__ import annotations

import json
import sys
import types

import pytest
from tiny_models import PAIRS, tiny_llama

from dro_rebel.torch import RobustDPOConfig, RobustDPOTrainer


def _dpo(tokenizer, tmp_path, eval_dataset=None, **fields):
    config = RobustDPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, save_steps=None, disable_tqdm=True, **fields
    )
    return RobustDPOTrainer(tiny_llama(tokenizer), tokenizer, config, PAIRS, eval_dataset)


def _log(tmp_path):
    return [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]


def test_the_run_length_follows_transformers_rule():
    # max_steps > 0 overrides num_train_epochs; -1 leaves it to the epochs; neither: 1000 steps.
    config = RobustDPOConfig(per_device_train_batch_size=4, gradient_accumulation_steps=2)
    assert config.max_steps == -1 and config.num_train_epochs is None
    assert config.total_steps(num_rows=80) == 1000
    epochs = RobustDPOConfig(per_device_train_batch_size=4, gradient_accumulation_steps=2, num_train_epochs=2.5)
    assert epochs.total_steps(num_rows=80) == 25  # 2.5 * 80 rows / 8 rows a step
    assert epochs.total_steps(num_rows=80, world_size=2) == 13  # 16 rows a step, rounded up
    assert epochs.total_steps(num_rows=3) == 1
    both = RobustDPOConfig(max_steps=7, num_train_epochs=2.5)
    assert both.total_steps(num_rows=80) == 7
    with pytest.raises(ValueError, match="max_steps must be at least 1, or -1"):
        RobustDPOConfig(max_steps=0)
    with pytest.raises(ValueError, match="num_train_epochs must be positive"):
        RobustDPOConfig(num_train_epochs=0)


def test_a_trainer_runs_num_train_epochs(tokenizer, tmp_path):
    trainer = _dpo(tokenizer, tmp_path, num_train_epochs=1.5)
    assert trainer.max_steps == 3  # 1.5 passes over 8 pairs, 4 a step
    trainer.train()
    assert [record["step"] for record in _log(tmp_path)] == [1, 2, 3]
    # Every pair of the first epoch once, then half of the second.
    epoch = trainer.step_indices(1) + trainer.step_indices(2)
    assert sorted(epoch) == list(range(len(PAIRS)))


def test_report_to_names_the_package_it_needs(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb fails, as when not installed
    with pytest.raises(ModuleNotFoundError, match="report_to='wandb' needs the wandb package: pip install wandb"):
        _dpo(tokenizer, tmp_path, max_steps=1, report_to="wandb")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ModuleNotFoundError, match="needs the tensorboard package: pip install tensorboard"):
        _dpo(tokenizer, tmp_path, max_steps=1, report_to=["tensorboard"])
    with pytest.raises(ValueError, match="report_to takes one of"):
        RobustDPOConfig(report_to="mlflow")


class _FakeWriter:
    """``SummaryWriter``'s calls, recorded."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.scalars = []
        self.closed = False
        _FakeWriter.instances.append(self)

    def add_scalar(self, tag, value, global_step):
        self.scalars.append((global_step, tag, value))

    def flush(self):
        pass

    def close(self):
        self.closed = True


class _FakeRun:
    def __init__(self, **kwargs):
        self.init_kwargs = kwargs
        self.logged = []
        self.finished = False

    def log(self, values, step):
        self.logged.append((step, values))

    def finish(self):
        self.finished = True


def test_report_to_logs_what_the_jsonl_log_logs(tokenizer, tmp_path, monkeypatch):
    # Stand-ins for the two packages, which need not be installed here.
    _FakeWriter.instances = []
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=_FakeWriter))
    runs = []
    wandb = types.SimpleNamespace(init=lambda **kwargs: runs.append(_FakeRun(**kwargs)) or runs[-1])
    monkeypatch.setitem(sys.modules, "wandb", wandb)

    trainer = _dpo(tokenizer, tmp_path, PAIRS, max_steps=2, eval_steps=2, report_to=["tensorboard", "wandb"])
    trainer.train()

    records = _log(tmp_path)
    expected = [(record["step"], key, value) for record in records for key, value in record.items() if key != "step"]
    (writer,) = _FakeWriter.instances
    assert writer.log_dir == str(tmp_path / "runs") and writer.closed
    assert writer.scalars == expected
    assert {"loss", "robust/ess", "eval/loss"} <= {tag for _, tag, _ in writer.scalars}
    (run,) = runs
    assert run.finished and run.init_kwargs["config"]["report_to"] == ["tensorboard", "wandb"]
    assert run.logged == [(record["step"], {k: v for k, v in record.items() if k != "step"}) for record in records]

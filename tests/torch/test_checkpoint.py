"""Checkpoints: a run killed with SIGKILL resumes to exactly the parameters of an
uninterrupted run, and a damaged checkpoint is refused with a clear error."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Tuple

import pytest
import torch
from tiny_models import PAIRS, perturbed, tiny_llama

from dro_rebel.torch import CorruptCheckpointError, RobustDPOConfig, RobustDPOTrainer, load_checkpoint
from dro_rebel.torch.checkpoint import save_checkpoint

HERE = Path(__file__).parent


def _child(output_dir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, str(HERE / "resume_child.py"), str(output_dir), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen) -> Tuple[int, str]:
    """The exit status and the standard error of a child once it ends."""
    _, stderr = process.communicate(timeout=300)
    return process.returncode, stderr


# Two of the run's five steps, drawn afresh each session (the test id names them): before any
# checkpoint, between checkpoints and after the last one must all resume exactly.
KILL_STEPS = sorted(random.SystemRandom().sample(range(1, 6), 2))


@pytest.mark.parametrize("kill_at", KILL_STEPS, ids=[f"kill-at-step-{k}" for k in KILL_STEPS])
def test_killed_run_resumes_to_the_same_parameters(tmp_path, kill_at):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # The uninterrupted run and the one to be killed run side by side.
    uninterrupted, crashed = _child(straight), _child(killed, "--kill-at", str(kill_at))
    status, stderr = _finish(uninterrupted)
    assert status == 0, stderr
    status, stderr = _finish(crashed)
    assert status == -signal.SIGKILL, stderr
    assert not (killed / "final.pt").exists()
    # Checkpoints every 2 steps; the killed step never finished.
    expected_checkpoints = [f"checkpoint-{s}.pt" for s in (2, 4) if s < kill_at]
    assert sorted(p.name for p in killed.glob("checkpoint-*.pt")) == expected_checkpoints
    status, stderr = _finish(_child(killed, "--resume"))
    assert status == 0, stderr
    assert (killed / "log.jsonl").read_text() == (straight / "log.jsonl").read_text()
    expected, got = torch.load(straight / "final.pt"), torch.load(killed / "final.pt")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


@pytest.fixture
def checkpointed(tokenizer, tmp_path):
    config = RobustDPOConfig(output_dir=str(tmp_path), max_steps=1, disable_tqdm=True, learning_rate=1e-3)
    trainer = RobustDPOTrainer(tiny_llama(tokenizer), tokenizer, config, PAIRS)
    trainer.train()
    return trainer, tmp_path / "checkpoint-1.pt"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[: len(data) // 2], "checksum"),
        (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "checksum"),
        (lambda data: data[:20], "truncated"),
        (lambda data: b"PK" + data[2:], "not a dro-rebel checkpoint"),
    ],
)
def test_damaged_checkpoints_are_refused(checkpointed, damage, message):
    trainer, path = checkpointed
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CorruptCheckpointError, match=message):
        trainer.train(resume_from_checkpoint=True)
    with pytest.raises(CorruptCheckpointError, match=message):
        load_checkpoint(path)


def test_resume_restores_step_and_rejects_another_model(checkpointed, tokenizer, tmp_path):
    trainer, path = checkpointed
    assert load_checkpoint(path)["step"] == 1
    config = RobustDPOConfig(output_dir=str(tmp_path), max_steps=1, use_peft=True, disable_tqdm=True)
    lora = RobustDPOTrainer(tiny_llama(tokenizer), tokenizer, config, PAIRS)
    with pytest.raises(ValueError, match="other trainable parameters"):
        lora.load(path)


def test_no_temporary_file_is_left_behind(tmp_path):
    save_checkpoint(tmp_path, 7, {"x": torch.ones(3)})
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-7.pt"]


def _online_dpo(tokenizer, output_dir, max_steps=4):
    config = RobustDPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        max_steps=max_steps,
        save_steps=2,
        learning_rate=1e-2,
        group_column="group",
        adversary="online",
        # Large, so that the group weights move the parameters within a few steps.
        adversary_step_size=5.0,
        disable_tqdm=True,
    )
    return RobustDPOTrainer(perturbed(tiny_llama(tokenizer)), tokenizer, config, PAIRS)


def test_the_online_adversary_resumes_bit_identically(tokenizer, tmp_path):
    straight = _online_dpo(tokenizer, tmp_path / "straight")
    straight.train()
    log_weights = straight.robust_loss.adversary.log_weights
    assert set(log_weights) == {0, 1} and log_weights[0] != log_weights[1]
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    (resumed_dir / "checkpoint-2.pt").write_bytes((tmp_path / "straight" / "checkpoint-2.pt").read_bytes())
    resumed = _online_dpo(tokenizer, resumed_dir)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.robust_loss.adversary.log_weights == log_weights
    for (name, expected), got in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(expected, got), name
    assert load_checkpoint(tmp_path / "straight" / "checkpoint-4.pt")["adversary"] == (
        straight.robust_loss.adversary.state_dict()
    )
    # The state matters: resumed without it, the run moves elsewhere.
    forgetful_dir = tmp_path / "forgetful"
    forgetful_dir.mkdir()
    (forgetful_dir / "checkpoint-2.pt").write_bytes((tmp_path / "straight" / "checkpoint-2.pt").read_bytes())
    forgetful = _online_dpo(tokenizer, forgetful_dir)
    forgetful.load(forgetful_dir / "checkpoint-2.pt")
    forgetful.robust_loss.adversary.log_weights = {}
    forgetful.train()
    assert not all(torch.equal(a, b) for a, b in zip(straight.model.parameters(), forgetful.model.parameters()))


def test_an_exact_checkpoint_is_not_resumed_with_the_online_adversary(checkpointed, tokenizer, tmp_path):
    _trainer, path = checkpointed
    online = _online_dpo(tokenizer, tmp_path / "online")
    with pytest.raises(ValueError, match="no online adversary state"):
        online.load(path)

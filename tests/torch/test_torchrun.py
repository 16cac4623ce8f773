"""The project's own trainers on several processes, as launchers start them: each process on its
own GPU (``cuda:LOCAL_RANK``, checked with the CUDA queries mocked), the process group started
and destroyed by the trainer, and ``torchrun --nproc_per_node 2`` (gloo, CPU) running
``dro-rebel train`` to one checkpoint equal to a single process holding the whole batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from tiny_models import PAIRS, tiny_llama

import dro_rebel
from dro_rebel.cli import main
from dro_rebel.torch import distributed
from dro_rebel.torch.checkpoint import load_checkpoint
from dro_rebel.torch.model_setup import resolve_device

HERE = Path(__file__).parent


@pytest.fixture
def four_gpus(monkeypatch):
    """CUDA queries answering as a machine with four GPUs; the devices made current, in order."""
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: current.append(torch.device(device)))
    return current


@pytest.mark.parametrize("local_rank", [0, 1, 3])
def test_each_process_trains_on_the_gpu_of_its_local_rank(four_gpus, monkeypatch, local_rank):
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    own = torch.device("cuda", local_rank)
    assert resolve_device(None) == own and four_gpus == [own]
    assert resolve_device("cuda") == own
    # An explicit index wins, and becomes the current device too.
    assert resolve_device("cuda:2") == torch.device("cuda", 2) and four_gpus[-1] == torch.device("cuda", 2)
    assert resolve_device("cpu") == torch.device("cpu")


def test_without_a_launcher_cuda_is_the_current_device(four_gpus, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device(None) == torch.device("cuda") and four_gpus == []


def test_more_processes_than_gpus_is_a_value_error_that_says_so(four_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "4")
    with pytest.raises(ValueError, match="LOCAL_RANK=4 but this process sees 4 GPU"):
        resolve_device(None)


@pytest.mark.parametrize("device, backend", [("cuda:1", "nccl"), ("cpu", "gloo")])
def test_a_launcher_with_several_processes_gets_a_process_group_on_the_right_backend(monkeypatch, device, backend):
    started = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda name, **kwargs: started.append((name, kwargs)))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.start_process_group(torch.device(device)) and started == []
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.start_process_group(torch.device(device))
    expected = {"device_id": torch.device(device)} if backend == "nccl" else {}
    assert started == [(backend, expected)]


def write_run(directory: Path, tokenizer, per_device_train_batch_size: int, extra: str = "") -> Path:
    """A ``dro-rebel train`` config of robust DPO on the tiny Llama for two steps (and the model
    and data it names), writing to ``out-<per_device_train_batch_size>``."""
    model = directory / "model"
    if not model.exists():
        tiny_llama(tokenizer).save_pretrained(model)
        tokenizer.save_pretrained(model)
        (directory / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in PAIRS))
    config = directory / f"run-{per_device_train_batch_size}.toml"
    config.write_text(
        'trainer = "dpo"\nmodel = "model"\n[data]\ntrain = "train.jsonl"\n[config]\n'
        f'output_dir = "out-{per_device_train_batch_size}"\n'
        f"per_device_train_batch_size = {per_device_train_batch_size}\n"
        'max_steps = 2\nsave_steps = 2\nlearning_rate = 1e-2\nambiguity = "chi2"\nradius = 0.3\n'
        'group_column = "group"\ndisable_tqdm = true\n' + extra
    )
    return config


def torchrun_train(config: Path, processes: int = 2) -> None:
    """``torchrun --standalone --nproc_per_node PROCESSES -m dro_rebel.cli train CONFIG``, with
    the package the tests import."""
    package_root = str(Path(dro_rebel.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command += ["-m", "dro_rebel.cli", "train", str(config)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def test_torchrun_two_processes_train_to_the_checkpoint_of_one_with_the_whole_batch(tokenizer, tmp_path):
    torchrun_train(write_run(tmp_path, tokenizer, per_device_train_batch_size=4))
    assert main(["train", str(write_run(tmp_path, tokenizer, per_device_train_batch_size=8))]) == 0

    both = load_checkpoint(tmp_path / "out-4" / "checkpoint-2.pt")
    single = load_checkpoint(tmp_path / "out-8" / "checkpoint-2.pt")
    assert len(both["rng"]) == 2 and len(single["rng"]) == 1
    for name, parameter in single["model"].items():
        # Only the order of the float sums differs (gradients averaged over the processes).
        torch.testing.assert_close(both["model"][name], parameter, rtol=1e-3, atol=1e-4)
    # Rank 0 alone logs: one line per step.
    steps = [json.loads(line)["step"] for line in (tmp_path / "out-4" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2]

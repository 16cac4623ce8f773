"""DRODPOTrainer under a real ``accelerate launch`` with two CPU processes (gloo): both solve
the one worst case of the global step (every pair of both processes and of both accumulation
micro-batches) and train to the parameters of one process that holds the whole batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("accelerate")

import accelerate_child  # noqa: E402

import dro_rebel  # noqa: E402

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The run on two processes, each with micro-batches of 2 pairs and 2 of them per step:
    a global step of 8 pairs."""
    output = tmp_path_factory.mktemp("accelerate")
    # The children import the package the tests import, and tiny_models, whatever the install.
    package_root = str(Path(dro_rebel.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (str(HERE), package_root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",  # a free port
        str(HERE / "accelerate_child.py"),
        str(output),
        "2",
        "2",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return [torch.load(output / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The same global batch of 8 pairs in one process, without accumulation."""
    return accelerate_child.run(str(tmp_path_factory.mktemp("single")), 8, 1)


def test_both_processes_solve_the_one_global_problem_of_each_step(two_processes):
    assert [record["world_size"] for record in two_processes] == [2, 2]
    first, second = (record["solves"] for record in two_processes)
    # One solve per step, over the 2 processes x 2 micro-batches x 2 pairs.
    assert [len(solve["losses"]) for solve in first] == [8] * accelerate_child.STEPS
    for mine, theirs in zip(first, second):
        for key in ("losses", "groups", "weights"):
            np.testing.assert_array_equal(mine[key], theirs[key])
        # The weights one process computes on the gathered batch.
        expected = dro_rebel.robust_weights(
            mine["losses"], "chi2", radius=accelerate_child.RADIUS, groups=mine["groups"]
        )
        np.testing.assert_array_equal(mine["weights"], expected)
        assert sorted(mine["groups"].tolist()) == sorted(row["group"] for row in accelerate_child.ROWS)


def test_two_processes_train_as_one_process_with_the_whole_batch(two_processes, one_process):
    assert one_process["world_size"] == 1
    # The same losses at every step (in another order: the processes interleave the pairs)...
    for theirs, mine in zip(one_process["solves"], two_processes[0]["solves"]):
        order_theirs, order_mine = np.argsort(theirs["losses"]), np.argsort(mine["losses"])
        np.testing.assert_allclose(mine["losses"][order_mine], theirs["losses"][order_theirs], rtol=1e-5)
        np.testing.assert_allclose(mine["weights"][order_mine], theirs["weights"][order_theirs], rtol=1e-4, atol=1e-7)
    # ...and the same parameters at the end.
    for name, parameter in one_process["parameters"].items():
        for record in two_processes:
            torch.testing.assert_close(record["parameters"][name], parameter, rtol=1e-4, atol=1e-6)

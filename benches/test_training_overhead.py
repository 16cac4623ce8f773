"""The share of a training step spent in ``robust_weights``: a robust DPO step of the tiny
Llama of the torch tests on the CPU (8 pairs, chi-square ball), timed as a whole and around
each call of the solver. The target is under 1%: the robust reduction must cost nothing next
to a forward and backward pass. Run with `make bench` or

    .venv/bin/python -m pytest benches/test_training_overhead.py --benchmark-only -m benchmark -s
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import dro_rebel  # noqa: E402
from dro_rebel.torch import RobustDPOConfig, RobustDPOTrainer  # noqa: E402

# The tiny model and tokenizer are the torch tests' own, built from a config (no download).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "torch"))
from tiny_models import PAIRS, tiny_llama, tiny_tokenizer  # noqa: E402

pytestmark = [
    pytest.mark.benchmark,
    pytest.mark.skipif(
        dro_rebel.build_profile != "release",
        reason="benchmarks need the release build (make develop)",
    ),
]


def test_robust_weights_share_of_a_training_step(benchmark, monkeypatch, tmp_path):
    torch.set_num_threads(1)  # a steady CPU baseline on shared machines
    tokenizer = tiny_tokenizer()
    config = RobustDPOConfig(
        output_dir=str(tmp_path),
        learning_rate=1e-4,
        per_device_train_batch_size=8,
        ambiguity="chi2",
        radius=0.1,
        disable_tqdm=True,
        device="cpu",
    )
    trainer = RobustDPOTrainer(tiny_llama(tokenizer), tokenizer, config, PAIRS)
    batch = trainer.next_batch(1)

    solver_seconds: list = []
    solve = dro_rebel.robust_weights

    def timed_solve(*args, **kwargs):
        start = time.perf_counter()
        try:
            return solve(*args, **kwargs)
        finally:
            solver_seconds.append(time.perf_counter() - start)

    # RobustLoss looks the solver up on the package at each call.
    monkeypatch.setattr(dro_rebel, "robust_weights", timed_solve)
    step_seconds: list = []

    def step():
        start = time.perf_counter()
        trainer.train_step(batch)
        step_seconds.append(time.perf_counter() - start)

    for _ in range(3):  # warm-up, not counted
        trainer.train_step(batch)
    solver_seconds.clear()
    benchmark.pedantic(step, rounds=30, iterations=1)
    # Medians: on a shared machine a preempted call would otherwise decide the figure.
    solver, whole = statistics.median(solver_seconds), statistics.median(step_seconds)
    share = solver / whole
    benchmark.extra_info.update(
        robust_weights_share=share,
        robust_weights_us=1e6 * solver,
        step_ms=1e3 * whole,
        build_profile=dro_rebel.build_profile,
    )
    print(f"\nrobust_weights: {100 * share:.3f}% of a training step ({1e6 * solver:.1f} us of {1e3 * whole:.1f} ms)")
    assert share < 0.01

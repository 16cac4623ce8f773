"""Every Python script in examples/ runs as a user would run it, small enough for every
``make test``: on a CPU, in under a minute of processor time, printing what it trained."""

from __future__ import annotations

import importlib.util
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CPU_SECONDS = 60.0
# A hung example fails the test instead of the run; wall time on a loaded machine is no measure.
WALL_SECONDS = 600

NEEDS = {
    "robust_weights_loop.py": ["torch"],
    "dro_rebel_trainer.py": ["torch", "transformers", "tokenizers"],
    "robust_dpo_trainer.py": ["torch", "transformers", "tokenizers"],
    "trl_dpo.py": ["torch", "transformers", "tokenizers", "trl", "datasets"],
    "trl_online_dro.py": ["torch", "transformers", "tokenizers", "trl", "datasets"],
}


def test_every_python_example_is_tested():
    assert sorted(path.name for path in EXAMPLES.glob("*.py")) == sorted(NEEDS)


def run_example(name: str, *args: str) -> str:
    """The example's standard output; fails past ``CPU_SECONDS`` of processor time."""
    missing = [module for module in NEEDS[name] if importlib.util.find_spec(module) is None]
    if missing:
        pytest.skip(f"{name} needs {', '.join(missing)}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=WALL_SECONDS,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 0, result.stderr[-4000:]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < CPU_SECONDS, f"{name} took {cpu:.0f} s of CPU time"
    return result.stdout


def test_robust_weights_loop_raises_the_minority_groups_accuracy():
    out = run_example("robust_weights_loop.py", "--steps", "150")
    assert "effective sample size" in out
    plain, robust = out.splitlines()[-2:]
    assert plain.startswith("plain") and robust.startswith("chi2"), out
    # The last column: the minority group's held-out accuracy.
    assert float(robust.split()[-1]) > float(plain.split()[-1]) + 0.05, out


def test_dro_rebel_trainer_example(tmp_path):
    out = run_example("dro_rebel_trainer.py", "--output-dir", str(tmp_path))
    assert re.search(r"step\s+reward\s+robust loss\s+ess\s+max weight", out), out
    steps = [line.split()[0] for line in out.splitlines()[1:]]
    assert steps == ["1", "2", "3"], out


def test_robust_dpo_trainer_example(tmp_path):
    out = run_example("robust_dpo_trainer.py", "--output-dir", str(tmp_path))
    assert re.search(r"^step 4: robust loss [\d.]+ \(mean [\d.]+\), ess [\d.]+", out, re.MULTILINE), out
    assert re.search(r"^step 4: eval/loss [\d.]+, .*eval/worst_group_loss [\d.]+", out, re.MULTILINE), out


def test_trl_dpo_example(tmp_path):
    out = run_example("trl_dpo.py", "--output-dir", str(tmp_path))
    assert re.search(r"^step 4: loss [\d.]+, robust/value [\d.]+, robust/ess [\d.]+", out, re.MULTILINE), out


def test_trl_online_dro_example(tmp_path):
    out = run_example("trl_online_dro.py", "--output-dir", str(tmp_path))
    assert "robust/ess" in out, out

"""``report_to``: the lines of ``log.jsonl`` sent to TensorBoard or Weights & Biases as well.

Each backend comes from its own package, imported only when asked for: TensorBoard through
``torch.utils.tensorboard`` (the ``tensorboard`` package), Weights & Biases through ``wandb``.
A record's numbers are logged at its ``step`` under the names ``log.jsonl`` gives them
(``loss``, ``robust/ess``, ``eval/reward``...); its other entries (an event's message) stay in
``log.jsonl`` only. The JSONL log and the progress bar are unchanged.
"""

from __future__ import annotations

import importlib
import importlib.util
import numbers
from pathlib import Path
from typing import Any, Dict, List, Sequence

__all__ = ["BACKENDS", "Reporter", "installed_backends", "check_installed", "open_reporters"]

BACKENDS = ("tensorboard", "wandb")
"""The backends ``report_to`` can name."""
# Each backend's module, and the package that provides it, as pip names it.
_MODULES = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb"}
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


class Reporter:
    """One backend: ``log(record)`` for each line of the log, ``close()`` at the end of a run."""

    def log(self, record: Dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class TensorBoardReporter(Reporter):
    """Scalars in TensorBoard event files under ``log_dir``."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, record: Dict[str, Any]) -> None:
        step = int(record["step"])
        for name, value in _numbers(record).items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbReporter(Reporter):
    """A Weights & Biases run, with the config as its ``config``."""

    def __init__(self, output_dir: Path, config: Dict[str, Any]):
        import wandb

        output_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(dir=str(output_dir), config=config)

    def log(self, record: Dict[str, Any]) -> None:
        self.run.log(_numbers(record), step=int(record["step"]))

    def close(self) -> None:
        self.run.finish()


def installed_backends() -> List[str]:
    """The backends whose package is installed (``report_to="all"``)."""
    return [name for name, package in _PACKAGES.items() if importlib.util.find_spec(package) is not None]


def check_installed(backends: Sequence[str]) -> None:
    """An error naming the package of the first backend that cannot be imported."""
    for name in backends:
        try:
            importlib.import_module(_MODULES[name])
        except ImportError as error:
            package = _PACKAGES[name]
            raise ModuleNotFoundError(
                f"report_to={name!r} needs the {package} package: pip install {package}"
            ) from error


def open_reporters(backends: Sequence[str], output_dir: Path, config: Dict[str, Any]) -> List[Reporter]:
    """A reporter per backend (``"tensorboard"``: event files in ``output_dir/runs``)."""
    check_installed(backends)
    reporters: List[Reporter] = []
    for name in backends:
        if name == "tensorboard":
            reporters.append(TensorBoardReporter(output_dir / "runs"))
        else:
            reporters.append(WandbReporter(output_dir, config))
    return reporters


def _numbers(record: Dict[str, Any]) -> Dict[str, float]:
    """The record's real numbers but its step (NaN and infinities included: a skipped step's
    loss is NaN)."""
    return {
        name: float(value)
        for name, value in record.items()
        if name != "step" and isinstance(value, numbers.Real) and not isinstance(value, bool)
    }

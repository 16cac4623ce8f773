"""The training log: one JSON object per line, appended and flushed as it is written, so a
killed run leaves every line it logged and a resumed run carries on in the same file (after
dropping the lines of the steps it will take again)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Union

__all__ = ["JsonlLogger"]


class JsonlLogger:
    """Append records to ``path`` (created with its directory on first write)."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)

    def write(self, record: Dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({key: _plain(value) for key, value in record.items()}) + "\n")

    def drop_after(self, step: int) -> None:
        """Remove the records of steps after ``step`` (a resumed run takes them again)."""
        if not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if _step_of(line) <= step]
        if len(kept) == len(lines):
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, self.path)


def _step_of(line: str) -> float:
    try:
        return float(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        # A line cut short by the kill: drop it.
        return float("inf")


def _plain(value: Any) -> Any:
    # JSON has no NaN or infinity: write them as strings rather than invalid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value

"""The training log: one JSON object per line, appended and flushed as it is written, so a
killed run leaves every line it logged and a resumed run carries on in the same file."""

from __future__ import annotations

import json
import math
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


def _plain(value: Any) -> Any:
    # JSON has no NaN or infinity: write them as strings rather than invalid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value

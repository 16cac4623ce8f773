"""The methods of the real-LM pipeline check, each one configuration of the library's trainers
(``dro_rebel.torch``), all trained from the same start on the same data.

Robust REBEL and robust DPO put their ambiguity set over *mixtures of preference types*
(group DRO, ``group_column="type"``), with the radius of the primary study: the divergence
from the training mixture to the uniform one. Four methods keep the check within the demo's
time on two cores; the KL and Wasserstein forms are exercised by the tests and the primary
study.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

__all__ = ["Method", "methods", "GROUP_COLUMN"]

GROUP_COLUMN = "type"


@dataclass(frozen=True)
class Method:
    """One row of the comparison: its trainer (``"rebel"`` online, ``"dpo"`` offline pairs)
    and the robust fields of its config."""

    name: str
    trainer: str
    robust: Dict[str, Any]

    @property
    def is_robust(self) -> bool:
        return bool(self.robust)


def methods(radii: Dict[str, float]) -> List[Method]:
    """The methods, plain ones first; ``radii["chi2"]`` is the radius of the ball over type
    mixtures."""
    by_type = {"group_column": GROUP_COLUMN}
    return [
        Method("REBEL", "rebel", {}),
        Method("DPO", "dpo", {}),
        Method("chi2-REBEL", "rebel", {"ambiguity": "chi2", "radius": radii["chi2"], **by_type}),
        Method("chi2-DPO", "dpo", {"ambiguity": "chi2", "radius": radii["chi2"], **by_type}),
    ]

"""The six alignment methods the demo compares, each one configuration of the library's
trainers (``dro_rebel.torch``), all trained from the same start on the same data.

Robust REBEL and robust DPO put their ambiguity set over *mixtures of preference types*
(group DRO, ``group_column="type"``): the shift the demo guards against is a different mix
of people at deployment. Wasserstein-REBEL is the papers' first-order form, a penalty on the
gradient of each pair's loss with respect to its input embeddings (SPEC.md section 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

from dro_rebel.demo.presets import Preset

__all__ = ["Method", "methods"]

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


def methods(preset: Preset) -> List[Method]:
    """The methods, plain ones first."""
    by_type = {"group_column": GROUP_COLUMN}
    return [
        Method("REBEL", "rebel", {}),
        Method("DPO", "dpo", {}),
        Method("chi2-REBEL", "rebel", {"ambiguity": "chi2", "radius": preset.chi2_radius, **by_type}),
        Method("KL-REBEL", "rebel", {"ambiguity": "kl", "radius": preset.kl_radius, **by_type}),
        Method(
            "W-REBEL",
            "rebel",
            {"ambiguity": "wasserstein", "radius": preset.wasserstein_rho0, "gradient_penalty": "rebel"},
        ),
        Method("chi2-DPO", "dpo", {"ambiguity": "chi2", "radius": preset.chi2_radius, **by_type}),
    ]

"""Evaluation summaries of pairwise losses: overall, per group, and the worst group.

Robustness shows in the worst group (the preference type or prompt category the model
serves worst), so every evaluation reports it next to the average.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

__all__ = ["pair_metrics"]

MAX_GROUPS_LOGGED = 32
"""Above this many groups (prompts as groups) only the worst group is logged, not each."""


def pair_metrics(
    losses: torch.Tensor, margins: torch.Tensor, groups: Optional[torch.Tensor], prefix: str = "eval/"
) -> Dict[str, float]:
    """Mean loss, accuracy (margin > 0) and mean margin; with ``groups`` each group's loss
    and accuracy and the worst group's (highest loss, lowest accuracy)."""
    # One copy each to the host, rather than a device synchronisation per number.
    losses, margins = losses.detach().float().cpu(), margins.detach().float().cpu()
    correct = (margins > 0).float()
    metrics = {
        f"{prefix}loss": float(losses.mean()),
        f"{prefix}accuracy": float(correct.mean()),
        f"{prefix}margin": float(margins.mean()),
    }
    if groups is None:
        return metrics
    group_losses, group_accuracies = [], []
    labels = torch.unique(groups).tolist()
    for group in labels:
        members = groups.cpu() == group
        group_losses.append(float(losses[members].mean()))
        group_accuracies.append(float(correct[members].mean()))
        if len(labels) <= MAX_GROUPS_LOGGED:
            metrics[f"{prefix}group_{group}/loss"] = group_losses[-1]
            metrics[f"{prefix}group_{group}/accuracy"] = group_accuracies[-1]
    metrics[f"{prefix}worst_group_loss"] = max(group_losses)
    metrics[f"{prefix}worst_group_accuracy"] = min(group_accuracies)
    return metrics

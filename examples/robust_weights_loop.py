"""Worst-case weights in a plain PyTorch training loop: group DRO on a small classifier.

    python examples/robust_weights_loop.py [--radius 1.0] [--steps 300]

The data has two groups: 90% of the samples follow one rule (label = x0 > 0), 10% another
(label = x1 > 0). A linear classifier cannot fit both, and plain training (the mean loss)
serves the majority. ``RobustLoss`` with ``groups=`` trains on the worst mixture of the
groups within a chi-square ball of the training mixture instead, and the minority group's
accuracy rises at a small price in the majority's. The whole change to the loop is one line:

    loss = losses.mean()                       # plain
    loss = robust(losses, groups=groups)       # robust: detached worst-case weights times losses

Runs on a CPU in a few seconds.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from dro_rebel.torch import RobustLoss


def make_data(n: int, generator: torch.Generator):
    """Features (n, 2), labels (n,) and group labels (n,): group 1 is the 10% minority."""
    x = torch.randn(n, 2, generator=generator)
    groups = (torch.rand(n, generator=generator) < 0.1).long()
    labels = torch.where(groups == 0, x[:, 0] > 0, x[:, 1] > 0).float()
    return x, labels, groups


def train(robust: RobustLoss | None, steps: int, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        x, labels, groups = make_data(256, generator)
        # Per-sample losses: reduction="none", one loss per sample.
        losses = nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), labels, reduction="none")
        loss = losses.mean() if robust is None else robust(losses, groups=groups)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@torch.no_grad()
def group_accuracy(model: nn.Module) -> list[float]:
    x, labels, groups = make_data(20_000, torch.Generator().manual_seed(123))
    correct = ((model(x).squeeze(-1) > 0).float() == labels).float()
    return [float(correct[groups == g].mean()) for g in (0, 1)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--radius", type=float, default=1.0, help="chi-square radius of the ball over group mixtures")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)

    robust = RobustLoss("chi2", radius=args.radius)
    models = {"plain": train(None, args.steps), f"chi2, radius {args.radius}": train(robust, args.steps)}
    # robust.last holds the statistics of the last robust reduction (a RobustStats).
    stats = robust.last
    print(
        f"last robust step: V* {stats.value:.3f} against the mean loss {stats.mean:.3f}, "
        f"effective sample size {stats.ess:.1f} of {stats.n}, largest weight {stats.max_weight:.4f}"
    )
    print(f"{'training':<20} {'majority accuracy':>18} {'minority accuracy':>18}")
    for name, model in models.items():
        majority, minority = group_accuracy(model)
        print(f"{name:<20} {majority:>18.3f} {minority:>18.3f}")


if __name__ == "__main__":
    main()

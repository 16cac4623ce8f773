"""The Wasserstein ambiguity set by gradient regularisation (docs/method.md#gradient-penalty).

For a small radius rho0 the worst case over a type-2 Wasserstein ball around the empirical
batch is, to first order, the nominal loss plus a penalty on how fast each sample's loss
changes as its input moves. The input of a language-model sample is its sequence of token
embeddings, so g_i is the gradient of l_i with respect to the input embeddings of both
sequences of the pair. Two forms are in use:

- DRO-REBEL (Sahu & Wells):  mean_i l_i + rho0 * sqrt(mean_i ||g_i||^2)
- WDPO (Xu et al.):         mean_i (l_i + rho0 * ||g_i||^2)

Both are trained through, so g_i is built with ``create_graph=True`` and the optimiser's
backward is a double backward through the model.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["GRADIENT_PENALTY_FORMS", "per_sample_grad_sq_norms"]

GRADIENT_PENALTY_FORMS = ("rebel", "wdpo")


def per_sample_grad_sq_norms(losses: torch.Tensor, inputs_embeds: Sequence[torch.Tensor]) -> torch.Tensor:
    """||g_i||^2 for each sample, differentiable (``create_graph=True``).

    Args:
        losses: (n,) per-sample losses computed from ``inputs_embeds``.
        inputs_embeds: the embedding tensors the losses were computed from, each with
            ``requires_grad``; each has k*n rows (k >= 1 sequences per sample), row
            ``j * n + i`` belonging to sample i (e.g. chosen rows then rejected rows).

    Samples do not interact in a forward pass (no batch statistics), so the gradient of
    sum_i l_i with respect to sample i's rows is g_i: one backward gives all n of them.
    """
    n = losses.shape[0]
    grads = torch.autograd.grad(losses.sum(), list(inputs_embeds), create_graph=True)
    norms = losses.new_zeros(n)
    for grad in grads:
        if grad.shape[0] % n:
            raise ValueError(
                f"inputs_embeds must have a multiple of n = {n} rows (row j*n + i for sample i), got {grad.shape[0]}"
            )
        norms = norms + grad.reshape(grad.shape[0] // n, n, -1).pow(2).sum(dim=(0, 2))
    return norms

"""Sequence log-probabilities of completions under a causal language model.

The log-probability of a completion is the sum, over its tokens, of the log-probability
the model gives each token from the logits at the previous position (docs/method.md#rebel).
Padding and prompt tokens are excluded by a mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["sequence_logprobs", "completion_logprobs", "position_ids"]


def sequence_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token_t | tokens_<t) over the masked tokens of each row.

    Args:
        logits: (batch, seq, vocab) from a causal LM on ``input_ids``.
        input_ids: (batch, seq) token ids.
        completion_mask: (batch, seq), 1 on the completion's tokens, 0 on prompt and
            padding. Position 0 cannot be predicted and is ignored.

    Returns:
        (batch,) log-probabilities, in float32 or wider.
    """
    targets = input_ids[:, 1:]
    # cross_entropy never materialises the (batch, seq, vocab) log-softmax as a second copy.
    token_logps = -F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), targets, reduction="none")
    mask = completion_mask[:, 1:].to(token_logps.dtype)
    return (token_logps * mask).sum(dim=1)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over the real tokens only, so that left padding (as in
    generation) gives the same positions as ``generate`` used."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp_min(0)


def completion_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
) -> torch.Tensor:
    """Run ``model`` (a Hugging Face causal LM) and return :func:`sequence_logprobs`."""
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        use_cache=False,
    ).logits
    return sequence_logprobs(logits, input_ids, completion_mask)

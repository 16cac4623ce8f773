"""Turning preference pairs into padded tensors, and the order batches are drawn in.

A pair batch stacks the chosen sequences over the rejected ones: rows 0..n-1 are prompt +
chosen, rows n..2n-1 prompt + rejected, each followed by EOS and right-padded. The
completion mask marks the completion and its EOS, whose log-probabilities DPO and REBEL sum.
"""

from __future__ import annotations

import hashlib
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

__all__ = ["encode_pairs", "pair_rows", "batch_indices", "select_rows", "group_labels", "check_columns"]


def group_labels(values: Sequence[Any]) -> torch.Tensor:
    """A group column as integer labels. Integers are kept; strings (``group_column="prompt"``:
    DRO over prompts, docs/method.md#prompt-dro) become a stable 62-bit hash of their text, so
    that every process labels the same prompt alike and gathered labels stay comparable."""
    if values and isinstance(values[0], str):
        return torch.tensor(
            [int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "little") >> 2 for v in values],
            dtype=torch.long,
        )
    return torch.as_tensor(values, dtype=torch.long)


def encode_pairs(
    tokenizer: Any,
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    max_length: Optional[int] = None,
) -> Dict[str, torch.Tensor]:
    """Tokenise (prompt, chosen, rejected) triples into one right-padded batch of 2n rows.

    The prompt and the completion are tokenised separately so the boundary between them is
    exact. A sequence longer than ``max_length`` loses the end of its completion first, then
    the start of its prompt.

    Returns ``input_ids``, ``attention_mask`` and ``completion_mask``, each (2n, T).
    """
    if not (len(prompts) == len(chosen) == len(rejected)):
        raise ValueError("prompts, chosen and rejected must have the same length")
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer needs an eos_token and a pad_token")
    prompt_ids = [tokenizer(text)["input_ids"] for text in prompts]
    rows = []
    for completions in (chosen, rejected):
        for prompt, text in zip(prompt_ids, completions):
            completion = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            rows.append(_truncate(prompt, completion, max_length))
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    completion_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (prompt, completion) in enumerate(rows):
        end = len(prompt) + len(completion)
        input_ids[row, :end] = torch.tensor(prompt + completion)
        attention_mask[row, :end] = 1
        completion_mask[row, len(prompt) : end] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def pair_rows(batch: Dict[str, Any], rows: Sequence[int], *, trim_padding: bool = True) -> Dict[str, Any]:
    """The pairs at positions ``rows`` of a batch of n pairs (a micro-batch, a REBEL mini-batch):
    rows ``r`` and ``n + r`` of the per-sequence entries (2n rows: a pair batch's chosen then
    rejected sequences, a rollout's first then second responses), entry ``r`` of the per-pair
    ones (``groups``, ``indices``, ``prompts``). With ``trim_padding`` the columns that are
    padding in every remaining row are dropped (right-padded batches only: not a rollout, whose
    prompts are left-padded)."""
    n = batch["input_ids"].shape[0] // 2
    pair = torch.as_tensor(list(rows), dtype=torch.long)
    both = torch.cat([pair, pair + n])
    width = int(batch["attention_mask"][both].sum(dim=1).max()) if trim_padding else None
    part: Dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim == 2 and value.shape[0] == 2 * n:
            part[key] = value[both.to(value.device), :width]
        elif isinstance(value, torch.Tensor) and value.shape[:1] == (2 * n,):
            part[key] = value[both.to(value.device)]
        elif isinstance(value, torch.Tensor) and value.shape[:1] == (n,):
            part[key] = value[pair.to(value.device)]
        elif isinstance(value, list) and len(value) == 2 * n:
            part[key] = [value[int(r)] for r in both]
        elif isinstance(value, list) and len(value) == n:
            part[key] = [value[int(r)] for r in pair]
        else:
            part[key] = value
    return part


def _truncate(prompt: List[int], completion: List[int], max_length: Optional[int]):
    if max_length is None or len(prompt) + len(completion) <= max_length:
        return prompt, completion
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    # Keep at least one prompt token (the first completion token is predicted from it).
    completion = completion[: max(max_length - len(prompt), 1)]
    return prompt[len(prompt) - (max_length - len(completion)) :], completion


def batch_indices(num_rows: int, batch_size: int, step: int, seed: int) -> List[int]:
    """The dataset rows of training step ``step`` (1-based): epoch after epoch of seeded
    random permutations. A pure function of its arguments, so a resumed run draws exactly
    the batches the uninterrupted run would have drawn, with no sampler state to save."""
    if num_rows < 1:
        raise ValueError("the training dataset is empty")
    start = (step - 1) * batch_size
    indices: List[int] = []
    while len(indices) < batch_size:
        epoch, offset = divmod(start + len(indices), num_rows)
        generator = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(num_rows, generator=generator)
        take = min(batch_size - len(indices), num_rows - offset)
        indices.extend(order[offset : offset + take].tolist())
    return indices


def check_columns(
    dataset: Any, name: str, required: Sequence[str], needed_by: str, group_column: Optional[str] = None
) -> None:
    """An error naming the first of ``required`` (then ``group_column``) that ``dataset`` lacks
    and the columns it has (``name`` is the dataset's name in the message, ``needed_by`` the
    trainer's): at the trainer's construction, not at the first batch."""
    present = _column_names(dataset, name)
    for column in required:
        if column not in present:
            needs = ", ".join(repr(c) for c in required)
            raise ValueError(f"{column!r} is not a column of {name} (columns: {present}); {needed_by} needs {needs}")
    if group_column is not None and group_column not in present:
        raise ValueError(f"group_column={group_column!r} is not a column of {name} (columns: {present})")


def _column_names(dataset: Any, name: str) -> List[str]:
    """The columns of a ``datasets.Dataset``, or those every row of a list of dicts has."""
    if hasattr(dataset, "column_names"):
        return list(dataset.column_names)
    rows = [dataset[i] for i in range(len(dataset))]
    if not all(isinstance(row, Mapping) for row in rows):
        kind = type(next(row for row in rows if not isinstance(row, Mapping))).__name__
        raise TypeError(f"{name} must be a datasets.Dataset or a list of dicts (one per row), got a row of type {kind}")
    if not rows:
        return []
    return [column for column in rows[0] if all(column in row for row in rows)]


def select_rows(dataset: Any, indices: Sequence[int]) -> Dict[str, List[Any]]:
    """Rows of a ``datasets.Dataset`` or a list of dicts, as columns."""
    if hasattr(dataset, "select"):
        return dataset.select(list(indices)).to_dict()
    rows = [dataset[i] for i in indices]
    return {key: [row[key] for row in rows] for key in rows[0]}

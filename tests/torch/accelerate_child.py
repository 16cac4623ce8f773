"""Robust DPO with a group column through TRL, for the ``accelerate launch`` test.

    accelerate launch --multi_gpu --num_processes 2 accelerate_child.py OUTPUT_DIR BATCH ACCUMULATION

Trains :class:`DRODPOTrainer` (SGD, three steps, ``robust_scope="step"``) on the eight pairs of
``tiny_models`` (in four groups) with per-device batch BATCH and ACCUMULATION micro-batches per step, and writes
every solve of the robust reduction this process made (its losses, groups and weights) and the
final parameters to OUTPUT_DIR/rank<r>.pt. :func:`run` is the same run in the calling process.
"""

from __future__ import annotations

import copy
import sys
from typing import Any, Dict

import numpy as np
import torch
from datasets import Dataset
from tiny_models import PAIRS, perturbed, tiny_llama, tiny_tokenizer

import dro_rebel
from dro_rebel.integrations.trl import DRODPOConfig, DRODPOTrainer
from dro_rebel.torch import robust_loss as robust_loss_module

STEPS = 3
RADIUS = 0.2
# Four groups of two pairs: with more than two groups the weights depend on the losses, not
# only on which group is worse.
ROWS = [{**row, "group": i // 2} for i, row in enumerate(PAIRS)]


def run(output_dir: str, batch_size: int, accumulation: int) -> Dict[str, Any]:
    solves = []
    solve = dro_rebel.robust_weights

    def recording(losses, ambiguity, **kwargs):
        weights = solve(losses, ambiguity, **kwargs)
        solves.append({"losses": np.array(losses), "groups": np.array(kwargs["groups"]), "weights": np.array(weights)})
        return weights

    tokenizer = tiny_tokenizer()
    reference = tiny_llama(tokenizer)
    args = DRODPOConfig(
        output_dir=output_dir,
        beta=0.1,
        ambiguity="chi2",
        radius=RADIUS,
        group_column="group",
        robust_scope="step",
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        optim="sgd",
        learning_rate=0.5,
        max_steps=STEPS,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
    )
    trainer = DRODPOTrainer(
        model=perturbed(copy.deepcopy(reference)),
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )
    robust_loss_module.dro_rebel.robust_weights = recording
    try:
        trainer.train()
    finally:
        robust_loss_module.dro_rebel.robust_weights = solve
    return {
        "world_size": trainer.accelerator.num_processes,
        "rank": trainer.accelerator.process_index,
        "solves": solves,
        "parameters": {name: p.detach().clone() for name, p in trainer.model.named_parameters()},
    }


def main() -> None:
    output_dir, batch_size, accumulation = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    record = run(output_dir, batch_size, accumulation)
    torch.save(record, f"{output_dir}/rank{record['rank']}.pt")


if __name__ == "__main__":
    main()

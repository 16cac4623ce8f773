"""DRO-REBEL and robust GRPO with a group column through TRL, for the ``accelerate launch`` test.

    accelerate launch --multi_gpu --num_processes 2 trl_online_child.py OUTPUT_DIR

Trains :class:`DRORebelTrainer` and then :class:`DROGRPOTrainer` (``robust_scope="step"``, two
micro-batches a step) on the prompts of ``tiny_models`` in three groups, and writes every solve
of the robust reduction this process made (losses, groups, reference, weights) to
OUTPUT_DIR/rank<r>.pt.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List

import numpy as np
import torch
from datasets import Dataset
from tiny_models import PROMPTS, tiny_llama, tiny_tokenizer

import dro_rebel
from dro_rebel.integrations.trl import DROGRPOConfig, DROGRPOTrainer, DRORebelConfig, DRORebelTrainer
from dro_rebel.torch import robust_loss as robust_loss_module

STEPS = 2
RADIUS = 0.3


def reward(completions, **kwargs):
    return [float(len(set(completion))) / 4 for completion in completions]


def run(kind: str, output_dir: str, model_dir: str, tokenizer: Any) -> List[Dict[str, np.ndarray]]:
    solves = []
    solve = dro_rebel.robust_weights

    def recording(losses, ambiguity, **kwargs):
        weights = solve(losses, ambiguity, **kwargs)
        reference = kwargs.get("reference")
        solves.append(
            {
                "losses": np.array(losses),
                "groups": np.array(kwargs["groups"]),
                "reference": None if reference is None else np.array(reference),
                "weights": np.array(weights),
            }
        )
        return weights

    cls, config_cls = (DRORebelTrainer, DRORebelConfig) if kind == "rebel" else (DROGRPOTrainer, DROGRPOConfig)
    per_device = 4 if kind == "rebel" else 2  # 2 pairs, or 2 completions, a micro-batch
    args = config_cls(
        output_dir=f"{output_dir}/{kind}",
        num_generations=2,
        max_completion_length=6,
        ambiguity="chi2",
        radius=RADIUS,
        group_column="group",
        robust_scope="step",
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        max_steps=STEPS,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        seed=0,
    )
    dataset = Dataset.from_list([{"prompt": p, "group": i % 3} for i, p in enumerate(PROMPTS)])
    trainer = cls(model=model_dir, reward_funcs=reward, args=args, train_dataset=dataset, processing_class=tokenizer)
    robust_loss_module.dro_rebel.robust_weights = recording
    try:
        trainer.train()
    finally:
        robust_loss_module.dro_rebel.robust_weights = solve
    return solves


def main() -> None:
    output_dir = sys.argv[1]
    tokenizer = tiny_tokenizer()
    rank = int(os.environ["RANK"])
    # Every process builds the same model from the same seed and loads it from its own copy.
    model_dir = f"{output_dir}/model-{rank}"
    tiny_llama(tokenizer).save_pretrained(model_dir)
    record = {kind: run(kind, output_dir, model_dir, tokenizer) for kind in ("rebel", "grpo")}
    torch.save(record, f"{output_dir}/rank{rank}.pt")


if __name__ == "__main__":
    main()

"""A DRO-REBEL run in its own process, for the kill-and-resume test.

    python resume_child.py OUTPUT_DIR [--kill-at STEP] [--resume]

Trains the tiny Llama for 5 steps (checkpoints every 2), optionally killing itself with
SIGKILL in the middle of step STEP (after its sampling, before its update), and writes the
final trainable parameters to OUTPUT_DIR/final.pt.
"""

from __future__ import annotations

import argparse
import os
import signal

import torch
from tiny_models import PROMPTS, tiny_llama, tiny_tokenizer

from dro_rebel.torch import DroRebelConfig, DroRebelTrainer


def short_reward(prompts, completions):
    return [-len(text) / 10.0 for text in completions]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    tokenizer = tiny_tokenizer()
    config = DroRebelConfig(
        output_dir=args.output_dir,
        learning_rate=1e-4,
        per_device_train_batch_size=3,  # prompts are drawn across epoch boundaries too
        max_steps=5,
        save_steps=2,
        eval_steps=2,
        max_new_tokens=6,
        ambiguity="kl",
        radius=0.2,
        # The schedule's state is part of the checkpoint: a resumed run must pick it up.
        lr_scheduler_type="cosine",
        warmup_steps=0.25,
        disable_tqdm=True,
    )
    prompts = [{"prompt": prompt} for prompt in PROMPTS]
    trainer = DroRebelTrainer(tiny_llama(tokenizer), tokenizer, config, prompts, short_reward, prompts[:2])
    if args.kill_at is not None:
        take_step = trainer.train_step

        def killed_at(batch):
            if trainer.step + 1 == args.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return take_step(batch)

        trainer.train_step = killed_at
    trainer.train(resume_from_checkpoint=args.resume)
    torch.save(
        {name: p.detach() for name, p in trainer.model.named_parameters()}, os.path.join(args.output_dir, "final.pt")
    )


if __name__ == "__main__":
    main()

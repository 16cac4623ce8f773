"""DRO-REBEL (or robust GRPO) inside TRL's GRPOTrainer: a starting point.

    python examples/trl_online_dro.py                       # a few steps on CPU, a tiny model built here
    python examples/trl_online_dro.py --trainer grpo        # robust GRPO instead of DRO-REBEL
    python examples/trl_online_dro.py --model Qwen/Qwen2.5-0.5B-Instruct --max-steps 500 --output-dir runs/rebel

Without ``--model`` the policy is a two-layer Llama built from a config and its tokenizer is
trained here on the prompts, so nothing is downloaded: it shows the moving parts, not
learning. With ``--model`` (a hub name or a local path) the same script is a real run: raise
``--max-steps``, the completion length and the batch, and add ``use_vllm=True`` or a
``peft_config`` as you would for GRPOTrainer.

The reward favours completions with many distinct letters; the prompts carry a ``topic``
column, and the worst case ranges over the topics (``group_column="topic"``): the update
leans towards the topic the policy serves worst.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tiny run downloads nothing; --model lifts it

PROMPTS = [
    ("Describe the sea:", "nature"),
    ("Describe a forest:", "nature"),
    ("Name a colour:", "everyday"),
    ("Greet a friend:", "everyday"),
    ("What is two plus two?", "maths"),
    ("What is three times four?", "maths"),
    ("Write a short poem:", "writing"),
    ("Tell a very short story:", "writing"),
]


def distinct_letters(completions, **kwargs):
    """One reward per completion (TRL's reward-function signature)."""
    return [len({c for c in completion.lower() if c.isalpha()}) / 10 for completion in completions]


def tiny_policy(output_dir: str):
    """A two-layer Llama and a byte-level BPE tokenizer trained on the prompts, saved to disk:
    TRL loads the reference model (``kl_coef`` > 0) from the policy's path."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([prompt for prompt, _ in PROMPTS] * 10, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    path = os.path.join(output_dir, "tiny-policy")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a hub name or local path; default: a tiny model built here")
    parser.add_argument("--trainer", choices=["rebel", "grpo"], default="rebel")
    parser.add_argument("--output-dir", default="runs/trl-online-dro")
    parser.add_argument("--max-steps", type=int, default=3)
    options = parser.parse_args()
    if options.model is not None:
        os.environ["HF_HUB_OFFLINE"] = "0"

    import torch
    from datasets import Dataset

    from dro_rebel.integrations.trl import DROGRPOConfig, DROGRPOTrainer, DRORebelConfig, DRORebelTrainer

    torch.manual_seed(0)
    os.makedirs(options.output_dir, exist_ok=True)
    if options.model is None:
        model, tokenizer = tiny_policy(options.output_dir)
        sizes = dict(per_device_train_batch_size=8, max_completion_length=8)
    else:
        model, tokenizer = options.model, None  # TRL loads both
        sizes = dict(per_device_train_batch_size=16, max_completion_length=128)
    dataset = Dataset.from_list([{"prompt": prompt, "topic": topic} for prompt, topic in PROMPTS])

    common = dict(
        output_dir=options.output_dir,
        max_steps=options.max_steps,
        learning_rate=1e-5 if options.model else 1e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),
        disable_tqdm=options.model is None,
        # The worst case over the topics, one solve per optimiser step (both micro-batches).
        ambiguity="chi2",
        radius=0.5,
        group_column="topic",
        robust_scope="step",
        gradient_accumulation_steps=2,
        # Two optimiser steps per rollout (REBEL's epochs): on the second the policy has moved
        # off the sampler, and the losses show how it fits each prompt (docs/method.md).
        num_iterations=2,
        **sizes,
    )
    if options.trainer == "rebel":
        # Four completions a prompt: REBEL regresses on the best and the worst of them.
        args = DRORebelConfig(eta=1.0, num_generations=4, kl_coef=0.05, **common)
        trainer_cls = DRORebelTrainer
    else:
        args = DROGRPOConfig(num_generations=4, loss_type="dapo", **common)
        trainer_cls = DROGRPOTrainer
    trainer = trainer_cls(
        model=model, reward_funcs=distinct_letters, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.train()
    for row in trainer.state.log_history:
        if "robust/ess" in row:
            shown = ("step", "loss", "reward", "robust/value", "robust/ess", "robust/max_weight")
            print(", ".join(f"{key}={row[key]:.4g}" for key in shown if key in row))


if __name__ == "__main__":
    main()

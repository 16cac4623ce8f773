"""Robust DPO with ``RobustDPOTrainer`` over the groups of a dataset column.

    python examples/robust_dpo_trainer.py                    # a tiny model, on a CPU in seconds
    python examples/robust_dpo_trainer.py MODEL --steps 200  # a Hugging Face causal LM (name or path)

The dataset is (prompt, chosen, rejected) pairs with a ``preference`` column saying which
kind of preference each pair expresses, most of them one kind. With ``group_column`` the
worst case ranges over mixtures of the kinds (group DRO, docs/method.md#groups): a kind the
policy serves badly gets more weight, however few pairs it has. The evaluation reports each
group and the worst one. Without a model name the policy is a two-layer Llama built from a
config and a tokenizer trained on the pairs here: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from dro_rebel.torch import RobustDPOConfig, RobustDPOTrainer

PAIRS = [
    # Most pairs prefer the helpful answer...
    {"prompt": "Name a colour:", "chosen": " green", "rejected": " the number seven", "preference": "helpful"},
    {"prompt": "What is two plus two?", "chosen": " four", "rejected": " five", "preference": "helpful"},
    {"prompt": "Describe the sea:", "chosen": " blue and deep", "rejected": " boring", "preference": "helpful"},
    {"prompt": "Tell me about cats:", "chosen": " cats are curious", "rejected": " no", "preference": "helpful"},
    {"prompt": "Give advice on sleep:", "chosen": " rest eight hours", "rejected": " never", "preference": "helpful"},
    {"prompt": "Name a fruit:", "chosen": " an apple", "rejected": " a chair", "preference": "helpful"},
    # ... a few the polite one.
    {"prompt": "Greet a friend:", "chosen": " hello, my friend", "rejected": " whatever", "preference": "polite"},
    {"prompt": "Decline an invite:", "chosen": " sorry, I cannot", "rejected": " no way", "preference": "polite"},
]


def tiny_model(texts: list[str]):
    """A byte-level BPE tokenizer trained on ``texts`` and a two-layer Llama built from a config."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    special = ["<pad>", "<eos>"]
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(vocab_size=300, special_tokens=special, initial_alphabet=alphabet, show_progress=False),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="<eos>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config), tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="a Hugging Face causal LM; default: a tiny one built here")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--output-dir", default="runs/example-robust-dpo")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    if args.model is None:
        model, tokenizer = tiny_model([row["prompt"] + row["chosen"] + row["rejected"] for row in PAIRS] * 10)
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    config = RobustDPOConfig(
        output_dir=args.output_dir,
        beta=0.1,
        ambiguity="chi2",
        radius=0.5,  # the chi-square ball around the batch's mixture of groups
        group_column="preference",  # integer or string labels
        learning_rate=1e-2 if args.model is None else 5e-6,
        per_device_train_batch_size=8,
        max_steps=args.steps,
        eval_steps=args.steps,  # evaluate at the end
        save_steps=None,
        disable_tqdm=True,
    )
    # A list of dicts or a datasets.Dataset; the reference is a frozen copy of the model as passed.
    trainer = RobustDPOTrainer(model, tokenizer, config, PAIRS, eval_dataset=PAIRS)
    trainer.train()

    # Every step's metrics are in <output_dir>/log.jsonl (report_to adds TensorBoard or W&B).
    for line in (Path(args.output_dir) / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "robust/value" in record:
            print(
                f"step {record['step']}: robust loss {record['robust/value']:.4f} (mean {record['robust/mean']:.4f}), "
                f"ess {record['robust/ess']:.2f}, largest weight {record['robust/max_weight']:.3f}"
            )
        else:
            # The evaluation: overall, each group (eval/group_<label>/...) and the worst group.
            shown = ("eval/loss", "eval/accuracy", "eval/worst_group_loss", "eval/worst_group_accuracy")
            print(f"step {record['step']}: " + ", ".join(f"{key} {record[key]:.3f}" for key in shown))


if __name__ == "__main__":
    main()

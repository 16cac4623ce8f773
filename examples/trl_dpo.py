"""Robust DPO through TRL: ``DRODPOTrainer``, TRL's ``DPOTrainer`` with the worst case.

    python examples/trl_dpo.py                    # a tiny model, on a CPU in seconds
    python examples/trl_dpo.py MODEL --steps 200  # a Hugging Face causal LM (name or path)

``DRODPOConfig`` is TRL's ``DPOConfig`` plus the ambiguity set (``ambiguity``, ``radius``...)
and ``group_column``; everything else is TRL's (its data pipeline, its logging, accelerate).
The trainer logs TRL's metrics plus ``robust/value``, ``robust/ess`` and
``robust/max_weight``. Without a model name the policy is a two-layer Llama built from a
config and a tokenizer trained on the pairs here: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import copy

import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from dro_rebel.integrations.trl import DRODPOConfig, DRODPOTrainer

PAIRS = [
    {"prompt": "Name a colour:", "chosen": " green", "rejected": " the number seven", "preference": 0},
    {"prompt": "What is two plus two?", "chosen": " four", "rejected": " five", "preference": 0},
    {"prompt": "Describe the sea:", "chosen": " blue and deep", "rejected": " boring", "preference": 0},
    {"prompt": "Tell me about cats:", "chosen": " cats are curious", "rejected": " no", "preference": 0},
    {"prompt": "Give advice on sleep:", "chosen": " rest eight hours", "rejected": " never", "preference": 0},
    {"prompt": "Name a fruit:", "chosen": " an apple", "rejected": " a chair", "preference": 0},
    {"prompt": "Greet a friend:", "chosen": " hello, my friend", "rejected": " whatever", "preference": 1},
    {"prompt": "Decline an invite:", "chosen": " sorry, I cannot", "rejected": " no way", "preference": 1},
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
    parser.add_argument("--output-dir", default="runs/example-trl-dpo")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    if args.model is None:
        model, tokenizer = tiny_model([row["prompt"] + row["chosen"] + row["rejected"] for row in PAIRS] * 10)
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    training_args = DRODPOConfig(
        output_dir=args.output_dir,
        beta=0.1,
        ambiguity="chi2",
        radius=0.5,  # 0 (or the default ambiguity="none"): TRL's own DPO loss
        group_column="preference",  # the worst case over mixtures of the preference kinds
        learning_rate=1e-2 if args.model is None else 5e-6,
        per_device_train_batch_size=8,
        max_steps=args.steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        # TRL's configs train in bf16 by default, which transformers refuses on a machine
        # without a GPU unless use_cpu=True: with it, training runs on the CPU.
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = DRODPOTrainer(
        model=model,
        # TRL loads the reference from the model's name; a model built here has none: a frozen copy.
        ref_model=copy.deepcopy(model) if args.model is None else None,
        args=training_args,
        train_dataset=Dataset.from_list(PAIRS),
        processing_class=tokenizer,
    )
    trainer.train()

    for record in trainer.state.log_history:
        if "robust/value" in record:
            print(
                f"step {record['step']}: loss {record['loss']:.4f}, robust/value {record['robust/value']:.4f}, "
                f"robust/ess {record['robust/ess']:.2f}, robust/max_weight {record['robust/max_weight']:.3f}, "
                f"rewards/accuracies {record['rewards/accuracies']:.2f}"
            )


if __name__ == "__main__":
    main()

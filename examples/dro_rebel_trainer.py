"""Online DRO-REBEL with ``DroRebelTrainer`` and a reward function.

    python examples/dro_rebel_trainer.py                    # a tiny model, on a CPU in seconds
    python examples/dro_rebel_trainer.py MODEL --steps 100  # a Hugging Face causal LM (name or path)

Each step samples two completions per prompt from the policy, scores them with the reward
function, and regresses the policy's log-ratio difference on the reward difference (REBEL),
the per-prompt losses reduced by the worst case over a chi-square ball (docs/method.md).
Without a model name the policy is a two-layer Llama built from a config and a tokenizer
trained on the prompts here: nothing is downloaded, and what it writes is noise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from dro_rebel.torch import DroRebelConfig, DroRebelTrainer

PROMPTS = [
    {"prompt": "Describe the sea in a few words:", "topic": "nature"},
    {"prompt": "Name a colour:", "topic": "nature"},
    {"prompt": "Say something kind to a friend:", "topic": "people"},
    {"prompt": "Greet a neighbour:", "topic": "people"},
    {"prompt": "Give one tip for sleeping well:", "topic": "advice"},
    {"prompt": "Suggest a healthy breakfast:", "topic": "advice"},
    {"prompt": "Write a very short poem about the moon:", "topic": "nature"},
    {"prompt": "Thank a teacher:", "topic": "people"},
]


def reward_fn(prompts: list[str], completions: list[str]) -> list[float]:
    """One reward per (prompt, completion) pair, in order: any Python callable of this
    signature (a reward model, a verifier, a heuristic). This one prefers short answers;
    REBEL regresses on reward differences, so a scale of about one keeps it tame."""
    return [-len(completion) / 20.0 for completion in completions]


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
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--output-dir", default="runs/example-dro-rebel")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    if args.model is None:
        model, tokenizer = tiny_model([row["prompt"] for row in PROMPTS] * 10)
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    config = DroRebelConfig(
        output_dir=args.output_dir,
        ambiguity="chi2",
        radius=0.5,  # the chi-square ball around the batch's prompts (radius 0: plain REBEL)
        group_column="topic",  # ... over mixtures of the topics instead of single prompts
        eta=1.0,
        learning_rate=1e-4,
        per_device_train_batch_size=8,
        rollout_epochs=2,
        max_new_tokens=8,
        max_steps=args.steps,
        save_steps=None,
        disable_tqdm=True,
    )
    trainer = DroRebelTrainer(model, tokenizer, config, PROMPTS, reward_fn)
    trainer.train()

    # Every step's metrics are in <output_dir>/log.jsonl (report_to adds TensorBoard or W&B).
    print(f"{'step':>4} {'reward':>8} {'robust loss':>12} {'ess':>6} {'max weight':>11}")
    for line in (Path(args.output_dir) / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        print(
            f"{record['step']:>4} {record['reward']:>8.3f} {record['robust/value']:>12.4f} "
            f"{record['robust/ess']:>6.2f} {record['robust/max_weight']:>11.3f}"
        )


if __name__ == "__main__":
    main()

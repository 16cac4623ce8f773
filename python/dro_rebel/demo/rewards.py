"""Several reward objectives per (prompt, response), like a multi-objective reward model.

Each objective is a cheap, offline scorer with a permissive licence:

============== ===================================================== ============ =========
objective      scorer                                                range        licence
============== ===================================================== ============ =========
sentiment      VADER compound score (``vaderSentiment``)               [-1, 1]      MIT
subjectivity   pattern's adjective lexicon via ``textblob``            [0, 1]       PDDL/MIT
relevance      cosine of all-MiniLM-L6-v2 embeddings                   [-1, 1]      Apache/MIT
harmlessness   1 - P(profane) from ``alt-profanity-check``             [0, 1]       MIT
length         words / ``length_scale``, capped at 1                   [0, 1]
============== ===================================================== ============ =========

A preference type (see ``preferences.py``) is a weighting of these columns.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dro_rebel.demo.embeddings import Encoder

__all__ = ["OBJECTIVES", "Objectives"]

OBJECTIVES = ("sentiment", "subjectivity", "relevance", "harmlessness", "length")


class Objectives:
    """Scores responses on every objective: ``objectives(prompts, responses)`` returns an
    array of shape (n, len(OBJECTIVES))."""

    def __init__(self, encoder: Encoder, length_scale: float = 20.0) -> None:
        # profanity_check loads its scikit-learn model at import time.
        from profanity_check import predict_prob
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._encoder = encoder
        self._vader = SentimentIntensityAnalyzer()
        self._profanity = predict_prob
        self._length_scale = length_scale

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        from textblob import TextBlob

        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        responses = list(responses)
        n = len(responses)
        scores = np.zeros((n, len(OBJECTIVES)))
        if n == 0:
            return scores
        scores[:, 0] = [self._vader.polarity_scores(r)["compound"] for r in responses]
        scores[:, 1] = [TextBlob(r).sentiment.subjectivity for r in responses]
        prompt_vectors = self._encoder.encode(list(prompts))
        # An empty response has no meaning to embed; it is unrelated to any prompt.
        response_vectors = self._encoder.encode([r if r.strip() else "." for r in responses])
        scores[:, 2] = np.einsum("ij,ij->i", prompt_vectors, response_vectors)
        scores[:, 2][[not r.strip() for r in responses]] = 0.0
        scores[:, 3] = 1.0 - np.asarray(self._profanity(responses), dtype=float)
        scores[:, 4] = np.minimum(np.array([len(r.split()) for r in responses], dtype=float) / self._length_scale, 1.0)
        return scores

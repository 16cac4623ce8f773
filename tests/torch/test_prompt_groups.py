"""Mandal et al.'s DRO over prompts in the library's DPO and reward trainers: with several
pairs per prompt and ``group_column="prompt"``, the robust loss is sum_i q_i l_i with q the
worst case over mixtures of the batch's prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import PAIRS, tiny_llama, tiny_reward_model

from dro_rebel import worst_case
from dro_rebel.torch import RobustDPOConfig, RobustDPOTrainer, RobustRewardConfig, RobustRewardTrainer
from dro_rebel.torch.data import group_labels

# Three pairs for each of four prompts: the prompt, not the pair, is the unit of the set.
PROMPT_PAIRS = [
    {"prompt": row["prompt"], "chosen": row["chosen"] + suffix, "rejected": row["rejected"]}
    for row in PAIRS[:4]
    for suffix in ("", " indeed", " truly")
]


@pytest.mark.parametrize("trainer_class, config_class, model", [
    (RobustDPOTrainer, RobustDPOConfig, tiny_llama),
    (RobustRewardTrainer, RobustRewardConfig, tiny_reward_model),
])  # fmt: skip
def test_prompt_groups_make_the_worst_case_range_over_prompts(tokenizer, tmp_path, trainer_class, config_class, model):
    config = config_class(
        output_dir=str(tmp_path),
        per_device_train_batch_size=12,
        max_steps=1,
        disable_tqdm=True,
        ambiguity="chi2",
        radius=0.4,
        group_column="prompt",
    )
    trainer = trainer_class(model(tokenizer), tokenizer, config, PROMPT_PAIRS)
    batch = trainer.next_batch(1)
    prompts = [PROMPT_PAIRS[i]["prompt"] for i in batch["indices"]]
    labels = batch["groups"].numpy()
    # One label per prompt, the same for each of its pairs.
    assert len(set(labels.tolist())) == len(set(prompts)) == 4
    assert all((labels[i] == labels[j]) == (prompts[i] == prompts[j]) for i in range(12) for j in range(12))
    # One step first: at the start DPO's policy is its reference and every loss is log 2.
    trainer.train_step(batch)
    losses = trainer.compute_losses(batch)[0]
    robust = trainer.robust_loss(losses, groups=batch["groups"])
    expected = worst_case(losses.detach().double().numpy(), "chi2", radius=0.4, groups=labels)
    assert robust.item() == pytest.approx(expected.value, rel=1e-6)
    # The weights are shared within a prompt in proportion to its pairs (here equally).
    weights = np.asarray(expected.weights)
    for label in set(labels.tolist()):
        assert np.allclose(weights[labels == label], weights[labels == label][0])
    assert robust.item() > losses.mean().item()


def test_string_labels_are_stable_and_integers_are_kept():
    first = group_labels(["a", "b", "a"])
    assert first[0] == first[2] != first[1] and bool((first >= 0).all())
    assert torch.equal(group_labels(["a", "b", "a"]), first)
    assert group_labels([3, 1]).tolist() == [3, 1]

"""``DroRebelTrainer``: online (DRO-)REBEL.

Usage::

    from dro_rebel.torch import DroRebelConfig, DroRebelTrainer

    def reward_fn(prompts: list[str], completions: list[str]) -> list[float]:
        return [float(len(c.split())) for c in completions]

    config = DroRebelConfig(output_dir="runs/rebel", eta=1.0, ambiguity="chi2", radius=0.1,
                            max_new_tokens=32, max_steps=100)
    trainer = DroRebelTrainer(model, tokenizer, config, prompts_dataset, reward_fn)
    trainer.train()

Each iteration takes ``per_device_train_batch_size`` prompts (column ``prompt``), samples
``num_generations`` responses per prompt from the current policy pi_t, scores them with
``reward_fn`` (any callable from the prompts and the completion texts to one number each),
keeps one pair per prompt (with ``kl_coef`` and ``whiten_rewards``, REBEL's reward shaping:
docs/method.md#rebel-as-practised) and regresses on the pairs:
``rollout_epochs`` passes over the rollout in ``num_mini_batches`` shuffled mini-batches, one
optimiser step on the robust REBEL regression loss each, the worst-case weights solved anew on
every mini-batch's current losses (docs/method.md#rebel-epochs). ``ambiguity="none"`` (the
default) or ``radius=0`` is REBEL. With ``gradient_accumulation_steps`` a rollout has that many times
``per_device_train_batch_size`` prompts on each process and each mini-batch is forwarded in as
many micro-batches; with ``robust_scope="step"`` its worst case is still over the whole
mini-batch (docs/method.md#accumulation).
The log-ratios are against pi_t, whose log-probs are kept from sampling time
(``log_ratio_reference="sampler"``), or against the frozen initial model (``"initial"``).

:meth:`DroRebelTrainer.rollout` and :meth:`~dro_rebel.torch.base_trainer.Trainer.train_step`
are public: a caller can sample once and regress on the same rollout several times.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from dro_rebel.torch.base_trainer import LossOutput, Trainer
from dro_rebel.torch.config import DroRebelConfig
from dro_rebel.torch.data import group_labels, pair_rows, select_rows
from dro_rebel.torch.eval_metrics import MAX_GROUPS_LOGGED
from dro_rebel.torch.logprobs import completion_logprobs
from dro_rebel.torch.losses import rebel_loss
from dro_rebel.torch.rebel_pairs import identical_pairs, kl_penalised_rewards, pick_pairs, whitened_rewards

__all__ = ["DroRebelTrainer", "RewardFn"]

RewardFn = Callable[[List[str], List[str]], Sequence[float]]
"""``reward_fn(prompts, completions)``: one reward per (prompt, completion) pair."""


class DroRebelTrainer(Trainer):
    """Online DRO-REBEL; see the module docstring."""

    columns = ("prompt",)
    config: DroRebelConfig

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        config: DroRebelConfig,
        train_dataset: Any,
        reward_fn: RewardFn,
        eval_dataset: Any = None,
        ref_model: Optional[torch.nn.Module] = None,
    ):
        # The start policy: the log-ratios' reference, or the KL penalty's.
        self.needs_reference = config.log_ratio_reference == "initial" or config.kl_coef > 0
        self.reward_fn = reward_fn
        super().__init__(model, tokenizer, config, train_dataset, eval_dataset, ref_model)

    def optimise(self, batch: Dict[str, Any]) -> Dict[str, float]:
        """``rollout_epochs`` epochs over the rollout, in ``num_mini_batches`` shuffled
        mini-batches; returns the last update's metrics, with the first epoch's and the last
        epoch's mean robust loss (how far the epochs moved the regression)."""
        config = self.config
        n = len(batch["prompts"])
        size = n // config.num_mini_batches
        # Shuffled from the run's seed and the step, so a resumed run takes the same order.
        order = np.random.default_rng([config.seed, self.step])
        epoch_losses: List[float] = []
        metrics: Dict[str, float] = {}
        for _ in range(config.rollout_epochs):
            if config.num_mini_batches == 1:
                mini_batches = [batch]
            else:
                permutation = order.permutation(n)
                mini_batches = [self.select_samples(batch, permutation[i : i + size]) for i in range(0, n, size)]
            losses = []
            for mini_batch in mini_batches:
                metrics = self.train_step(mini_batch)
                losses.append(metrics["loss"])
            epoch_losses.append(float(np.mean(losses)))
        return {**metrics, "loss/first_epoch": epoch_losses[0], "loss/last_epoch": epoch_losses[-1]}

    def num_samples(self, batch: Dict[str, Any]) -> int:
        return len(batch["prompts"])

    def select_samples(self, batch: Dict[str, Any], rows: Sequence[int]) -> Dict[str, Any]:
        # A rollout's prompts are left-padded: its columns cannot be trimmed from the right.
        return pair_rows(batch, rows, trim_padding=False)

    def next_batch(self, step: int) -> Dict[str, Any]:
        indices = self.step_indices(step)
        rows = select_rows(self.train_dataset, indices)
        groups = rows[self.config.group_column] if self.config.group_column is not None else None
        return self.rollout(rows["prompt"], groups=groups, indices=indices)

    @torch.no_grad()
    def sample(self, prompts: List[str], num_samples: int) -> Dict[str, Any]:
        """``num_samples`` responses per prompt from the current policy.

        Returns ``input_ids``, ``attention_mask`` and ``completion_mask`` (prompt left-padded,
        completion up to and including its first EOS), sample-major: rows ``k*n .. k*n+n-1``
        hold the k-th response to each of the n prompts; and the ``completions`` texts.
        """
        tokenizer, config = self.tokenizer, self.config
        self.model.eval()
        prompt = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
        prompt_ids, prompt_mask = prompt["input_ids"], prompt["attention_mask"]
        if config.max_length is not None:
            # Keep the end of long prompts (left padding: the first columns go first).
            keep = max(config.max_length - config.max_new_tokens, 1)
            prompt_ids, prompt_mask = prompt_ids[:, -keep:], prompt_mask[:, -keep:]
        output = self.model.generate(
            input_ids=prompt_ids.to(self.device),
            attention_mask=prompt_mask.to(self.device),
            do_sample=True,
            temperature=config.temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=config.max_new_tokens,
            num_return_sequences=num_samples,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        n, width = len(prompts), prompt_ids.shape[1]
        # generate() returns prompt-major rows (p0s0, p0s1, p1s0, ...): make them sample-major.
        output = output.view(n, num_samples, -1).transpose(0, 1).reshape(n * num_samples, -1)
        completion = output[:, width:]
        is_eos = completion == tokenizer.eos_token_id
        # Keep every token up to and including the first EOS.
        completion_part = (is_eos.long().cumsum(dim=1) - is_eos.long()) == 0
        prompt_mask = prompt_mask.to(self.device).repeat(num_samples, 1)
        attention_mask = torch.cat([prompt_mask, completion_part.long()], dim=1)
        completion_mask = torch.cat([torch.zeros_like(prompt_mask), completion_part.long()], dim=1)
        texts = [
            tokenizer.decode(tokens[keep], skip_special_tokens=True)
            for tokens, keep in zip(completion, completion_part)
        ]
        return {
            "input_ids": output,
            "attention_mask": attention_mask,
            "completion_mask": completion_mask,
            "completions": texts,
        }

    @torch.no_grad()
    def rollout(
        self, prompts: List[str], groups: Optional[Sequence[int]] = None, indices: Optional[List[int]] = None
    ) -> Dict[str, Any]:
        """Sample ``num_generations`` responses per prompt, score them, shape the rewards and
        keep one pair per prompt (docs/method.md#rebel-as-practised): the rewards penalised
        by ``kl_coef`` times the log-ratio of pi_t to the start policy, whitened over the global
        batch (``whiten_rewards``), then the pair: the two responses with G = 2, the best and
        the worst with more. Records the log-probs the log-ratios are taken against (pi_t's at
        sampling time, or the initial model's), in the precision of the training forward
        (``bf16``/``fp16``), so that the log-ratios start at 0."""
        config = self.config
        n, generations = len(prompts), config.num_generations
        with self.autocast():
            sampled = self.sample(prompts, num_samples=generations)
        sequences = {key: sampled[key] for key in ("input_ids", "attention_mask", "completion_mask")}
        raw = self.reward_fn(list(prompts) * generations, sampled["completions"])
        raw = torch.as_tensor(raw, dtype=torch.float32, device=self.device)
        if len(raw) != generations * n:
            raise ValueError(f"reward_fn returned {len(raw)} rewards for {generations * n} completions")
        rewards = raw
        if config.kl_coef > 0:
            with self.autocast():
                policy_logps = completion_logprobs(self.model, *sequences.values())
                with self.reference() as reference:
                    reference_logps = completion_logprobs(reference, *sequences.values())
            rewards = kl_penalised_rewards(raw, policy_logps, reference_logps, config.kl_coef)
        if config.whiten_rewards:
            rewards = whitened_rewards(rewards)
        first, second = pick_pairs(rewards, generations)
        prompt_index = torch.arange(n, device=first.device)
        rows = torch.cat([first * n + prompt_index, second * n + prompt_index])
        batch: Dict[str, Any] = {key: value[rows] for key, value in sequences.items()}
        batch["completions"] = [sampled["completions"][row] for row in rows.tolist()]
        if config.kl_coef > 0:
            base_logps = policy_logps if config.log_ratio_reference == "sampler" else reference_logps
            batch["base_logps"] = base_logps[rows]
            batch["kl"] = (policy_logps - reference_logps).view(generations, n).mean(dim=0)
        else:
            with self.autocast():
                args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
                if config.log_ratio_reference == "sampler":
                    batch["base_logps"] = completion_logprobs(self.model, *args)
                else:
                    with self.reference() as reference:
                        batch["base_logps"] = completion_logprobs(reference, *args)
        batch["rewards"] = rewards[rows].to(torch.float32)
        batch["sampled_rewards"] = raw.view(generations, n).mean(dim=0)
        batch["identical"] = identical_pairs(batch["input_ids"], batch["completion_mask"])
        batch["prompts"] = list(prompts)
        batch["indices"] = indices
        if groups is not None:
            batch["groups"] = group_labels(list(groups))
        return batch

    def compute_losses(self, batch: Dict[str, Any]) -> LossOutput:
        with self.embeddings_captured() as embeds:
            logps = completion_logprobs(
                self.model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
            )
        first, second = logps.chunk(2)
        base_first, base_second = batch["base_logps"].chunk(2)
        rewards, other_rewards = batch["rewards"].chunk(2)
        losses = rebel_loss(first, second, base_first, base_second, rewards, other_rewards, self.config.eta)
        metrics = {
            "reward": batch["sampled_rewards"].mean(),
            "rebel/identical_pairs": batch["identical"].float().mean(),
        }
        if "kl" in batch:
            metrics["rebel/kl"] = batch["kl"].mean()
        return losses, embeds, metrics

    @torch.no_grad()
    def evaluate(self) -> Dict[str, float]:
        """Mean reward of one sampled response per ``eval_dataset`` prompt, per group and for
        the worst group too. Sampling is seeded and leaves the training RNG untouched."""
        rows = select_rows(self.eval_dataset, range(len(self.eval_dataset)))
        devices = [self.device] if self.device.type == "cuda" else []
        rewards: List[float] = []
        size = self.config.per_device_eval_batch_size
        with torch.random.fork_rng(devices=devices), self.autocast():
            torch.manual_seed(self.config.seed)
            for start in range(0, len(rows["prompt"]), size):
                prompts = rows["prompt"][start : start + size]
                completions = self.sample(prompts, num_samples=1)["completions"]
                rewards.extend(float(r) for r in self.reward_fn(prompts, completions))
        values = torch.tensor(rewards)
        metrics = {"eval/reward": float(values.mean())}
        if self.config.group_column is not None:
            groups = group_labels(rows[self.config.group_column])
            means = {int(g): float(values[groups == g].mean()) for g in torch.unique(groups)}
            if len(means) <= MAX_GROUPS_LOGGED:
                metrics.update({f"eval/group_{g}/reward": mean for g, mean in means.items()})
            metrics["eval/worst_group_reward"] = min(means.values())
        return metrics

"""Two CPU processes on the gloo backend solve the global problem, each keeps its slice
(docs/method.md#data-parallelism), the online adversary's group weights are the same on every
rank, REBEL's rewards are whitened over the global batch, and a trainer on two ranks takes the
same steps as on one with the whole batch, with gradient accumulation and with the online
adversary too (docs/method.md#accumulation)."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_models import PAIRS, tiny_llama, tiny_tokenizer

from dro_rebel import worst_case
from dro_rebel.torch import OnlineGroupAdversary, RobustDPOConfig, RobustDPOTrainer, RobustLoss
from dro_rebel.torch.rebel_pairs import whitened_rewards

LOSSES = torch.tensor([0.3, 2.0, 1.1, 0.7, 3.5, 0.2, 1.9, 0.4], dtype=torch.float64)
GROUPS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
SHARDS = [slice(0, 3), slice(3, 8)]  # unequal on purpose: the gather pads
INPUTS = torch.linspace(-1.0, 1.0, 8 * 3, dtype=torch.float64).reshape(8, 3)
RHO0 = 0.1
ONLINE_STEP = 0.5
ONLINE_STEPS = [(1.0, GROUPS), (2.0, torch.tensor([0, 1, 0, 0, 1, 0, 0, 1])), (0.5, GROUPS)]
ONLINE_DPO = {"radius": None, "group_column": "group", "adversary": "online", "adversary_step_size": 5.0}


def _penalised_losses(theta: torch.Tensor, rows: slice):
    """Per-sample losses of inputs ("embeddings") theta * a_i, as in a model."""
    embeds = theta * INPUTS[rows]
    return (embeds.sin() * torch.arange(1.0, 4.0, dtype=torch.float64)).sum(dim=1) ** 2, embeds


def _rank(rank: int, port: int, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        shard = SHARDS[rank]
        out = {}
        for name, kwargs in (("chi2", {}), ("groups", {"groups": GROUPS[shard]})):
            losses = LOSSES[shard].clone().requires_grad_()
            robust = RobustLoss("chi2", radius=0.3)
            value = robust(losses, **kwargs)
            value.backward()
            out[name] = (value.detach(), losses.grad, robust.last.value)
        for form in ("rebel", "wdpo"):
            theta = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
            losses, embeds = _penalised_losses(theta, shard)
            robust = RobustLoss("wasserstein", radius=RHO0, gradient_penalty=form)
            value = robust(losses, inputs_embeds=[embeds])
            value.backward()
            out[form] = (value.detach(), theta.grad, robust.last.value)
        trainer = _dpo_trainer(f"{results}/dpo", per_device_train_batch_size=4)
        trainer.train()
        out["dpo"] = {name: p.detach() for name, p in trainer.model.named_parameters()}
        # Two micro-batches of 2 pairs on each rank, one worst case over the step's 8 pairs.
        trainer = _dpo_trainer(f"{results}/accumulated", per_device_train_batch_size=2, gradient_accumulation_steps=2)
        trainer.train()
        out["accumulated"] = {name: p.detach() for name, p in trainer.model.named_parameters()}
        out["whitened"] = whitened_rewards(LOSSES[shard])
        # The online adversary over three steps, one group absent from the second.
        robust = RobustLoss(adversary="online", adversary_step_size=ONLINE_STEP)
        out["online"] = []
        for scale, groups in ONLINE_STEPS:
            losses = (scale * LOSSES[shard]).requires_grad_()
            robust(losses, groups=groups[shard]).backward()
            out["online"].append((losses.grad, dict(robust.adversary.log_weights)))
        trainer = _dpo_trainer(f"{results}/online", per_device_train_batch_size=4, **ONLINE_DPO)
        trainer.train()
        out["dpo_online"] = {name: p.detach() for name, p in trainer.model.named_parameters()}
        out["dpo_online_state"] = trainer.robust_loss.adversary.state_dict()
        torch.save(out, f"{results}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _dpo_trainer(output_dir: str, per_device_train_batch_size: int, **fields) -> RobustDPOTrainer:
    tokenizer = tiny_tokenizer()
    fields = {"max_steps": 2, "learning_rate": 1e-2, "ambiguity": "chi2", "radius": 0.3, **fields}
    config = RobustDPOConfig(
        output_dir=output_dir, per_device_train_batch_size=per_device_train_batch_size, **fields, disable_tqdm=True
    )
    return RobustDPOTrainer(tiny_llama(tokenizer), tokenizer, config, PAIRS)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ranks_of(ranks, name):
    return [rank[name] for rank in ranks]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    results = tmp_path_factory.mktemp("ranks")
    mp.spawn(_rank, args=(_free_port(), str(results)), nprocs=2, join=True)
    return [torch.load(results / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("name", ["chi2", "groups"])
def test_every_rank_keeps_its_slice_of_the_global_weights(ranks, name):
    kwargs = {"groups": GROUPS.numpy()} if name == "groups" else {}
    solution = worst_case(LOSSES.numpy(), "chi2", radius=0.3, **kwargs)
    q = torch.from_numpy(solution.weights)
    for rank, (_value, grad, global_value) in enumerate(ranks_of(ranks, name)):
        # The DDP convention: world_size * q_local, so the mean over ranks is the global gradient.
        torch.testing.assert_close(grad, 2 * q[SHARDS[rank]])
        assert global_value == pytest.approx(solution.value)
    mean_value = sum(value for value, _, _ in ranks_of(ranks, name)) / 2
    assert mean_value.item() == pytest.approx(solution.value)


@pytest.mark.parametrize("form", ["rebel", "wdpo"])
def test_gradient_penalty_is_over_the_global_batch(ranks, form):
    theta = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    losses, embeds = _penalised_losses(theta, slice(0, 8))
    expected = RobustLoss("wasserstein", radius=RHO0, gradient_penalty=form)(losses, inputs_embeds=[embeds])
    expected.backward()
    per_rank = ranks_of(ranks, form)
    mean_value = sum(value for value, _, _ in per_rank) / 2
    mean_grad = sum(grad for _, grad, _ in per_rank) / 2
    assert mean_value.item() == pytest.approx(expected.item())
    assert mean_grad.item() == pytest.approx(theta.grad.item())
    assert per_rank[0][2] == pytest.approx(expected.item())


def test_rewards_are_whitened_over_the_global_batch(ranks):
    whole = whitened_rewards(LOSSES)
    for rank in range(2):
        torch.testing.assert_close(ranks[rank]["whitened"], whole[SHARDS[rank]], rtol=1e-14, atol=1e-14)


def test_the_online_adversary_is_the_same_on_every_rank(ranks):
    adversary = OnlineGroupAdversary(step_size=ONLINE_STEP)
    for step, (scale, groups) in enumerate(ONLINE_STEPS):
        q = torch.from_numpy(adversary.weights((scale * LOSSES).numpy(), groups.numpy()))
        for rank in range(2):
            grad, log_weights = ranks[rank]["online"][step]
            assert log_weights == adversary.log_weights
            torch.testing.assert_close(grad, 2 * q[SHARDS[rank]])
    assert ranks[0]["dpo_online_state"] == ranks[1]["dpo_online_state"]


@pytest.mark.parametrize("run", ["dpo", "accumulated", "dpo_online"])
def test_a_trainer_on_two_ranks_matches_one_rank_with_the_whole_batch(ranks, tmp_path, run):
    single = _dpo_trainer(str(tmp_path), per_device_train_batch_size=8, **(ONLINE_DPO if run == "dpo_online" else {}))
    single.train()
    for name, parameter in single.model.named_parameters():
        torch.testing.assert_close(ranks[0][run][name], ranks[1][run][name], rtol=0, atol=0)
        # Only the order of the float sums differs (gradients averaged over ranks).
        torch.testing.assert_close(ranks[0][run][name], parameter.detach(), rtol=1e-3, atol=1e-4)

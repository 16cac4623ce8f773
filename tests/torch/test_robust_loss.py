"""RobustLoss: Danskin's gradient with detached weights, radius 0 as the plain mean, groups,
non-finite losses, and the two Wasserstein gradient-penalty forms (docs/method.md#gradient-penalty)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import PAIRS
from torch.nn.attention import SDPBackend, sdpa_kernel

from dro_rebel import worst_case
from dro_rebel.torch import NonFiniteLossError, RobustLoss, completion_logprobs, dpo_loss, sequence_logprobs
from dro_rebel.torch.data import encode_pairs


def _dpo_losses(model, tokenizer, embeds_out=None):
    """Per-pair DPO losses of the test pairs, against a fixed pseudo-reference."""
    batch = encode_pairs(tokenizer, *[[row[key] for row in PAIRS] for key in ("prompt", "chosen", "rejected")])
    ids, mask, completion = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    if embeds_out is None:
        logps = completion_logprobs(model, ids, mask, completion)
    else:
        embeds = model.get_input_embeddings()(ids)
        embeds_out.append(embeds)
        logits = model(inputs_embeds=embeds, attention_mask=mask).logits
        logps = sequence_logprobs(logits, ids, completion)
    chosen, rejected = logps.chunk(2)
    reference = torch.linspace(-30.0, -20.0, len(PAIRS))
    return dpo_loss(chosen, rejected, reference, reference.flip(0), beta=0.1)


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("ambiguity", ["chi2", "kl", "tv"])
def test_radius_zero_is_the_plain_mean(model, tokenizer, ambiguity):
    robust = RobustLoss(ambiguity, radius=0.0)
    losses = _dpo_losses(model, tokenizer)
    value = robust(losses)
    value.backward(retain_graph=True)
    robust_grads = _grads(model)
    model.zero_grad()
    mean = losses.mean()
    mean.backward()
    torch.testing.assert_close(value, mean, rtol=1e-6, atol=0)
    for got, expected in zip(robust_grads, _grads(model)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert robust.last.ess == pytest.approx(len(PAIRS))


@pytest.mark.parametrize(
    "ambiguity, kwargs", [("chi2", {"radius": 0.3}), ("kl", {"radius": 0.2}), ("cvar", {"alpha": 0.5})]
)
def test_gradient_is_that_of_the_worst_case_weighted_sum(model, tokenizer, ambiguity, kwargs):
    """Danskin: grad V* = grad sum_i q*_i l_i with q* from worst_case held fixed."""
    robust = RobustLoss(ambiguity, **kwargs)
    losses = _dpo_losses(model, tokenizer)
    robust(losses).backward(retain_graph=True)
    robust_grads = _grads(model)
    model.zero_grad()
    solution = worst_case(losses.detach().double().numpy(), ambiguity, **kwargs)
    q = torch.from_numpy(solution.weights).float()
    assert not torch.allclose(q, torch.full_like(q, 1 / len(q)))
    (q * losses).sum().backward()
    for got, expected in zip(robust_grads, _grads(model)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert robust.last.value == pytest.approx(solution.value, rel=1e-6)


def test_weights_carry_no_gradient():
    losses = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    RobustLoss("kl", radius=0.5)(losses).backward()
    q = worst_case([1.0, 2.0, 4.0], "kl", radius=0.5).weights
    torch.testing.assert_close(losses.grad, torch.from_numpy(q).float())


def test_groups_share_their_group_weight():
    losses = torch.tensor([1.0, 1.2, 3.0, 0.5], requires_grad=True)
    robust = RobustLoss("chi2", radius=0.2)
    robust(losses, groups=torch.tensor([0, 0, 1, 1])).backward()
    assert losses.grad[0] == losses.grad[1] and losses.grad[2] == losses.grad[3]
    assert losses.grad[2] > losses.grad[0]
    assert losses.grad.sum().item() == pytest.approx(1.0)


def test_nonfinite_losses_are_reported_never_solved():
    with pytest.raises(NonFiniteLossError, match="#2: nan") as caught:
        RobustLoss("chi2", radius=0.1)(torch.tensor([1.0, 2.0, float("nan"), float("inf")]))
    assert caught.value.indices == [2, 3]


def test_keeps_device_and_dtype():
    losses = torch.tensor([1.0, 3.0], dtype=torch.float64, requires_grad=True)
    out = RobustLoss("chi2", radius=0.1)(losses)
    assert out.dtype == torch.float64 and out.device == losses.device


@pytest.mark.parametrize("form", ["rebel", "wdpo"])
def test_gradient_penalty_forms(model, tokenizer, form):
    rho0 = 0.05
    embeds = []
    with sdpa_kernel(SDPBackend.MATH):  # the attention kernel with a differentiable backward
        losses = _dpo_losses(model, tokenizer, embeds)
    robust = RobustLoss("wasserstein", radius=rho0, gradient_penalty=form)
    value = robust(losses, inputs_embeds=embeds)
    value.backward(retain_graph=True)
    robust_grads = _grads(model)
    model.zero_grad()

    # The definitions, written out with per-sample autograd (one backward per sample).
    norms = []
    for i in range(len(losses)):
        (grad,) = torch.autograd.grad(losses[i], embeds, create_graph=True)
        norms.append(grad.pow(2).sum())
    norms = torch.stack(norms)
    if form == "rebel":
        expected = losses.mean() + rho0 * norms.mean().sqrt()
    else:
        expected = (losses + rho0 * norms).mean()
    expected.backward()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert robust.last.value == pytest.approx(expected.item(), rel=1e-5)
    for got, want in zip(robust_grads, _grads(model)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_gradient_penalty_needs_embeddings_and_wasserstein():
    with pytest.raises(ValueError, match="wasserstein"):
        RobustLoss("chi2", radius=0.1, gradient_penalty="rebel")
    with pytest.raises(ValueError, match="inputs_embeds"):
        RobustLoss("wasserstein", radius=0.1, gradient_penalty="wdpo")(torch.tensor([1.0]))

"""The per-sample losses and sequence log-probabilities against their definitions
(docs/method.md#rebel, #dpo and #bradley-terry)."""

from __future__ import annotations

import math

import torch

from dro_rebel.torch import bradley_terry_loss, completion_logprobs, dpo_loss, rebel_loss, sequence_logprobs
from dro_rebel.torch.data import encode_pairs


def test_rebel_loss_is_the_squared_regression_residual():
    logps, other = torch.tensor([-3.0, -1.0]), torch.tensor([-2.0, -4.0])
    base, base_other = torch.tensor([-2.5, -1.5]), torch.tensor([-2.0, -3.0])
    rewards, other_rewards = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    eta = 0.5
    expected = [
        ((-3.0 + 2.5) - (-2.0 + 2.0)) / eta - 1.0,
        ((-1.0 + 1.5) - (-4.0 + 3.0)) / eta + 2.0,
    ]
    got = rebel_loss(logps, other, base, base_other, rewards, other_rewards, eta)
    torch.testing.assert_close(got, torch.tensor(expected) ** 2)


def test_dpo_and_bradley_terry_losses():
    chosen, rejected = torch.tensor([-1.0, -5.0]), torch.tensor([-2.0, -1.0])
    ref_chosen, ref_rejected = torch.tensor([-1.5, -4.0]), torch.tensor([-1.5, -2.0])
    beta = 0.2
    margins = [(-1.0 + 1.5) - (-2.0 + 1.5), (-5.0 + 4.0) - (-1.0 + 2.0)]
    expected = torch.tensor([math.log1p(math.exp(-beta * m)) for m in margins])
    torch.testing.assert_close(dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta), expected)
    torch.testing.assert_close(
        bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.5])),
        torch.tensor([math.log1p(math.exp(-1.5))]),
    )


def test_references_are_constants():
    logps = torch.tensor([-1.0], requires_grad=True)
    ref = torch.tensor([-2.0], requires_grad=True)
    dpo_loss(logps, logps.detach(), ref, ref.detach(), 0.1).sum().backward()
    assert ref.grad is None and logps.grad is not None


def test_sequence_logprobs_sums_masked_next_token_logprobs():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    input_ids = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]])
    log_softmax = logits.log_softmax(-1)
    expected = torch.stack(
        [sum(log_softmax[b, t - 1, input_ids[b, t]] for t in range(1, 5) if mask[b, t]) for b in range(2)]
    )
    torch.testing.assert_close(sequence_logprobs(logits, input_ids, mask), expected)


def test_completion_logprobs_ignore_padding(model, tokenizer):
    """A pair's log-probs do not change when a longer pair in the batch adds padding."""
    model.eval()
    alone = encode_pairs(tokenizer, ["Name a colour:"], [" green"], [" blue"])
    padded = encode_pairs(
        tokenizer, ["Name a colour:", "Tell me about cats:"], [" green", " cats are curious animals"], [" blue", " no"]
    )
    with torch.no_grad():
        one = completion_logprobs(model, alone["input_ids"], alone["attention_mask"], alone["completion_mask"])
        two = completion_logprobs(model, padded["input_ids"], padded["attention_mask"], padded["completion_mask"])
    torch.testing.assert_close(one, two[[0, 2]], rtol=1e-5, atol=1e-5)


def test_encode_pairs_truncates_completion_first(tokenizer):
    batch = encode_pairs(tokenizer, ["Describe the sea:"], [" blue and deep" * 10], [" x"], max_length=12)
    assert batch["input_ids"].shape[1] == 12
    prompt_length = len(tokenizer("Describe the sea:")["input_ids"])
    assert batch["completion_mask"][0, :prompt_length].sum() == 0
    assert batch["completion_mask"][0].sum() == 12 - prompt_length

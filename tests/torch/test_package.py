"""Packaging facts of the torch layer."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dro_rebel.torch import RobustDPOConfig, RobustLoss, RobustStats


def test_top_level_package_does_not_import_torch():
    code = "import sys, dro_rebel; assert 'torch' not in sys.modules, 'dro_rebel imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_subpackage_named_torch_uses_the_real_torch():
    import dro_rebel.torch.robust_loss as module

    assert module.torch is torch and module.nn is torch.nn


def test_config_validates_its_choices():
    with pytest.raises(ValueError, match="nonfinite"):
        RobustDPOConfig(nonfinite="ignore")
    with pytest.raises(ValueError, match="gradient_penalty"):
        RobustDPOConfig(ambiguity="wasserstein", radius=0.1)
    assert RobustDPOConfig().robust_kwargs()["radius"] == 0.0  # no radius: the plain loss
    assert RobustDPOConfig(alpha=0.5, ambiguity="cvar").robust_kwargs()["radius"] is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_weights_stay_on_the_gpu():
    losses = torch.tensor([1.0, 2.0, 4.0], device="cuda", requires_grad=True)
    robust = RobustLoss("kl", radius=0.3)
    value = robust(losses)
    value.backward()
    assert value.device.type == "cuda" and losses.grad.device.type == "cuda"
    assert isinstance(robust.last, RobustStats) and robust.last.ess < 3

"""Model inputs for the network tests (imported by test_models_*.py)."""
from __future__ import annotations

import torch

from survey_estimator.normalise import model_input

O, P = 8, 4096


def make_input(batch: int, seed: int = 0, pixels: int = P) -> torch.Tensor:
    """(B, 2, O, pixels) model input with lines whose depth varies per spectrum, some pixels masked."""
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 60 * pixels / P, pixels)
    depth = torch.rand(batch, O, 1, generator=g) * 0.5
    flux = 1 - depth * torch.sin(x + torch.arange(O)[:, None]).clamp_min(0) ** 8
    return model_input(flux + 0.02 * torch.randn(batch, O, pixels, generator=g), torch.rand(batch, O, pixels, generator=g) > 0.1)


def training_losses(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float = 1e-2) -> list[float]:
    """NLL of ``net`` on (``x``, normalised labels ``y``) over ``steps`` Adam steps on that one batch."""
    from survey_estimator.models import gaussian_nll

    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = gaussian_nll(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses

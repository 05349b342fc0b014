"""Shapes, structure, attention-map normalisation, DAE masking and learning for the tiny nets."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from survey_estimator.models import (
    AttentionConfig,
    AttentionEstimator,
    DenoisingAutoencoder,
    GaussianOutput,
    ModelConfigError,
    ResNetConfig,
    ResNetEstimator,
    build_model,
    config_to_dict,
    dae_loss,
    describe,
    gaussian_nll,
)
from survey_estimator.models.resnet import ResidualBlock
from survey_estimator.normalise import model_input

B, O, P = 3, 8, 4096


def make_input(batch: int = B, seed: int = 0, noise: float = 0.05, pixels: int = P) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy model input (B, 2, O, P), clean flux channel (B, 1, O, P)) via normalise.model_input."""
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 60 * pixels / P, pixels)
    depth = torch.rand(batch, O, 1, generator=g) * 0.5
    clean = 1 - depth * torch.sin(x + torch.arange(O)[:, None]).clamp_min(0) ** 8
    mask = torch.rand(batch, O, pixels, generator=g) > 0.1
    mask[:, 2, : pixels // 4] = False  # a chunk of one order missing
    noisy = model_input(clean + noise * torch.randn(batch, O, pixels, generator=g), mask)
    return noisy, model_input(clean, mask)[:, :1]


@pytest.mark.parametrize("name", ["resnet", "attention"])
@pytest.mark.parametrize("head", ["diagonal", "full"])
def test_estimator_output_shapes(name, head):
    torch.manual_seed(0)
    net = build_model(name, {"head": head}, preset="tiny")
    out = net(make_input()[0])
    assert isinstance(out, GaussianOutput)
    assert out.mean.shape == (B, 4) and out.scale_tril.shape == (B, 4, 4)
    assert torch.all(torch.diagonal(out.scale_tril, dim1=-2, dim2=-1) > 0)
    assert torch.all(torch.triu(out.scale_tril, 1) == 0)
    if head == "diagonal":
        assert torch.count_nonzero(torch.tril(out.scale_tril, -1)) == 0


def test_default_structures_follow_the_seed():
    res = ResNetEstimator(ResNetConfig())
    assert sum(isinstance(m, ResidualBlock) for m in res.modules()) == 5
    k7 = [m for m in res.blocks.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 7)]
    assert len(k7) == 10 and all(m.padding == (0, 3) for m in k7)  # zero-padded (1 x 7)
    assert sum(isinstance(m, nn.Linear) for m in res.fc) == 3 and sum(isinstance(m, nn.Dropout) for m in res.fc) == 3
    att = AttentionEstimator(AttentionConfig())
    convs = [m for m in att.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 7)]
    assert len(convs) == 11 == att.config.n_conv_layers
    assert len(att.gates) == len(att.heads) == 3


def test_attention_maps_are_normalised_over_positions():
    torch.manual_seed(0)
    net = build_model("attention", {"head": "full"}, preset="tiny")
    with torch.no_grad():  # make the maps non-uniform
        for gate in net.gates:
            gate.psi.weight.normal_(0, 3.0)
    x = make_input()[0]
    out, maps = net(x, return_attention=True)
    assert isinstance(out, GaussianOutput)
    assert maps.shape == (B, 3, O, P)
    assert torch.all(maps >= 0)
    torch.testing.assert_close(maps.sum(dim=(-2, -1)), torch.ones(B, 3))
    assert maps.amax(dim=(-2, -1)).min() > 1.5 / (O * P), "maps should not all be uniform"
    # Same Gaussian with or without the maps.
    torch.testing.assert_close(net(x).mean, out.mean)


def test_dae_shapes_masking_and_denoise():
    torch.manual_seed(0)
    net = build_model("dae", preset="tiny")
    with torch.no_grad():
        net.out.weight.normal_(0, 0.5)
    noisy, _ = make_input()
    y = net(noisy)
    assert y.shape == (B, 1, O, P)
    masked = noisy[:, 1:2] == 0
    assert masked.any() and torch.all(y[masked] == 0)
    den = net.denoise(noisy)
    assert den.shape == noisy.shape
    assert torch.equal(den[:, 1], noisy[:, 1])
    assert torch.equal(den[:, :1], y)


def test_dae_loss_ignores_masked_pixels():
    noisy, clean = make_input()
    mask = noisy[:, 1:2]
    pred = clean.clone()
    pred[mask == 0] = 5.0  # garbage where masked
    assert dae_loss(pred, clean, mask) == 0
    pred[mask == 1] += 0.1
    torch.testing.assert_close(dae_loss(pred, clean, mask), torch.tensor(0.01))
    torch.testing.assert_close(dae_loss(pred[:, 0], clean[:, 0], mask[:, 0].bool()), torch.tensor(0.01))


SHORT = 512
"""Pixels per order in the learning tests (the nets take any width; keeps the CPU time small)."""


def _train(net, loss_fn, steps: int = 20, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name,head", [("resnet", "diagonal"), ("attention", "full")])
def test_estimators_learn_a_fixed_batch(name, head):
    torch.manual_seed(0)
    net = build_model(name, {"head": head, "input_size": [O, SHORT]}, preset="tiny").train()
    x, _ = make_input(batch=6, seed=1, pixels=SHORT)
    y = torch.rand(6, 4, generator=torch.Generator().manual_seed(2)) * 2 - 1
    losses = _train(net, lambda: gaussian_nll(net(x), y), lr=1e-2)
    assert losses[-1] < losses[0] - 1.0, losses


def test_dae_learns_to_denoise():
    torch.manual_seed(0)
    net = build_model("dae", preset="tiny").train()
    noisy, clean = make_input(batch=2, seed=3, noise=0.1, pixels=SHORT)
    losses = _train(net, lambda: dae_loss(net(noisy), clean, noisy[:, 1:2]), lr=1e-2)
    assert losses[-1] < 0.6 * losses[0], losses


def test_registry_round_trip_and_errors():
    net = build_model("attention", {"head": "full", "dropout": 0.1}, preset="tiny")
    name, cfg = describe(net)
    assert name == "attention" and cfg["head"] == "full" and isinstance(cfg["stage_widths"], list)
    again = build_model(name, cfg)
    assert again.config == net.config
    assert isinstance(build_model("dae", preset="tiny"), DenoisingAutoencoder)
    with pytest.raises(ModelConfigError, match="unknown fields"):
        build_model("resnet", {"depth": 50})
    with pytest.raises(ModelConfigError, match="unknown architecture"):
        build_model("vgg", {})
    with pytest.raises(ModelConfigError):
        build_model("resnet", {"widths": [8, 8], "strides": [2, 2, 2]})
    with pytest.raises(ValueError):
        build_model("resnet", {"head": "mixture"}, preset="tiny")
    assert config_to_dict(ResNetConfig())["pool_to"] == [8, 16]

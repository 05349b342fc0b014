"""Small building blocks shared by the networks: (1 x k) convolutions, norms, pooling, MLPs.

All feature maps have shape (B, C, H, W) with H = echelle orders (8 at the input) and
W = pixels along the wavelength axis (4096 at the input). Kernels are (1 x k): they slide along
wavelength only, with zero padding, so orders are processed independently with shared weights
until a fully connected layer or an attention map mixes them.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

NORMS = ("batch", "group", "none")


def conv1xk(in_ch: int, out_ch: int, kernel: int = 7, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """(1 x kernel) convolution along wavelength with 'same' zero padding; ``stride`` along W only."""
    if kernel % 2 != 1:
        raise ValueError(f"kernel must be odd for symmetric zero padding, got {kernel}")
    return nn.Conv2d(in_ch, out_ch, (1, kernel), stride=(1, stride), padding=(0, kernel // 2), bias=bias)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """1 x 1 convolution (a per-position linear map); ``stride`` along W only."""
    return nn.Conv2d(in_ch, out_ch, 1, stride=(1, stride), bias=bias)


def make_norm(kind: str, channels: int) -> nn.Module:
    """A normalisation layer by name: 'batch' (BatchNorm2d), 'group' (GroupNorm, <= 8 groups), 'none'."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")


class ConvNormAct(nn.Sequential):
    """conv1xk -> norm -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 7, stride: int = 1, norm: str = "batch"):
        super().__init__(conv1xk(in_ch, out_ch, kernel, stride, bias=norm == "none"), make_norm(norm, out_ch), nn.ReLU(inplace=True))


def pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """2 x 2 max pooling while the order axis is at least 2 high, (1 x 2) after that."""
    kh = 2 if x.shape[-2] >= 2 else 1
    return F.max_pool2d(x, (kh, 2))


def mlp(in_features: int, widths: tuple[int, ...], dropout: float,
        activation: type[nn.Module] = nn.ReLU) -> tuple[nn.Sequential, int]:
    """Fully connected stack: Linear -> activation -> Dropout per width. Returns (module, out_features)."""
    layers: list[nn.Module] = []
    n = in_features
    for w in widths:
        layers += [nn.Linear(n, w), activation(), nn.Dropout(dropout)]
        n = w
    return nn.Sequential(*layers), n


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def probe_shape(fn, input_shape: tuple[int, ...], module: nn.Module) -> torch.Size:
    """Shape of ``fn(zeros(1, *input_shape))``, run in eval mode without gradients so that no
    BatchNorm running statistic is touched; ``module``'s training flag is restored."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return fn(torch.zeros(1, *input_shape)).shape
    finally:
        module.train(was_training)

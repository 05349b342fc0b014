"""Residual estimator: stem, 5 residual blocks of (1 x 7) convolutions, 3 fully connected layers
with dropout, and a Gaussian head (torchvision resnet style: a block class, a stage builder and a
thin factory).

Input: (B, 2, 8, 4096) from ``normalise.model_input``. Output: :class:`GaussianOutput` over the
four normalised labels. With the defaults the wavelength axis shrinks 4096 -> 1024 in the stem
(stride 2 convolution, then (1 x 2) max pooling) and halves in each block down to 32 positions;
the orders axis (8) is never pooled, so the fully connected layers see every order separately.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import nn

from ..labels import LABEL_NAMES
from .heads import GaussianOutput, make_head
from .layers import ConvNormAct, conv1x1, conv1xk, make_norm, mlp, probe_shape

INPUT_CHANNELS = 2


@dataclass(frozen=True)
class ResNetConfig:
    """Hyper-parameters of :class:`ResNetEstimator` (JSON-serialisable; tuples become lists).

    The structure (5 residual blocks of (1 x 7) zero-padded convolutions, 3 fully connected
    layers with dropout, a Gaussian head) is the seed's; the widths and strides are this
    project's choice to keep the 8 x 4096 input tractable.
    """

    head: str = "diagonal"
    """'diagonal' or 'full' covariance."""
    n_labels: int = len(LABEL_NAMES)
    input_size: tuple[int, int] = (8, 4096)
    """(orders, pixels) of the input."""
    kernel: int = 7
    stem_width: int = 16
    stem_stride: int = 2
    stem_pool: int = 2
    """(1 x stem_pool) max pooling after the stem convolution (1 = none)."""
    widths: tuple[int, ...] = (16, 32, 32, 64, 64)
    """Output channels of the residual blocks (one block each)."""
    strides: tuple[int, ...] = (2, 2, 2, 2, 2)
    """Stride along wavelength of each block's first convolution."""
    pool_to: tuple[int, int] | None = (8, 16)
    """Adaptive average pooling of the last feature map to (orders, positions) before flattening
    (None: flatten as is)."""
    fc_widths: tuple[int, ...] = (256, 128, 64)
    dropout: float = 0.2
    norm: str = "batch"

    def __post_init__(self):
        if len(self.widths) != len(self.strides):
            raise ValueError(f"widths {self.widths} and strides {self.strides} differ in length")

    @classmethod
    def tiny(cls, **overrides) -> "ResNetConfig":
        """A net of a few thousand parameters for tests (same structure, narrow and strided)."""
        base = cls(stem_width=4, stem_stride=4, stem_pool=4, widths=(4, 4, 8, 8, 8), pool_to=(8, 4), fc_widths=(32, 16, 16), dropout=0.0)
        return replace(base, **overrides)


class ResidualBlock(nn.Module):
    """Two (1 x k) conv-norm layers with a shortcut (1 x 1 strided projection when the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, kernel: int = 7, norm: str = "batch"):
        super().__init__()
        self.conv1 = ConvNormAct(in_ch, out_ch, kernel, stride, norm)
        self.conv2 = conv1xk(out_ch, out_ch, kernel, bias=norm == "none")
        self.norm2 = make_norm(norm, out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(conv1x1(in_ch, out_ch, stride), make_norm(norm, out_ch))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm2(self.conv2(self.conv1(x))) + self.shortcut(x))


def make_stage(in_ch: int, widths: tuple[int, ...], strides: tuple[int, ...], kernel: int, norm: str) -> nn.Sequential:
    """One :class:`ResidualBlock` per (width, stride)."""
    blocks = []
    for w, s in zip(widths, strides):
        blocks.append(ResidualBlock(in_ch, w, s, kernel, norm))
        in_ch = w
    return nn.Sequential(*blocks)


class ResNetEstimator(nn.Module):
    """(B, 2, O, P) model input -> :class:`GaussianOutput` over the normalised labels."""

    architecture: ClassVar[str] = "resnet"

    def __init__(self, config: ResNetConfig = ResNetConfig()):
        super().__init__()
        c = self.config = config
        self.head_kind = c.head
        stem: list[nn.Module] = [ConvNormAct(INPUT_CHANNELS, c.stem_width, c.kernel, c.stem_stride, c.norm)]
        if c.stem_pool > 1:
            stem.append(nn.MaxPool2d((1, c.stem_pool)))
        self.stem = nn.Sequential(*stem)
        self.blocks = make_stage(c.stem_width, c.widths, c.strides, c.kernel, c.norm)
        self.pool = nn.AdaptiveAvgPool2d(c.pool_to) if c.pool_to else nn.Identity()
        n_flat = probe_shape(self._features, (INPUT_CHANNELS, *c.input_size), self)[1]
        self.fc, n_out = mlp(n_flat, c.fc_widths, c.dropout)
        self.head = make_head(c.head, n_out, c.n_labels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.blocks(self.stem(x))), 1)

    def forward(self, x: torch.Tensor) -> GaussianOutput:
        """x: (B, 2, O, P) -> GaussianOutput(mean (B, 4), scale_tril (B, 4, 4))."""
        return self.head(self.fc(self._features(x)))


def resnet_estimator(config: ResNetConfig | None = None, **overrides) -> ResNetEstimator:
    """Factory: a :class:`ResNetEstimator` from a config (default sizes) with field overrides."""
    return ResNetEstimator(replace(config or ResNetConfig(), **overrides))

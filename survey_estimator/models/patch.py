"""A network cheap enough to train on a CPU: a learned linear front end over pixel patches, one
dense layer per order, fully connected layers and a Gaussian head (no convolution).

Input: (B, 2, 8, 4096) from ``normalise.model_input``. Each order is cut into patches of
``patch`` pixels (32 px ~ 26 km/s, a few line widths); one linear map shared by every order and
patch (the "patch embedding", with the mask channel as input so a masked patch is recognised)
turns each patch into ``embed`` features; a dense layer of its own per order (its lines sit at its
own wavelengths) maps the order's (patches x embed) features to ``order_width``; the orders are
concatenated and go through ``fc_widths`` to the head. With the defaults a training step costs
about 1/30 of the seed ResNet's per sample (``bench/train.py``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import nn

from ..labels import LABEL_NAMES
from .heads import GaussianOutput, make_head
from .layers import mlp

INPUT_CHANNELS = 2


@dataclass(frozen=True)
class PatchConfig:
    """Hyper-parameters of :class:`PatchEstimator` (JSON-serialisable; tuples become lists)."""

    head: str = "diagonal"
    """'diagonal' or 'full' covariance."""
    n_labels: int = len(LABEL_NAMES)
    input_size: tuple[int, int] = (8, 4096)
    """(orders, pixels) of the input; pixels must be a multiple of ``patch``."""
    patch: int = 32
    embed: int = 16
    """Features per patch."""
    order_width: int = 128
    """Features per order after its own dense layer."""
    fc_widths: tuple[int, ...] = (256, 128)
    dropout: float = 0.1

    def __post_init__(self):
        if self.input_size[1] % self.patch:
            raise ValueError(f"{self.input_size[1]} pixels are not a multiple of the patch {self.patch}")

    @classmethod
    def tiny(cls, **overrides) -> "PatchConfig":
        """A net of a few tens of thousands of parameters for tests (same structure)."""
        return replace(cls(patch=128, embed=4, order_width=8, fc_widths=(16,), dropout=0.0), **overrides)


class OrderDense(nn.Module):
    """A separate linear layer per order: (B, O, F) -> (B, O, H), as one batched product."""

    def __init__(self, orders: int, in_features: int, out_features: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's default initialisation
        self.weight = nn.Parameter(torch.empty(orders, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(orders, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias[:, None], x.transpose(0, 1), self.weight).transpose(0, 1)


class PatchEstimator(nn.Module):
    """(B, 2, O, P) model input -> :class:`GaussianOutput` over the normalised labels."""

    architecture: ClassVar[str] = "patch"

    def __init__(self, config: PatchConfig = PatchConfig()):
        super().__init__()
        c = self.config = config
        self.head_kind = c.head
        orders, pixels = c.input_size
        self.n_patches = pixels // c.patch
        self.embed = nn.Sequential(nn.Linear(INPUT_CHANNELS * c.patch, c.embed), nn.ReLU(inplace=True))
        self.orders = nn.Sequential(OrderDense(orders, self.n_patches * c.embed, c.order_width), nn.ReLU(inplace=True))
        self.fc, n_out = mlp(orders * c.order_width, c.fc_widths, c.dropout)
        self.head = make_head(c.head, n_out, c.n_labels)

    def forward(self, x: torch.Tensor) -> GaussianOutput:
        """x: (B, 2, O, P) -> GaussianOutput(mean (B, 4), scale_tril (B, 4, 4))."""
        B, C, O, P = x.shape
        patches = x.reshape(B, C, O, self.n_patches, self.config.patch).permute(0, 2, 3, 1, 4)  # (B, O, N, C, patch)
        z = self.embed(patches.reshape(B, O, self.n_patches, C * self.config.patch))  # (B, O, N, embed)
        z = self.orders(z.reshape(B, O, -1))  # (B, O, order_width)
        return self.head(self.fc(z.reshape(B, -1)))

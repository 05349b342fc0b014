"""Attention estimator: 11 (1 x 7) convolutional layers, three attention blocks, one Gaussian head
per block, head outputs averaged.

Layers (defaults): a stem of 2 convolutions and (1 x 4) max pooling (4096 -> 1024 pixels), three
stages of 3, 3 and 2 convolutions each followed by 2 x 2 max pooling (over orders while the
height allows, (1 x 2) after that), and one last convolution giving the global feature map g:
2 + 3 + 3 + 2 + 1 = 11 convolutional layers. Each stage's output x (the intermediate feature map,
before pooling) is attended with g (the seed's eq. 3):

    c = psi(ReLU(W_x x + up(W_g g))),   a = softmax over all positions (orders x pixels) of c,

where W_x, W_g and psi are 1 x 1 convolutions (psi to one channel) and up() resamples W_g g to
the size of x (bilinear). The attended vector sum_positions a * x (B, C_x) feeds that block's
fully connected layers and Gaussian head. The three Gaussians are averaged by
:func:`heads.combine_gaussians` (mean of means; covariance = mean covariance + spread of the
means, i.e. the moments of the equal-weight mixture).

``forward(x, return_attention=True)`` also returns the three attention maps upsampled to the
input, (B, 3, O, P), each non-negative and summing to 1 over the O x P positions.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import nn
import torch.nn.functional as F

from ..labels import LABEL_NAMES
from .heads import GaussianOutput, combine_gaussians, make_head
from .layers import ConvNormAct, conv1x1, mlp, pool_2x2

INPUT_CHANNELS = 2


@dataclass(frozen=True)
class AttentionConfig:
    """Hyper-parameters of :class:`AttentionEstimator` (JSON-serialisable; tuples become lists)."""

    head: str = "diagonal"
    n_labels: int = len(LABEL_NAMES)
    input_size: tuple[int, int] = (8, 4096)
    kernel: int = 7
    stem_widths: tuple[int, ...] = (16, 16)
    """Channels of the stem convolutions (full resolution)."""
    stem_pool: int = 4
    """(1 x stem_pool) max pooling after the stem."""
    stage_widths: tuple[int, int, int] = (32, 64, 64)
    stage_depths: tuple[int, int, int] = (3, 3, 2)
    """Convolutions per attended stage."""
    global_width: int = 128
    """Channels of the last convolution, the global feature map g."""
    attention_dim: int = 32
    """Channels of W_x x and W_g g."""
    fc_widths: tuple[int, ...] = (128,)
    """Fully connected layers of each block's head."""
    dropout: float = 0.2
    norm: str = "batch"

    def __post_init__(self):
        if len(self.stage_widths) != len(self.stage_depths):
            raise ValueError(f"stage_widths {self.stage_widths} and stage_depths {self.stage_depths} differ in length")

    @property
    def n_conv_layers(self) -> int:
        """Convolutional layers with (1 x k) kernels (11 with the defaults)."""
        return len(self.stem_widths) + sum(self.stage_depths) + 1

    @classmethod
    def tiny(cls, **overrides) -> "AttentionConfig":
        """A net of a few thousand parameters for tests (same 11-layer structure, narrow)."""
        base = cls(stem_widths=(4, 4), stem_pool=8, stage_widths=(4, 8, 8), global_width=8, attention_dim=4, fc_widths=(16,), dropout=0.0)
        return replace(base, **overrides)


class AttentionGate(nn.Module):
    """Additive attention of a local map x (B, C_x, H, W) guided by a global map g (B, C_g, h, w)."""

    def __init__(self, x_channels: int, g_channels: int, dim: int):
        super().__init__()
        self.w_x = conv1x1(x_channels, dim)
        self.w_g = conv1x1(g_channels, dim, bias=True)
        self.psi = conv1x1(dim, 1, bias=True)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (attended features (B, C_x), attention map (B, 1, H, W) summing to 1)."""
        gx = F.interpolate(self.w_g(g), size=x.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.psi(F.relu(self.w_x(x) + gx))  # (B, 1, H, W)
        b, _, h, w = logits.shape
        a = torch.softmax(logits.reshape(b, h * w).float(), dim=-1).reshape(b, 1, h, w)
        attended = (a.to(x.dtype) * x).sum(dim=(-2, -1))
        return attended, a


def upsample_attention(maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Attention maps (B, 1, h_i, w_i) -> (B, n, H, W), nearest-neighbour, renormalised to sum 1."""
    out = []
    for a in maps:
        up = F.interpolate(a.float(), size=size, mode="nearest")
        out.append(up / up.sum(dim=(-2, -1), keepdim=True))
    return torch.cat(out, dim=1)


class AttentionEstimator(nn.Module):
    """(B, 2, O, P) model input -> :class:`GaussianOutput` (and optionally attention maps)."""

    architecture: ClassVar[str] = "attention"

    def __init__(self, config: AttentionConfig = AttentionConfig()):
        super().__init__()
        c = self.config = config
        self.head_kind = c.head
        layers: list[nn.Module] = []
        ch = INPUT_CHANNELS
        for w in c.stem_widths:
            layers.append(ConvNormAct(ch, w, c.kernel, norm=c.norm))
            ch = w
        if c.stem_pool > 1:
            layers.append(nn.MaxPool2d((1, c.stem_pool)))
        self.stem = nn.Sequential(*layers)
        self.stages = nn.ModuleList()
        for w, depth in zip(c.stage_widths, c.stage_depths):
            convs = []
            for _ in range(depth):
                convs.append(ConvNormAct(ch, w, c.kernel, norm=c.norm))
                ch = w
            self.stages.append(nn.Sequential(*convs))
        self.global_conv = ConvNormAct(ch, c.global_width, c.kernel, norm=c.norm)
        self.gates = nn.ModuleList(AttentionGate(w, c.global_width, c.attention_dim) for w in c.stage_widths)
        self.fcs = nn.ModuleList()
        self.heads = nn.ModuleList()
        for w in c.stage_widths:
            fc, n_out = mlp(w, c.fc_widths, c.dropout)
            self.fcs.append(fc)
            self.heads.append(make_head(c.head, n_out, c.n_labels))
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def head_outputs(self, x: torch.Tensor) -> tuple[list[GaussianOutput], list[torch.Tensor]]:
        """Per-block Gaussians and attention maps at their own resolution (B, 1, h_i, w_i)."""
        h = self.stem(x)
        feats = []
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
            h = pool_2x2(h)
        g = self.global_conv(h)
        outs, maps = [], []
        for feat, gate, fc, head in zip(feats, self.gates, self.fcs, self.heads):
            v, a = gate(feat, g)
            outs.append(head(fc(v)))
            maps.append(a)
        return outs, maps

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """x: (B, 2, O, P) -> GaussianOutput, or (GaussianOutput, maps (B, 3, O, P)) when
        ``return_attention``."""
        outs, maps = self.head_outputs(x)
        out = combine_gaussians(outs, diagonal=self.head_kind == "diagonal")
        if return_attention:
            return out, upsample_attention(maps, tuple(x.shape[-2:]))
        return out


def attention_estimator(config: AttentionConfig | None = None, **overrides) -> AttentionEstimator:
    """Factory: an :class:`AttentionEstimator` from a config (default sizes) with field overrides."""
    return AttentionEstimator(replace(config or AttentionConfig(), **overrides))

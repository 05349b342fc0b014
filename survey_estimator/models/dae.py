"""Convolutional denoising autoencoder (DAE): noisy model input -> noiseless flux channel.

Input (B, 2, O, P) from ``normalise.model_input`` (channel 0 = normalised flux - 1, 0 where
masked; channel 1 = mask). Output (B, 1, O, P): the clean flux channel, exactly 0 where masked.
Encoder: a full-resolution (1 x 7) conv pair, then one level per width that halves the
wavelength axis (strided (1 x 7) conv + conv). Decoder: per level, (1 x 2) nearest upsampling +
(1 x 7) conv, concatenation with the encoder map of that size (``skips``) and a (1 x 7) conv;
then a 1 x 1 conv to one channel. With ``residual`` the net predicts a correction added to the
noisy flux. The orders axis is never resampled.

Loss: the seed's eq. 4, the mean squared error over usable pixels (:func:`dae_loss`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import nn
import torch.nn.functional as F

from ..normalise import FLUX_RANGE
from .layers import ConvNormAct, conv1x1

INPUT_CHANNELS = 2
FLUX_LIMITS = (FLUX_RANGE[0] - 1.0, FLUX_RANGE[1] - 1.0)
"""The model-input flux channel's range; denoised flux is clipped to it."""


@dataclass(frozen=True)
class DAEConfig:
    """Hyper-parameters of :class:`DenoisingAutoencoder` (JSON-serialisable)."""

    kernel: int = 7
    widths: tuple[int, ...] = (16, 24, 32, 48)
    """Channels at full resolution, then per level (each level halves the wavelength axis)."""
    skips: bool = True
    residual: bool = True
    norm: str = "batch"

    @classmethod
    def tiny(cls, **overrides) -> "DAEConfig":
        return replace(cls(widths=(4, 8)), **overrides)


class _Up(nn.Module):
    """(1 x 2) upsample + conv, optional concatenation with the skip map, conv."""

    def __init__(self, in_ch: int, out_ch: int, skip: bool, kernel: int, norm: str):
        super().__init__()
        self.skip = skip
        self.up = ConvNormAct(in_ch, out_ch, kernel, norm=norm)
        self.merge = ConvNormAct(2 * out_ch if skip else out_ch, out_ch, kernel, norm=norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(F.interpolate(x, size=skip.shape[-2:], mode="nearest"))
        return self.merge(torch.cat([x, skip], dim=1) if self.skip else x)


class DenoisingAutoencoder(nn.Module):
    """(B, 2, O, P) noisy model input -> (B, 1, O, P) clean flux channel (0 where masked)."""

    architecture: ClassVar[str] = "dae"

    def __init__(self, config: DAEConfig = DAEConfig()):
        super().__init__()
        c = self.config = config
        w0 = c.widths[0]
        self.inc = nn.Sequential(ConvNormAct(INPUT_CHANNELS, w0, c.kernel, norm=c.norm), ConvNormAct(w0, w0, c.kernel, norm=c.norm))
        self.downs = nn.ModuleList(
            nn.Sequential(ConvNormAct(a, b, c.kernel, stride=2, norm=c.norm), ConvNormAct(b, b, c.kernel, norm=c.norm))
            for a, b in zip(c.widths[:-1], c.widths[1:])
        )
        self.ups = nn.ModuleList(_Up(b, a, c.skips, c.kernel, c.norm) for a, b in reversed(list(zip(c.widths[:-1], c.widths[1:]))))
        self.out = conv1x1(w0, 1, bias=True)
        nn.init.zeros_(self.out.weight)  # start as the identity map when residual
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 2, O, P) -> clean flux channel (B, 1, O, P), clipped to FLUX_LIMITS, 0 where masked."""
        mask = x[:, 1:2]
        h = self.inc(x)
        skips = [h]
        for down in self.downs:
            h = down(h)
            skips.append(h)
        skips.pop()
        for up in self.ups:
            h = up(h, skips.pop())
        y = self.out(h).float()
        if self.config.residual:
            y = y + x[:, 0:1].float()
        return torch.clamp(y, *FLUX_LIMITS) * (mask.float() > 0.5)

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """Model input (B, 2, O, P) with its flux channel replaced by the denoised one (same dtype)."""
        return torch.cat([self(x).to(x.dtype), x[:, 1:2]], dim=1)


def dae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 4: mean squared error over usable pixels.

    Args:
        pred, target: clean flux channel, (B, 1, O, P) or (B, O, P).
        mask: same shape (or broadcastable), nonzero/True = usable; masked pixels do not count.
    Returns:
        scalar float32 (0 when no pixel is usable).
    """
    m = (mask > 0.5) if mask.dtype != torch.bool else mask
    m = m.expand_as(pred).float()
    se = (pred.float() - target.float()).square() * m
    return se.sum() / m.sum().clamp_min(1.0)


def dae(config: DAEConfig | None = None, **overrides) -> DenoisingAutoencoder:
    """Factory: a :class:`DenoisingAutoencoder` from a config with field overrides."""
    return DenoisingAutoencoder(replace(config or DAEConfig(), **overrides))

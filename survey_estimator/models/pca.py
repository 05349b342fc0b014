"""An estimator with a fixed linear front end learned from the grid: per-order principal components
of the normalised flux, then fully connected layers and a Gaussian head.

Input: (B, 2, 8, 4096) from ``normalise.model_input``; only the flux channel is used (a masked
pixel reads as continuum, 0). Each order's flux minus the mean spectrum is projected onto its own
``components`` principal components (computed once, before training, from noiseless training
spectra of the grid: :meth:`PCAEstimator.fit_front_end`), the O x components coefficients are
standardised with their mean and spread over those spectra, and an MLP maps them to the head.

Why: the seed's convolutional nets, trained on the 2-core CPU, stop improving at a Teff error that
is the same with and without noise (docs/model-card.md: a function-approximation floor, not the
noise), while the label information of these spectra lies in a few hundred smooth directions; the
front end hands the MLP exactly those. The front end is a buffer (saved with the weights, never
trained) and runs in float32 even under autocast: bf16's 8-bit mantissa would round away the
1e-3 flux changes the coefficients carry. Its model step ran at 4,573 samples/s on the 2-core VM
against the stem-4 ResNet's 324 (``bench/train.py``, docs/benchmarks.md).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import nn

from ..instruments.noise import DER_SNR_FACTOR
from ..labels import LABEL_NAMES
from .heads import GaussianOutput, make_head
from .layers import mlp


NOISE_LOG10_CENTRE, NOISE_LOG10_SPREAD = -1.6, 0.6
"""Fixed standardisation of log10(noise) (S/N 10 -> +1.0, S/N 200 -> -1.2): the front end is fitted on
noiseless spectra, whose noise level says nothing of the range met in training."""


def order_noise(x: torch.Tensor) -> torch.Tensor:
    """Each order's noise level relative to the continuum, DER_SNR over the unmasked pixels: one
    median per order of batched model inputs (the readers' ``instruments.noise.der_snr_variance`` is
    the same estimator as a running median along one file's raw flux).

    x: (B, 2, O, P) model input (flux - 1, mask) -> (B, O) float32 noise sigma (1 / S/N per pixel),
    at least 1e-4; an order with no unmasked pixel triple reads 1e-4 (no noise seen). The median is
    taken over every other pixel (~2,000 per order: a 3 % spread, at half the cost).
    """
    flux, ok = x[:, 0].float(), x[:, 1] > 0.5
    centre = slice(2, -2, 2)
    second = (2.0 * flux[..., centre] - flux[..., 0:-4:2] - flux[..., 4::2]).abs()
    valid = ok[..., centre] & ok[..., 0:-4:2] & ok[..., 4::2]
    median = torch.nanmedian(torch.where(valid, second, torch.full_like(second, float("nan"))), dim=-1).values
    return (DER_SNR_FACTOR * torch.nan_to_num(median, nan=0.0)).clamp_min(1e-4)


class FrontEndNotFitted(RuntimeError):
    """The PCA front end was used before :meth:`PCAEstimator.fit_front_end` (or loaded weights)."""


@dataclass(frozen=True)
class PCAConfig:
    """Hyper-parameters of :class:`PCAEstimator` (JSON-serialisable; tuples become lists)."""

    head: str = "diagonal"
    """'diagonal' or 'full' covariance."""
    n_labels: int = len(LABEL_NAMES)
    input_size: tuple[int, int] = (8, 4096)
    """(orders, pixels) of the input."""
    components: int = 64
    """Principal components per order."""
    fc_widths: tuple[int, ...] = (512, 512, 512, 256)
    dropout: float = 0.0
    noise_features: bool = False
    """Append each order's noise level, measured on the input itself (:func:`order_noise`), to the
    coefficients, so that the MLP is told the S/N. Off by default (the nets registered before it
    have no such columns); measured: no gain, the low-variance components already show the noise
    (docs/training.md)."""
    fit_spectra: int = 4096
    """Noiseless training spectra the front end is computed from (before the first epoch)."""

    def __post_init__(self):
        if self.components > min(self.fit_spectra, self.input_size[1]):
            raise ValueError(f"{self.components} components need at least as many fit spectra and pixels "
                             f"(fit_spectra {self.fit_spectra}, pixels {self.input_size[1]})")

    @classmethod
    def tiny(cls, **overrides) -> "PCAConfig":
        """A net of a few thousand parameters for tests (same structure)."""
        return replace(cls(components=4, fc_widths=(32, 16), fit_spectra=32), **overrides)


class PCAEstimator(nn.Module):
    """(B, 2, O, P) model input -> :class:`GaussianOutput` over the normalised labels.

    Buffers (the front end, float32): ``mean`` (O, P) mean flux - 1, ``basis`` (O, K, P)
    orthonormal components per order, ``feature_mean`` / ``feature_scale`` (O * K,) standardisation
    of the coefficients, ``fitted`` (bool scalar).
    """

    architecture: ClassVar[str] = "pca"

    def __init__(self, config: PCAConfig = PCAConfig()):
        super().__init__()
        c = self.config = config
        self.head_kind = c.head
        orders, pixels = c.input_size
        n_features = orders * c.components + (orders if c.noise_features else 0)
        self.register_buffer("mean", torch.zeros(orders, pixels))
        self.register_buffer("basis", torch.zeros(orders, c.components, pixels))
        self.register_buffer("feature_mean", torch.zeros(orders * c.components))
        self.register_buffer("feature_scale", torch.ones(orders * c.components))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.fc, n_out = mlp(n_features, c.fc_widths, c.dropout, activation=nn.GELU)
        self.head = make_head(c.head, n_out, c.n_labels)

    def _coefficients(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2, O, P) -> raw coefficients (B, O * K), float32."""
        flux = x[:, 0].float() - self.mean
        return torch.einsum("bop,okp->bok", flux, self.basis).reshape(x.shape[0], -1)

    @torch.no_grad()
    def fit_front_end(self, x: torch.Tensor) -> None:
        """Compute the front end from model inputs ``x`` (N, C, O, P) of noiseless training spectra
        (channel 0, the flux, is used):
        the mean, each order's top ``components`` right singular vectors (``torch.pca_lowrank``) and
        the coefficients' mean and standard deviation over ``x``."""
        c = self.config
        if x.shape[0] < c.components:
            raise ValueError(f"{x.shape[0]} spectra cannot give {c.components} components")
        flux = x[:, 0].float().to(self.mean.device)
        self.mean.copy_(flux.mean(0))
        with torch.random.fork_rng(devices=[]):  # the same basis on every rank, whatever its RNG state
            torch.manual_seed(0)
            for o in range(flux.shape[1]):
                _, _, v = torch.pca_lowrank(flux[:, o] - self.mean[o], q=c.components, center=False, niter=4)
                v = v.T  # (K, P)
                sign = torch.sign(v.gather(1, v.abs().argmax(1, keepdim=True)))  # largest entry positive
                self.basis[o].copy_(v * sign)
        coeffs = self._coefficients(x.to(self.mean.device))
        self.feature_mean.copy_(coeffs.mean(0))
        self.feature_scale.copy_(coeffs.std(0).clamp_min(1e-6))
        self.fitted.fill_(True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The fixed front end: (B, 2, O, P) model input -> standardised coefficients (B, O * K), then
        with ``noise_features`` the O standardised log10 noise levels of :func:`order_noise`, float32
        (no parameters: a data echoing buffer can keep them, see ``training.echo``)."""
        if not bool(self.fitted):
            raise FrontEndNotFitted("the PCA front end has not been computed: call fit_front_end on training spectra")
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = (self._coefficients(x) - self.feature_mean) / self.feature_scale
            if not self.config.noise_features:
                return z
            noise = (torch.log10(order_noise(x)) - NOISE_LOG10_CENTRE) / NOISE_LOG10_SPREAD
            return torch.cat([z, noise], dim=1)

    def forward(self, x: torch.Tensor | None = None, *, features: torch.Tensor | None = None) -> GaussianOutput:
        """x: (B, 2, O, P) model input, or ``features`` (B, F) already computed by
        :meth:`features` -> GaussianOutput(mean (B, 4), scale_tril (B, 4, 4))."""
        if (x is None) == (features is None):
            raise TypeError("pass exactly one of x (model input) and features")
        z = self.features(x) if features is None else features
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self.head(self.fc(z.float()))

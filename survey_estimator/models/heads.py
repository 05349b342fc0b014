"""Gaussian output heads over the four NORMALISED labels, their negative log-likelihood and the
conversion of their moments to physical units.

Every estimator returns a :class:`GaussianOutput`: ``mean`` (B, 4) and a lower-triangular
Cholesky factor ``scale_tril`` (B, 4, 4) with a positive diagonal, so that the covariance is
``scale_tril @ scale_tril.T``. The diagonal head returns a diagonal ``scale_tril``; the loss and
all downstream code are the same for both heads.

The loss is the seed's eq. 2, the negative log-likelihood of a multivariate Gaussian

    NLL = 1/2 (y - mu)^T Sigma^-1 (y - mu) + 1/2 log det Sigma + k/2 log(2 pi),

evaluated with Sigma = L L^T as ``1/2 |L^-1 (y - mu)|^2 + sum_i log L_ii + k/2 log(2 pi)`` through
one triangular solve (no matrix inverse, no determinant of Sigma). Heads and loss run in float32
even under autocast.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from ..labels import LABEL_NAMES, LabelScaler

HEAD_KINDS = ("diagonal", "full")
LOG_SIGMA_MIN = -9.0
"""Smallest log sigma (normalised units): exp(-9) * 3125 K = 0.39 K for Teff, 1.9e-4 dex for [M/H]."""
LOG_SIGMA_MAX = 1.0
"""Largest log sigma (normalised units): e = 2.7, wider than the whole label range [-1, 1]."""
OFFDIAG_MAX = 10.0
"""Bound on the off-diagonal entries of the unit lower-triangular factor of the full head."""


class GaussianOutput(NamedTuple):
    """A batch of Gaussians over the normalised labels.

    Attributes:
        mean: (B, k) float32, normalised labels.
        scale_tril: (B, k, k) float32, lower-triangular Cholesky factor with positive diagonal.
    """

    mean: torch.Tensor
    scale_tril: torch.Tensor

    @property
    def covariance(self) -> torch.Tensor:
        """(B, k, k) normalised covariance L L^T."""
        return self.scale_tril @ self.scale_tril.transpose(-1, -2)

    @property
    def sigma(self) -> torch.Tensor:
        """(B, k) normalised marginal standard deviations (row norms of L)."""
        return self.scale_tril.square().sum(-1).sqrt()


@dataclass
class PhysicalGaussian:
    """Moments in physical units (K, dex, dex, km/s), label order ``LABEL_NAMES``.

    Attributes:
        mean: (B, 4); sigma: (B, 4) marginal 1-sigma; covariance: (B, 4, 4).
    """

    mean: torch.Tensor
    sigma: torch.Tensor
    covariance: torch.Tensor


def soft_clamp(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Smooth clamp to (lo, hi): ~identity inside, saturating outside, gradient never exactly 0."""
    return lo + F.softplus(x - lo) - F.softplus(x - hi)


class _Head(nn.Module):
    """Base: a linear layer run in float32 (autocast off) on features (B, in_features)."""

    kind: str = ""

    def __init__(self, in_features: int, n_out: int, n_labels: int):
        super().__init__()
        self.n_labels = n_labels
        self.linear = nn.Linear(in_features, n_out)
        with torch.no_grad():  # start near mean 0, sigma 1: small weights, zero bias
            self.linear.weight.mul_(0.1)
            self.linear.bias.zero_()

    def _raw(self, features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.linear(features.float())


class DiagonalGaussianHead(_Head):
    """Mean and log-sigma per label; ``scale_tril`` = diag(sigma)."""

    kind = "diagonal"

    def __init__(self, in_features: int, n_labels: int = len(LABEL_NAMES)):
        super().__init__(in_features, 2 * n_labels, n_labels)

    def forward(self, features: torch.Tensor) -> GaussianOutput:
        """features (B, in_features) -> GaussianOutput(mean (B, k), diagonal scale_tril (B, k, k))."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            raw = self._raw(features)
            mean, log_sigma = raw.split(self.n_labels, dim=-1)
            sigma = soft_clamp(log_sigma, LOG_SIGMA_MIN, LOG_SIGMA_MAX).exp()
            return GaussianOutput(mean, torch.diag_embed(sigma))


class FullGaussianHead(_Head):
    """Mean and a Cholesky factor ``L = diag(d) (I + N)``: ``d`` the positive diagonal (soft-clamped
    log, like the diagonal head) and ``N`` strictly lower triangular with entries soft-clamped to
    +-``OFFDIAG_MAX``. Correlations depend on ``N`` only, so the conditioning of L stays bounded
    (correlations up to ~0.995 between two labels remain reachable)."""

    kind = "full"

    def __init__(self, in_features: int, n_labels: int = len(LABEL_NAMES)):
        super().__init__(in_features, 2 * n_labels + n_labels * (n_labels - 1) // 2, n_labels)
        rows, cols = torch.tril_indices(n_labels, n_labels, offset=-1)
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)

    def forward(self, features: torch.Tensor) -> GaussianOutput:
        """features (B, in_features) -> GaussianOutput(mean (B, k), scale_tril (B, k, k))."""
        k = self.n_labels
        with torch.autocast(device_type=features.device.type, enabled=False):
            raw = self._raw(features)
            mean, log_diag, off = raw[:, :k], raw[:, k : 2 * k], raw[:, 2 * k :]
            diag = soft_clamp(log_diag, LOG_SIGMA_MIN, LOG_SIGMA_MAX).exp()
            unit = torch.eye(k, dtype=raw.dtype, device=raw.device).repeat(raw.shape[0], 1, 1)
            unit[:, self._rows, self._cols] = soft_clamp(off, -OFFDIAG_MAX, OFFDIAG_MAX)
            return GaussianOutput(mean, diag.unsqueeze(-1) * unit)


def make_head(kind: str, in_features: int, n_labels: int = len(LABEL_NAMES)) -> _Head:
    """The head named ``kind`` ('diagonal' or 'full')."""
    if kind == "diagonal":
        return DiagonalGaussianHead(in_features, n_labels)
    if kind == "full":
        return FullGaussianHead(in_features, n_labels)
    raise ValueError(f"unknown head {kind!r}; choose one of {HEAD_KINDS}")


def gaussian_nll(output: GaussianOutput, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Negative log-likelihood of ``target`` (B, k) (normalised labels) under ``output`` (eq. 2).

    Computed in float32 (float64 if the inputs are float64) with a triangular solve.
    Returns a scalar for ``reduction`` 'mean' or 'sum', (B,) for 'none'. Matches
    ``-torch.distributions.MultivariateNormal(mean, scale_tril=L).log_prob(target)``.
    """
    dtype = torch.float64 if output.mean.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=target.device.type, enabled=False):
        mean, tril = output.mean.to(dtype), output.scale_tril.to(dtype)
        diff = (target.to(dtype) - mean).unsqueeze(-1)
        z = torch.linalg.solve_triangular(tril, diff, upper=False).squeeze(-1)
        k = mean.shape[-1]
        nll = 0.5 * z.square().sum(-1) + torch.diagonal(tril, dim1=-2, dim2=-1).log().sum(-1) + 0.5 * k * math.log(2 * math.pi)
    if reduction == "mean":
        return nll.mean()
    if reduction == "sum":
        return nll.sum()
    if reduction == "none":
        return nll
    raise ValueError(f"unknown reduction {reduction!r}")


def beta_nll_weights(output: GaussianOutput, beta: float) -> torch.Tensor:
    """Per-sample weights (B,) of the beta-NLL (Seitzer et al. 2022, arXiv:2203.09168): the
    predicted variance to the power ``beta``, detached, so that samples the net finds uncertain
    (e.g. hot stars with few lines) keep their pull on the mean instead of being discounted by
    their own large sigma (beta 0: the plain NLL, weights 1; beta 1: the mean's gradient is the
    MSE's). With k labels the variance is the geometric mean ``det(Sigma)^(1/k)``, so the same
    weight serves the diagonal and the full-covariance head."""
    if beta == 0:
        return torch.ones(output.mean.shape[0], device=output.mean.device)
    with torch.no_grad(), torch.autocast(device_type=output.mean.device.type, enabled=False):
        log_diag = torch.diagonal(output.scale_tril.float(), dim1=-2, dim2=-1).log()
        return torch.exp(2.0 * beta * log_diag.mean(-1))


def combine_gaussians(outputs: Sequence[GaussianOutput], diagonal: bool) -> GaussianOutput:
    """Average K Gaussians of the same batch into one (used by the attention net's K heads).

    The result has the moments of the equal-weight mixture: mean = average of the means,
    covariance = average of the covariances + covariance of the means about their average (law of
    total variance), so disagreement between heads widens the uncertainty. With ``diagonal`` the
    off-diagonal terms are dropped (a diagonal model stays diagonal). The Cholesky factor of the
    full result is taken in float64 (the sum of positive-definite matrices is positive definite).
    """
    if len(outputs) == 1:
        return outputs[0]
    means = torch.stack([o.mean for o in outputs])  # (K, B, k)
    covs = torch.stack([o.covariance for o in outputs])  # (K, B, k, k)
    mean = means.mean(0)
    d = means - mean
    cov = covs.mean(0) + (d.unsqueeze(-1) * d.unsqueeze(-2)).mean(0)
    if diagonal:
        return GaussianOutput(mean, torch.diag_embed(torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()))
    cov64 = cov.double()
    cov64 = 0.5 * (cov64 + cov64.transpose(-1, -2))
    return GaussianOutput(mean, torch.linalg.cholesky(cov64).to(mean.dtype))


def to_physical(output: GaussianOutput, scaler: LabelScaler, sigma_scale: Sequence[float] | torch.Tensor | None = None) -> PhysicalGaussian:
    """Mean, marginal sigma and covariance in physical units.

    ``sigma_scale`` (k,) are per-label calibration factors s: the calibrated covariance is
    ``diag(s) C diag(s)`` (each sigma times its factor, correlations unchanged). None = all 1.
    """
    cov_z = output.covariance
    if sigma_scale is not None:
        s = torch.as_tensor(sigma_scale, dtype=cov_z.dtype, device=cov_z.device)
        cov_z = cov_z * s[:, None] * s[None, :]
    cov = scaler.cov_to_physical(cov_z)
    return PhysicalGaussian(
        mean=scaler.denormalise(output.mean),
        sigma=torch.diagonal(cov, dim1=-2, dim2=-1).clamp_min(0).sqrt(),
        covariance=cov,
    )

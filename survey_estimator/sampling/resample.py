"""Resampling fine-grid spectra into the canonical (8, 4096) layout with a Doppler shift, batched.

A pixel of the layout at observed wavelength lambda_obs sees the rest-frame wavelength
lambda_obs / D, with D = ``doppler_factor(rv)`` (lambda_obs = lambda_rest * D). On the
log-uniform fine grid that is a fractional index, so resampling is one gather of the four
neighbouring fine pixels and Keys cubic convolution (:mod:`survey_estimator.cubic`; point
sampling: the grid already carries the R = 115,000 instrumental profile).
"""
from __future__ import annotations

import numpy as np
import torch

from .. import cubic
from ..layout import canonical_wave, doppler_factor


class LayoutResampler:
    """Fine grid (L,) -> target layout (O, P) for a batch with per-spectrum Doppler factors.

    Args:
        wave: (L,) float64 fine-grid wavelengths (A), uniform in log(lambda).
        target: (O, P) float64 observed wavelengths (A); default the canonical layout.
        device: where the index arithmetic runs.
    """

    def __init__(self, wave: np.ndarray, target: np.ndarray | None = None, device: str | torch.device = "cpu"):
        wave = np.asarray(wave, dtype=np.float64)
        self.n_fine = wave.size
        self.log_w0 = float(np.log(wave[0]))
        self.log_step = float(np.mean(np.diff(np.log(wave))))
        target = canonical_wave() if target is None else np.asarray(target, dtype=np.float64)
        self.shape = target.shape
        self.device = torch.device(device)
        u = (np.log(target) - self.log_w0) / self.log_step  # fine-grid index of each target pixel at rest
        base = np.floor(u)
        self._base = torch.as_tensor(base, dtype=torch.long, device=self.device)  # (O, P)
        self._frac = torch.as_tensor(u - base, dtype=torch.float32, device=self.device)  # (O, P) in [0, 1)

    def __call__(self, flux: torch.Tensor, factor: torch.Tensor | float = 1.0) -> torch.Tensor:
        """Resample.

        Args:
            flux: (B, L) fine-grid flux (rest frame).
            factor: (B,) or scalar Doppler factor lambda_obs / lambda_rest (see :func:`doppler_factors`).
        Returns:
            (B, O, P) flux at the target wavelengths, dtype of ``flux``.
        Raises:
            ValueError when a shifted target pixel falls outside the fine grid (RV beyond its margin).
        """
        B = flux.shape[0]
        f = torch.as_tensor(factor, dtype=torch.float64, device=self.device).reshape(-1)
        f = f.expand(B) if f.numel() == 1 else f
        shift = (torch.log(f) / self.log_step).to(self.device)  # (B,) fine pixels, float64
        whole = torch.floor(shift)
        # index = base + frac - shift, split so that float32 only carries values of order 1
        d = self._frac[None] - (shift - whole).to(torch.float32)[:, None, None]  # (B, O, P) in (-1, 1)
        step = torch.floor(d)
        i0 = self._base[None] - whole.long()[:, None, None] + step.long()
        a = (d - step).to(flux.dtype)
        if int(i0.min()) < 1 or int(i0.max()) > self.n_fine - 3:
            raise ValueError("Doppler shift moves the layout outside the fine grid; |RV| is beyond the grid's margin")
        a = a.reshape(B, -1).to(flux.device)
        i0 = i0.reshape(B, -1).to(flux.device)
        out = torch.zeros_like(a)
        for k, w in zip(range(-1, 3), cubic.weights(a)):
            out += w * torch.gather(flux, 1, i0 + k)
        return out.reshape(B, *self.shape)


def doppler_factors(rv_kms: torch.Tensor | float, berv_kms: torch.Tensor | float = 0.0) -> torch.Tensor:
    """lambda_obs / lambda_rest for a star of radial velocity ``rv`` seen from an observer with
    barycentric velocity ``berv`` (DRS convention: RV_bary = RV_observed + BERV), i.e.
    ``D(rv) / D(berv)`` ~ ``D(rv - berv)``. float64 tensor, broadcast shape."""
    rv = torch.as_tensor(rv_kms, dtype=torch.float64)
    berv = torch.as_tensor(berv_kms, dtype=torch.float64)
    d = doppler_factor(rv.detach().cpu().numpy()) / doppler_factor(berv.detach().cpu().numpy())
    return torch.as_tensor(d, dtype=torch.float64, device=rv.device)

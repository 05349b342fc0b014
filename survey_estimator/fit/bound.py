"""The Cramer-Rao bound of the forward model: the best 1-sigma any unbiased estimator can reach.

The Fisher matrix is the fit's own normal matrix (:func:`.likelihood.normal_equations`) at the
true parameters, with photon noise of a given S/N, so the bound marginalises exactly the nuisances
the fit has (RV residual, per-order continuum polynomial).
"""
from __future__ import annotations

import numpy as np
import torch

from ..forward import ForwardModel
from . import continuum, likelihood


def noise_variance(spec: torch.Tensor, snr) -> torch.Tensor:
    """Photon-noise variance (B, O, P) of a normalised spectrum whose continuum S/N per pixel is
    ``snr`` (B,) or scalar: var = spec / snr^2 (counts scale with the flux)."""
    snr = torch.as_tensor(snr, dtype=spec.dtype, device=spec.device).reshape(-1, 1, 1)
    return spec.clamp_min(1e-6) / snr**2


def cramer_rao(model: ForwardModel, labels, snr=None, rv=0.0, mask=None, resolution: float | None = None,
               degree: int = continuum.DEGREE, variance=None) -> np.ndarray:
    """(B, 5) Cramer-Rao 1-sigma of (Teff K, log g, [M/H], v sin i km/s, RV km/s).

    Args:
        labels: (B, 4) true labels; snr: (B,) or scalar continuum S/N per pixel (photon noise of
            the normalised spectrum, :func:`noise_variance`), unless ``variance`` gives the
            per-pixel variance (B, O, P) of the normalised flux itself (e.g. a sampled batch's).
        mask: (B, O, P) usable pixels (default all).
    """
    labels = torch.as_tensor(np.asarray(labels, dtype=np.float64)).reshape(-1, 4)
    spec, jac = model.spectra_and_jacobian(labels, torch.as_tensor(np.asarray(rv, dtype=np.float64)), resolution)
    spec, jac = spec.to(torch.float64), jac.to(torch.float64)
    mask = torch.ones_like(spec, dtype=torch.bool) if mask is None else torch.as_tensor(np.asarray(mask)).bool()
    var = noise_variance(spec, snr) if variance is None else torch.as_tensor(np.asarray(variance), dtype=torch.float64)
    w = likelihood.weights(mask, var, spec, 0.0)
    basis = continuum.design(spec.shape[-1], degree, dtype=torch.float64)
    cov = likelihood.covariance(likelihood.normal_equations(spec, w, spec, jac, torch.ones_like(spec), basis))
    return torch.sqrt(torch.diagonal(cov, dim1=1, dim2=2)).numpy()

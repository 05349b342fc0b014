"""Variance estimates for files without an error array.

Shapes follow the flux array: (n_orders, n_pixels) or (n_pixels,).
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import median_filter

DER_SNR_WINDOW = 201
"""Pixels over which the DER_SNR noise estimate is taken as a running median."""
DER_SNR_FACTOR = 1.482602 / np.sqrt(6.0)
"""DER_SNR (Stoehr et al. 2008): sigma = this x the median |2 f_i - f_(i-2) - f_(i+2)| for Gaussian noise."""


def count_variance(flux_adu, conad: float, sigdet_e: float):
    """Photon + readout variance of extracted counts, in ADU^2 (numpy array or torch tensor).

    ``var = max(flux, 0) / conad + (sigdet / conad)^2`` with ``conad`` in e-/ADU
    (``DRS CCD CONAD``) and ``sigdet`` the readout noise in e- (``DRS CCD SIGDET``); NaN stays
    NaN. The readers and the training sampler (:mod:`survey_estimator.sampling.sampler`) both
    estimate the variance of counts with it.
    """
    return flux_adu.clip(min=0.0) / conad + (sigdet_e / conad) ** 2


def der_snr_variance(flux: np.ndarray, window: int = DER_SNR_WINDOW) -> np.ndarray:
    """Local variance from the DER_SNR estimator (Stoehr et al. 2008) along the last axis.

    ``sigma_i = DER_SNR_FACTOR * median_window |2 f_i - f_{i-2} - f_{i+2}|``; works in any flux
    unit. Resolved absorption lines make it a slight over-estimate (conservative).
    """
    f = np.asarray(flux, dtype=np.float64)
    out = np.full(f.shape, np.nan)
    for row_in, row_out in zip(np.atleast_2d(f), np.atleast_2d(out)):
        ok = np.isfinite(row_in)
        if ok.sum() < 5:
            continue
        g = row_in[ok]
        d = np.abs(2 * g[2:-2] - g[:-4] - g[4:])
        d = np.concatenate([d[:2], d, d[-2:]])
        sigma = DER_SNR_FACTOR * median_filter(d, size=min(window, d.size), mode="nearest")
        floor = 1e-6 * max(float(np.nanmedian(np.abs(g))), 1e-30)
        row_out[ok] = np.maximum(sigma, floor) ** 2
    return out

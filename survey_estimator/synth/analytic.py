"""A cheap, deterministic analytic synthesis backend for tests and demos (no physics claims).

300 Voigt absorption lines at fixed air wavelengths across the fine grid. Each line's central
optical depth varies smoothly with the labels::

    ln tau0 = ln s0 + ln(10) * k_m * [M/H] + k_t * (5750 - Teff) / 1000 + k_g * (log g - 4.5)

(neutral-like lines strengthen towards cool stars, ion-like lines with lower gravity), the
Gaussian width combines thermal, microturbulent and instrumental (R) broadening, the Lorentz
width grows with gravity, and the flux is ``1 - 0.95 * (1 - exp(-sum_i tau_i(lambda)))``, so it stays in [0.05, 1].

Like ATLAS9 it has a hole: nodes with Teff >= 8000 K and log g <= 1.0 raise
:class:`MissingAtmosphere`, so missing-node handling is exercised without PySME.
"""
from __future__ import annotations

import numpy as np
from scipy.special import voigt_profile

from ..layout import C_KMS
from .backend import BackendConfig, MissingAtmosphere, base_physics

N_LINES = 300
SEED = 20240501
VERSION = "analytic/1"
MAX_DEPTH = 0.95
"""Saturated lines bottom out at 1 - MAX_DEPTH, like real line cores."""


def has_atmosphere(teff: float, logg: float, mh: float) -> bool:
    """The analytic backend's fake ATLAS9 coverage: everything but the hot, low-gravity corner."""
    return not (teff >= 8000.0 and logg <= 1.0)


class AnalyticBackend:
    """Deterministic analytic spectra on the fine grid; see the module docstring."""

    def __init__(self, config: BackendConfig | None = None):
        self.config = config or BackendConfig(name="analytic")
        self.wave = self.config.wave()
        rng = np.random.default_rng(SEED)
        lo, hi = self.wave[0] + 1.0, self.wave[-1] - 1.0
        n = N_LINES
        self.centre = np.sort(rng.uniform(lo, hi, n))  # A, air
        self.s0 = np.exp(rng.uniform(np.log(0.05), np.log(8.0), n))  # central depth scale
        ion = rng.random(n) < 0.25
        self.k_m = rng.uniform(0.7, 1.1, n)
        self.k_t = np.where(ion, rng.uniform(-0.6, 0.1, n), rng.uniform(0.3, 1.5, n))
        self.k_g = np.where(ion, rng.uniform(-0.5, -0.2, n), rng.uniform(0.0, 0.2, n))
        self.mass_amu = rng.uniform(12.0, 90.0, n)
        self.gamma0 = rng.uniform(0.005, 0.03, n)  # Lorentz HWHM at log g = 4.5, A

    def physics(self) -> dict:
        return dict(base_physics(self.config, self.wave), analytic_version=VERSION, analytic_lines=N_LINES)

    def synthesize(self, teff: float, logg: float, mh: float) -> np.ndarray:
        """float32 (L,) flux in (0, 1]; raises MissingAtmosphere in the hot low-gravity corner."""
        if not has_atmosphere(teff, logg, mh):
            raise MissingAtmosphere(
                f"no model atmosphere at Teff={teff:g} K, log g={logg:g} (analytic backend mimics the "
                "ATLAS9 hole: Teff >= 8000 K and log g <= 1.0)"
            )
        tau0 = self.s0 * np.exp(
            np.log(10.0) * self.k_m * mh + self.k_t * (5750.0 - teff) / 1000.0 + self.k_g * (logg - 4.5)
        )
        vth2 = 2 * 1.380649e-23 * teff / (self.mass_amu * 1.66054e-27) / 1e6  # (km/s)^2
        sigma_v = np.sqrt(0.5 * (vth2 + self.config.vmic_kms**2) + (C_KMS / self.config.resolution / 2.3548) ** 2)
        sigma = self.centre * sigma_v / C_KMS  # A
        gamma = self.gamma0 * 10 ** (0.3 * (logg - 4.5))
        peak = voigt_profile(0.0, sigma, gamma)
        tau = np.zeros_like(self.wave)
        half = np.maximum(10 * sigma, 60 * gamma)
        i0 = np.searchsorted(self.wave, self.centre - half)
        i1 = np.searchsorted(self.wave, self.centre + half)
        for k in range(N_LINES):
            w = self.wave[i0[k] : i1[k]]
            tau[i0[k] : i1[k]] += tau0[k] * voigt_profile(w - self.centre[k], sigma[k], gamma[k]) / peak[k]
        return (1.0 - MAX_DEPTH * (1.0 - np.exp(-tau))).astype(np.float32)

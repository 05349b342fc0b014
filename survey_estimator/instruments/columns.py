"""Common names of the wavelength, flux, error and quality columns of tabulated spectra.

Used by the FITS binary-table reader (:mod:`.table`), the plain-text reader (:mod:`.text`, for a
header line naming its columns) and format detection (:mod:`.detect`). Names are matched without
regard to case, spaces, dashes or underscores ("Flux_Err" = "fluxerr").
"""
from __future__ import annotations

from collections.abc import Iterable

WAVE_AIR = ("wavelength_air", "wave_air", "wavelengthair", "awav", "lambda_air", "air_wave", "wl_air")
"""Wavelength columns that say they are in air."""
WAVE_VACUUM = ("wavelength_vac", "wave_vac", "wavelength_vacuum", "lambda_vac", "vac_wave", "vacwave", "wl_vac")
"""Wavelength columns that say they are in vacuum."""
WAVE_PLAIN = ("wave", "wavelength", "waveobs", "lambda", "lam", "wl", "wav", "wavelengths", "angstrom", "wave_obs")
"""Wavelength columns that do not say which medium (linear wavelength in A or nm)."""
WAVE_LOG10 = ("loglam", "log_lambda", "log_wave", "logwave", "log10lam")
"""Columns holding log10(wavelength / A)."""
FLUX = ("flux", "flux_norm", "flux_normalized", "norm_flux", "normflux", "fnorm", "flux_reduced", "flux_cal",
        "flux_el", "spec", "spectrum", "intensity", "counts", "fl")
"""Flux columns, in order of preference."""
ERROR = ("err", "error", "sigma", "flux_err", "flux_error", "err_flux", "error_flux", "e_flux", "eflux", "fluxerr",
         "sig", "uncertainty", "unc", "noise", "std", "stddev", "err_el")
"""One-sigma error columns (same unit as the flux)."""
VARIANCE = ("var", "variance", "flux_var", "var_flux")
"""Variance columns (flux unit squared)."""
IVAR = ("ivar", "inverse_variance", "invvar", "flux_ivar")
"""Inverse-variance columns."""
QUALITY = ("quality", "qual", "qual_el", "dq", "flag", "flags", "bad", "badpix", "mask", "pixel_mask")
"""Quality columns: 0 = good (ESO convention); see :func:`survey_estimator.instruments.spectrum1d.quality_mask`."""

WAVE = WAVE_AIR + WAVE_PLAIN + WAVE_VACUUM + WAVE_LOG10
"""Every wavelength name, air first (an air column is preferred where a file has both)."""


def key(name: str) -> str:
    """Normalised column name: lower case without spaces, dashes or underscores."""
    return "".join(ch for ch in str(name).strip().lower() if ch not in " -_")


def find(names: Iterable[str], candidates: Iterable[str]) -> str | None:
    """The first of ``names`` (as written) that matches ``candidates`` in the candidates' order."""
    by_key = {}
    for n in names:
        by_key.setdefault(key(n), n)
    for c in candidates:
        if key(c) in by_key:
            return by_key[key(c)]
    return None


def medium_of(wave_name: str) -> str | None:
    """"air" / "vacuum" when a wavelength column's name says so, else None."""
    k = key(wave_name)
    if k in {key(n) for n in WAVE_AIR}:
        return "air"
    if k in {key(n) for n in WAVE_VACUUM}:
        return "vacuum"
    return None


def is_log10(wave_name: str) -> bool:
    """True for a column of log10(wavelength)."""
    return key(wave_name) in {key(n) for n in WAVE_LOG10}

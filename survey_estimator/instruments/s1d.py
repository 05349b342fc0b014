"""1D spectra with a linear wavelength WCS: old-DRS ``*_s1d_A.fits`` and similar.

``lambda_i = CRVAL1 + (i + 1 - CRPIX1) * CDELT1`` (or ``CD1_1``), Angstrom, air. The old-DRS s1d
is barycentric (BERV applied) with the star's RV still in it; ``SPECSYS`` overrides where
present. No error array: the variance is estimated from the data (DER_SNR).
"""
from __future__ import annotations

import numpy as np
from astropy.io import fits

from ..observation import Observation, ReadError
from .detect import Cards
from .metadata import common, old_drs
from .noise import der_snr_variance

FRAMES = {"BARYCENT": "barycentric", "TOPOCENT": "observatory", "SOURCE": "rest"}
"""FITS ``SPECSYS`` values and the frames they mean."""


def frame_from_specsys(header: fits.Header, default: str) -> str:
    """Wavelength frame from ``SPECSYS`` (FITS WCS paper III), else ``default``."""
    return FRAMES.get(str(header.get("SPECSYS", "")).strip().upper(), default)


def medium_from_header(header: fits.Header, default: str = "air") -> str:
    """"vacuum" when the WCS type says so (``CTYPE1 = 'WAVE'`` or 'VAC' in it), else ``default``."""
    ctype = str(header.get("CTYPE1", "")).strip().upper()
    if ctype == "WAVE" or "VAC" in ctype:
        return "vacuum"
    if ctype == "AWAV":
        return "air"
    return default


def read(name: str, hdul: fits.HDUList, cards: Cards, instrument: str, blaze=None) -> Observation:
    """Read a 1D linear-WCS spectrum (already opened and checked) into an :class:`Observation`."""
    header = hdul[0].header
    flux = np.asarray(hdul[0].data, dtype=np.float64).reshape(-1)
    crval = header.get("CRVAL1")
    cdelt = header.get("CDELT1", header.get("CD1_1"))
    if crval is None or cdelt is None:
        raise ReadError(name, "missing wavelength solution (1D spectrum without CRVAL1/CDELT1 cards)")
    crpix = float(header.get("CRPIX1", 1.0))
    wave = float(crval) + (np.arange(flux.size) + 1 - crpix) * float(cdelt)
    unit = str(header.get("CUNIT1", header.get("CTYPE1", "Angstrom"))).strip().lower()
    if unit in ("nm", "nanometer"):
        wave = wave * 10.0
    if not np.all(np.diff(wave) > 0):
        raise ReadError(name, f"wavelength WCS is not increasing (CDELT1={cdelt})")
    variance = der_snr_variance(flux)
    mask = np.isfinite(flux) & np.isfinite(variance)
    return Observation(
        flux=flux,
        variance=variance,
        wave=wave,
        mask=mask,
        medium=medium_from_header(header),
        frame=frame_from_specsys(header, "barycentric"),
        instrument=instrument,
        kind="s1d",
        source=name,
        **common(header, cards, instrument),
        **old_drs(header, cards),
    )

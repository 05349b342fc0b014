"""New-DRS 2D spectra (``*_S2D_A.fits``): HARPS-N DRS 2.x/3.x and the ESPRESSO pipeline family.

Extensions are found by NAME (never by index): SCIDATA (flux, blaze-corrected in S2D_A),
ERRDATA (1-sigma error), QUALDATA (0 = good), WAVEDATA_AIR_BARY or WAVEDATA_VAC_BARY
(barycentric wavelengths, Angstrom). Air is preferred; vacuum is passed on as such and converted
by the preprocessing. The pipeline's RV is ``QC CCF RV`` (barycentric, km/s).
"""
from __future__ import annotations

import numpy as np
from astropy.io import fits

from ..observation import Observation, ReadError
from .detect import Cards
from .metadata import common, new_drs
from .noise import der_snr_variance

WAVE_EXTENSIONS = (("WAVEDATA_AIR_BARY", "air"), ("WAVEDATA_VAC_BARY", "vacuum"))


def _ext(hdul: fits.HDUList, name: str):
    try:
        return hdul[name]
    except KeyError:
        return None


def read(name: str, hdul: fits.HDUList, cards: Cards, instrument: str, blaze=None) -> Observation:
    """Read an S2D product (already opened and checked) into an :class:`Observation`."""
    header = hdul[0].header
    flux = np.asarray(hdul["SCIDATA"].data, dtype=np.float64)
    for ext, medium in WAVE_EXTENSIONS:
        hdu = _ext(hdul, ext)
        if hdu is not None and hdu.data is not None:
            wave = np.asarray(hdu.data, dtype=np.float64)
            break
    else:
        raise ReadError(name, "missing wavelength solution: no WAVEDATA_AIR_BARY or WAVEDATA_VAC_BARY extension")
    if flux.ndim != 2 or wave.shape != flux.shape:
        raise ReadError(name, f"wrong shape: SCIDATA {flux.shape} vs {ext} {wave.shape}")
    err = _ext(hdul, "ERRDATA")
    if err is not None and err.data is not None and err.data.shape == flux.shape:
        variance = np.asarray(err.data, dtype=np.float64) ** 2
    else:
        variance = der_snr_variance(flux)
    mask = np.isfinite(flux) & np.isfinite(variance) & np.isfinite(wave) & (wave > 0)
    qual = _ext(hdul, "QUALDATA")
    if qual is not None and qual.data is not None and qual.data.shape == flux.shape:
        mask &= np.asarray(qual.data) == 0
    wave = np.where(np.isfinite(wave) & (wave > 0), wave, np.nan)
    return Observation(
        flux=flux,
        variance=variance,
        wave=wave,
        mask=mask,
        medium=medium,
        medium_source="header",
        frame="barycentric",
        instrument=instrument,
        kind="s2d",
        source=name,
        blaze_corrected="BLAZE" not in str(cards.get("PRO CATG", "")).upper(),
        orders=np.arange(flux.shape[0]),
        **common(header, cards, instrument),
        **new_drs(header, cards),
    )

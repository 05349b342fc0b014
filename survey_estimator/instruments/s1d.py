"""1D FITS images with a wavelength WCS: old-DRS ``*_s1d_A.fits``, IRAF/iSpec/MIKE/UVES merged
spectra, the Gaia benchmark library, with or without instrument cards.

The spectrum is the first image HDU holding data (primary or extension), ``(n_pixels,)``; an IRAF
``(n_bands, n_pixels)`` image with ``BANDID`` cards gives band 1 as the flux and a band named
sigma/error as the error. Wavelength of pixel i (0-based), Angstrom (``CUNIT1`` / the IRAF
``WAT1_001`` units; nm converted)::

    linear:            lambda_i = CRVAL1 + (i + 1 - CRPIX1) * CDELT1          (or CD1_1)
    log10 (DC-FLAG=1): lambda_i = 10 ** (CRVAL1 + (i + 1 - CRPIX1) * CDELT1)
    FITS 'WAVE-LOG':   lambda_i = CRVAL1 * exp((i + 1 - CRPIX1) * CDELT1 / CRVAL1)

A CRVAL1 between 2.5 and 5 without DC-FLAG is read as log10 (noted). An error, sigma, variance
or inverse-variance array is taken from an image extension of the same length named so
(:data:`ERROR_EXTNAMES`), else the variance is estimated (DER_SNR).

Medium from ``CTYPE1`` / ``AIRORVAC`` / ``VACUUM``; frame from ``SPECSYS``; the old- and new-DRS
pipelines write air, barycentric 1D spectra; anything else is assumed air and its RV measured.
"""
from __future__ import annotations

import re

import numpy as np
from astropy.io import fits

from ..observation import Observation, ReadError
from . import spectrum1d
from .detect import Cards, first_image
from .metadata import common, frame_from_cards, medium_from_cards, pipeline

ERROR_EXTNAMES = {"ERR": "error", "ERROR": "error", "ERRS": "error", "SIGMA": "error", "SIG": "error", "UNC": "error",
                  "NOISE": "error", "STAT": "error", "VAR": "variance", "VARIANCE": "variance", "IVAR": "ivar", "INVVAR": "ivar"}
"""Extension names of a noise array and what they hold."""


def wcs_wavelengths(name: str, header: fits.Header, n: int, notes: list[str]) -> tuple[np.ndarray, str | None]:
    """Wavelengths of ``n`` pixels from the 1D WCS of ``header`` and their unit (see module docstring).

    Raises:
        ReadError: no ``CRVAL1`` / ``CDELT1`` (or ``CD1_1``).
    """
    crval = header.get("CRVAL1")
    cdelt = header.get("CDELT1", header.get("CD1_1"))
    if crval is None or cdelt is None:
        raise ReadError(name, "missing wavelength solution (1D spectrum without CRVAL1/CDELT1 cards)")
    crval, cdelt = float(crval), float(cdelt)
    if cdelt == 0:
        raise ReadError(name, "missing wavelength solution (CDELT1 = 0)")
    x = np.arange(n) + 1 - float(header.get("CRPIX1", 1.0))
    ctype = str(header.get("CTYPE1", "") or "").strip().upper()
    if ctype.endswith("-LOG"):
        wave = crval * np.exp(x * cdelt / crval)
        notes.append(f"logarithmic WCS ({ctype})")
    elif int(header.get("DC-FLAG", 0) or 0) == 1:
        wave = 10.0 ** (crval + x * cdelt)
        notes.append("log10-linear WCS (DC-FLAG = 1)")
    elif 2.5 < crval < 5 and abs(cdelt) < 0.01:
        wave = 10.0 ** (crval + x * cdelt)
        notes.append(f"CRVAL1 = {crval} read as log10(wavelength) (no DC-FLAG card)")
    else:
        wave = crval + x * cdelt
    unit = header.get("CUNIT1")
    if not unit:
        m = re.search(r"units=(\w+)", str(header.get("WAT1_001", "")))
        unit = m.group(1) if m else (ctype if ctype in ("ANGSTROM", "NM") else None)
    return wave, unit


def _bands(header: fits.Header, data: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(flux, error) from an IRAF multi-band 1D image: band 1 is the spectrum; a band whose
    ``BANDIDk`` mentions sigma/error is its error."""
    data = data.reshape(-1, data.shape[-1])
    error = None
    for k in range(1, data.shape[0]):
        if re.search(r"sigma|error", str(header.get(f"BANDID{k + 1}", "")), re.I):
            error = data[k]
    return data[0], error


def _noise(hdul: fits.HDUList, index: int, n: int) -> dict:
    """``error=`` / ``variance=`` from an extension named in :data:`ERROR_EXTNAMES` of length n."""
    for i, hdu in enumerate(hdul):
        what = ERROR_EXTNAMES.get(hdu.name.upper())
        if i == index or what is None or hdu.data is None or np.asarray(hdu.data).size != n:
            continue
        a = np.asarray(hdu.data, dtype=np.float64).reshape(-1)
        if what == "ivar":
            with np.errstate(divide="ignore"):
                return {"variance": np.where(a > 0, 1.0 / a, np.nan)}
        return {what: a}
    return {}


def read(name: str, hdul: fits.HDUList, cards: Cards, instrument: str, blaze=None) -> Observation:
    """Read a 1D WCS spectrum (already opened and checked) into an :class:`Observation`."""
    primary = hdul[0].header
    index = first_image(hdul)
    header = hdul[index].header
    data = np.asarray(hdul[index].data, dtype=np.float64)
    notes: list[str] = []
    error = None
    if data.ndim > 1 and sum(n > 1 for n in data.shape) > 1:
        flux, error = _bands(header, data)
        notes.append(f"IRAF multi-band image {data.shape}: band 1 read as the flux" + (", the sigma band as its error" if error is not None else ""))
    else:
        flux = data.reshape(-1)
    wave, unit = wcs_wavelengths(name, header, flux.size, notes)
    noise = {"error": error} if error is not None else _noise(hdul, index, flux.size)
    spec = spectrum1d.build(name, wave, flux, unit=unit, notes=notes, **noise)
    family, drs = pipeline(primary, cards)
    return spec.observation(name, "s1d", instrument, medium=medium_from_cards(header) or medium_from_cards(primary),
                            frame=frame_from_cards(header, primary), convention=family is not None,
                            **common(primary, cards, instrument), **drs)

"""Multi-order echelle images with a wavelength image (HIRES / APF / MIKE-pipeline style): a flux
image ``(n_orders, n_pixels)`` and, in another HDU of the same shape, the wavelength of every pixel
(found by :func:`~.detect.wavelength_image`: an EXTNAME like WAVE / WAVELENGTH, or an unnamed image
of wavelength-like values). Orders may overlap and run in either direction (each row is made
increasing); rows are kept separate, so preprocessing flattens each order by its own continuum
before resampling, as for any foreign layout. An image extension named like an error / variance /
inverse variance (:data:`.s1d.ERROR_EXTNAMES`) gives the noise, else it is estimated (DER_SNR).
Medium from the wavelength HDU's name (AIR / VAC) or cards, else assumed air; frame from
``SPECSYS`` else assumed.
"""
from __future__ import annotations

import numpy as np
from astropy.io import fits

from ..observation import Observation, ReadError
from .detect import Cards, first_image, wavelength_image
from .metadata import common, frame_from_cards, medium_from_cards, pipeline
from .noise import der_snr_variance
from .s1d import ERROR_EXTNAMES
from .spectrum1d import to_angstrom


def _noise(hdul: fits.HDUList, shape: tuple[int, int], skip: set[int]) -> np.ndarray | None:
    """Variance image from an error / variance / inverse-variance extension of ``shape``, or None."""
    for i, hdu in enumerate(hdul):
        what = ERROR_EXTNAMES.get(hdu.name.upper())
        if i in skip or what is None or hdu.data is None or hdu.data.shape != shape:
            continue
        a = np.asarray(hdu.data, dtype=np.float64)
        if what == "ivar":
            with np.errstate(divide="ignore"):
                return np.where(a > 0, 1.0 / a, np.nan)
        return a**2 if what == "error" else a
    return None


def read(name: str, hdul: fits.HDUList, cards: Cards, instrument: str, blaze=None) -> Observation:
    """Read a multi-order image with a wavelength image (already opened and checked)."""
    primary = hdul[0].header
    index = first_image(hdul)
    flux = np.asarray(hdul[index].data, dtype=np.float64)
    flux = flux.reshape(-1, flux.shape[-1])
    w_index = wavelength_image(hdul, index)
    if w_index is None:  # detect_format checked it; a direct call may not have
        raise ReadError(name, "missing wavelength solution: no wavelength image of the flux image's shape")
    notes = [f"{flux.shape[0]} orders x {flux.shape[1]} pixels, wavelengths from HDU {w_index} ({hdul[w_index].name or 'unnamed'})",
             "blaze state unknown: each order is flattened by its continuum in preprocessing"]
    wave_hdu = hdul[w_index]
    wave = np.asarray(wave_hdu.data, dtype=np.float64).reshape(flux.shape)
    unit = wave_hdu.header.get("BUNIT") or wave_hdu.header.get("CUNIT1")
    wave = to_angstrom(wave, unit if unit and str(unit).lower() != "pixel" else None, notes)
    variance = _noise(hdul, flux.shape, {index, w_index})
    if variance is None:
        variance = der_snr_variance(flux)
        notes.append("no error image: variance estimated from the flux (DER_SNR)")
    descending = np.nanmedian(np.diff(wave, axis=1), axis=1) < 0
    if descending.any():
        for a in (flux, wave, variance):
            a[descending] = a[descending, ::-1]
        notes.append(f"{int(descending.sum())} orders with descending wavelengths reversed")
    bad_rows = [i for i, d in enumerate(np.diff(wave, axis=1)) if not np.all(d[np.isfinite(d)] > 0)]
    if bad_rows:
        raise ReadError(name, f"wavelengths not monotonic along orders {bad_rows[:5]}")
    order_names = (wave_hdu.name or "").upper()
    medium = "air" if "AIR" in order_names else ("vacuum" if "VAC" in order_names else None)
    medium = medium or medium_from_cards(wave_hdu.header) or medium_from_cards(primary)
    frame = frame_from_cards(primary, hdul[index].header)
    family, drs = pipeline(primary, cards)
    mask = np.isfinite(flux) & (flux != 0) & np.isfinite(variance) & (variance > 0) & np.isfinite(wave) & (wave > 0)
    return Observation(
        flux=flux,
        variance=variance,
        wave=wave,
        mask=mask,
        medium=medium or "air",
        medium_source="header" if medium else "assumed",
        frame=frame or "barycentric",
        frame_source="header" if frame else ("format" if family else "assumed"),
        instrument=instrument,
        kind="echelle",
        source=name,
        orders=np.arange(flux.shape[0]),
        notes=notes,
        **{"drs_version": "", **common(primary, cards, instrument), **drs},
    )

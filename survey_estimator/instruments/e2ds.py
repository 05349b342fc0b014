"""Old-DRS extracted 2D spectra (``*_e2ds_A.fits``): HARPS-N (``HIERARCH TNG``) and HARPS (``HIERARCH ESO``).

Primary image (n_orders, 4096) of extracted counts, blaze NOT removed. Wavelengths (air,
observatory frame) from the header polynomial::

    lambda[o, x] = sum_{p=0..d} C[o*(d+1) + p] * x**p,   d = DRS CAL TH DEG LL, x = 0..4095

The matching blaze (``DRS BLAZE FILE``) is found by :func:`survey_estimator.instruments.blaze.find_blaze`
(next to the file, with ':' written as '-', optionally gzipped, or one YYYY-MM-DD night folder
away); without it the flux stays blaze-shaped and the observation says so (``blaze_corrected=False``).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

import numpy as np
from astropy.io import fits

from ..layout import rows_near_band, wavelength_solution
from ..observation import Observation, ReadError
from .blaze import blaze_named, find_blaze
from .detect import Cards, Source, fits_from_bytes, read_bytes
from .fastfits import CardIndex, card_values, primary_image
from .metadata import common, old_drs
from .noise import count_variance

log = logging.getLogger(__name__)

Header = Union[fits.Header, Mapping]
"""A primary header: astropy's, or the card index of :mod:`.fastfits` (the same lookups)."""


def wavelengths(name: str, header: Header, cards: Cards, shape: tuple[int, int]) -> np.ndarray:
    """Evaluate the header wavelength solution for an image of ``shape`` (n_orders, n_pixels).

    Raises:
        ReadError: missing degree or coefficient cards, or a coefficient count that does not match
            the number of rows.
    """
    degree = cards.get("DRS CAL TH DEG LL")
    prefix = next((p for p in (cards.prefix, "TNG", "ESO") if f"{p} DRS CAL TH COEFF LL0" in header), None)
    if degree is None or prefix is None:
        raise ReadError(name, "missing wavelength solution (no DRS CAL TH DEG LL / COEFF LL cards)")
    degree = int(degree)
    n_orders, n_pixels = shape
    need = n_orders * (degree + 1)
    keys = [f"{prefix} DRS CAL TH COEFF LL{i}" for i in range(need)]
    missing = [i for i, k in enumerate(keys) if k not in header]
    if missing:
        raise ReadError(
            name,
            f"wrong shape or missing cards: {n_orders} rows need {need} COEFF LL cards, "
            f"{len(missing)} missing (first: LL{missing[0]})",
        )
    if isinstance(header, CardIndex):  # the night's calibration cards repeat: parsed once
        values = card_values("".join(header.card(k) for k in keys))
    else:
        values = [header[k] for k in keys]
    return wavelength_solution(np.array([float(v) for v in values]), degree, n_pixels)


def saturation_level(bits: int = 16, window: float = 17) -> float:
    """Upper bound (ADU) of an unsaturated extracted pixel: every one of the ``window`` detector
    pixels summed by the extraction at full scale (2**bits - 1)."""
    return (2.0**bits - 1) * window


def read_blaze(source: Source, shape: tuple[int, int], rows: np.ndarray | None = None) -> np.ndarray:
    """Blaze image (n_orders, n_pixels), ~1 at peak; NaN where not positive; only ``rows``
    (native row indices) where given.

    A blaze product holding only its primary image is read without astropy (:func:`.fastfits.primary_image`).

    Raises:
        ReadError: unreadable file or a shape that does not match the spectrum.
    """
    name, raw, gzipped = read_bytes(source)
    data = _blaze_image(name, raw, gzipped)
    if data is None or data.shape != shape:
        got = None if data is None else data.shape
        raise ReadError(name, f"wrong shape: blaze {got} does not match spectrum {shape}")
    return data if rows is None else data[rows]


@lru_cache(maxsize=4)
def _blaze_image(name: str, raw: bytes, gzipped: bool) -> np.ndarray | None:
    """The blaze image of a blaze file's bytes (float64, NaN where not positive, read-only), or
    None without one; kept for the last few files (the exposures of a night share one: their
    bytes object is hashed once and then found by identity)."""
    image = primary_image(raw)
    if image is not None:
        data = image.data
    else:
        name, hdul = fits_from_bytes(name, raw, gzipped)
        with hdul:
            data = hdul[0].data
            data = None if data is None else np.array(data)
    if data is None:
        return None
    blaze = np.asarray(data, dtype=np.float64)
    blaze = np.where(blaze > 0, blaze, np.nan)
    blaze.flags.writeable = False
    return blaze


def has_solution(header: Header) -> bool:
    """Whether a primary header carries the old-DRS wavelength solution (``DRS CAL TH DEG LL``)."""
    return any(k.endswith("DRS CAL TH DEG LL") for k in header.keys())


BlazeArg = Union[Source, Callable[[Header], Optional[Source]], None]
"""A blaze source, or a function of the primary header that returns one (or None), or None."""


def read(name: str, hdul: fits.HDUList, cards: Cards, instrument: str, blaze: BlazeArg = None, band_only: bool = False) -> Observation:
    """Read an old-DRS e2ds file opened by astropy (and checked): :func:`read_image` of its primary HDU."""
    return read_image(name, hdul[0].header, hdul[0].data, cards, instrument, blaze, band_only)


def read_image(name: str, header: Header, data: np.ndarray, cards: Cards, instrument: str, blaze: BlazeArg = None,
               band_only: bool = False) -> Observation:
    """Read an old-DRS e2ds (its checked primary header and image) into an :class:`Observation`.

    Args:
        header: the primary header: an astropy ``Header`` or a :class:`.fastfits.CardIndex`.
        data: the image (n_orders, n_pixels), counts.
        blaze: explicit blaze source, or a function of ``header`` giving one (None: as if none
            was given); None = look for ``DRS BLAZE FILE`` next to ``name``.
        band_only: keep only the rows near the canonical range
            (:func:`~survey_estimator.layout.rows_near_band`, 10 of a HARPS-N e2ds's 69) before
            any pixel work; all rows when none is near (the coverage check then names the span).
    """
    if callable(blaze):
        blaze = blaze(header)
    if data.ndim != 2 or data.shape[1] < 100:
        raise ReadError(name, f"wrong shape: e2ds image {data.shape} (expected n_orders x 4096)")
    shape = data.shape
    wave = wavelengths(name, header, cards, shape)
    rows = np.arange(shape[0])
    if band_only and (near := rows_near_band(wave)).size:
        rows, wave, data = near, wave[near], data[near]
    flux = np.asarray(data, dtype=np.float64)
    conad = cards.float("DRS CCD CONAD") or 1.0
    sigdet = cards.float("DRS CCD SIGDET") or 0.0
    variance = count_variance(flux, conad, sigdet)
    bits = int(cards.get("DET BITS", 16) or 16)
    window = float(cards.get("DRS SPE EXT WINDOW", 17) or 17)
    saturated = flux > saturation_level(bits, window)
    notes: list[str] = []
    blaze_used = None
    if blaze is None:
        bname = blaze_named(header)
        if bname and Path(name).exists():
            blaze = find_blaze(name, header)
            if blaze is None:
                notes.append(f"blaze file {bname} not found next to the spectrum or one night folder away")
        elif bname:
            notes.append(f"blaze file {bname} not available for in-memory input")
        else:
            notes.append("no blaze card (DRS BLAZE FILE)")
    if blaze is not None:
        b = read_blaze(blaze, shape, rows)
        flux, variance = flux / b, variance / b**2
        blaze_used = str(blaze[0] if isinstance(blaze, tuple) else blaze)
        notes.append(f"blaze: {blaze_used}")
    mask = np.isfinite(flux) & np.isfinite(variance) & ~saturated
    if saturated.any():
        notes.append(f"{int(saturated.sum())} saturated pixels masked")
    kw = common(header, cards, instrument)
    return Observation(
        flux=flux,
        variance=variance,
        wave=wave,
        mask=mask,
        medium="air",
        frame="observatory",
        instrument=instrument,
        kind="e2ds",
        source=name,
        blaze_corrected=blaze_used is not None,
        orders=rows,
        notes=notes,
        **kw,
        **old_drs(header, cards),
    )

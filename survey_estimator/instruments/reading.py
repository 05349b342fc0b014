"""Reading one file: format detection, the format's reader, the checks and the filled-in defaults
(:func:`read_observation`). Imported lazily by the package (it brings astropy), so that the
instrument records and noise model (:mod:`.registry`, :mod:`.noise`) load without a FITS stack.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import replace

import numpy as np

from ..layout import BAND, rows_near_band
from ..observation import Observation, Overrides, ReadError, validate
from . import e2ds, echelle, s1d, s2d, table, text
from .blaze import find_blaze
from .fastfits import primary_image
from .registry import INSTRUMENTS, Instrument, lookup
from .detect import Cards, Source, card_prefix, check_science, detect_format, fits_from_bytes, identify_instrument, is_fits, read_bytes, source_name

log = logging.getLogger(__name__)

READERS = {"e2ds": e2ds.read, "s2d": s2d.read, "echelle": echelle.read, "s1d": s1d.read, "table": table.read}
"""FITS format name -> reader ``(name, hdul, cards, instrument, blaze) -> Observation``
(plain text: :func:`.text.read`)."""

MODEL_RESOLUTION = 115000.0
"""The resolving power assumed for a spectrum nothing says anything about, unless its sampling
cannot carry it (:func:`assumed_resolution`)."""



def assumed_resolution(wave: np.ndarray) -> float:
    """The resolving power to assume when no card, record or user gives one: 115,000 (the model's),
    or less when the pixel step in 5050-5350 A cannot carry it (R <= lambda / (2 step): two pixels
    per resolution element).

    Args:
        wave: (n_pixels,) or (n_orders, n_pixels) wavelengths, A.
    """
    best = []
    for w in np.atleast_2d(wave):
        w = w[np.isfinite(w) & (w > BAND[0]) & (w < BAND[1])]
        if w.size > 10:
            best.append(float(np.median(w[1:] / (2 * np.diff(w)))))
    return float(min(MODEL_RESOLUTION, max(best))) if best else MODEL_RESOLUTION


def looks_normalised(obs: Observation) -> bool:
    """True when the flux in 5050-5350 A looks continuum-normalised: its 95th percentile (the
    continuum of a line-rich spectrum) lies within 0.85-1.2 and its median above 0.3."""
    sel = obs.mask & np.isfinite(obs.flux) & (obs.wave > BAND[0]) & (obs.wave < BAND[1])
    if sel.sum() < 100:
        return False
    f = obs.flux[sel]
    return bool(0.85 <= np.percentile(f, 95) <= 1.2 and np.median(f) > 0.3)


def _identify(name: str, header, overrides: Overrides) -> tuple[str, Cards, str | None]:
    """(instrument name, card lookup, note on how the instrument was inferred) of a science
    spectrum's primary header; refuses calibration frames (:func:`.detect.check_science`)."""
    record, instrument, note = identify_instrument(header, overrides.instrument)
    cards = Cards(header, card_prefix(record, header))
    check_science(name, header, cards)
    return instrument, cards, note


def _read_fits(name: str, raw: bytes, gzipped: bool, overrides: Overrides, blaze, band_only: bool) -> tuple[Observation, str | None]:
    """(observation, instrument note) of FITS bytes. A file holding only a primary image with the
    old-DRS wavelength cards (the e2ds) is read from one targeted card scan
    (:func:`.fastfits.primary_image`, no astropy); every other file by astropy."""
    image = primary_image(raw)
    if image is not None and image.data.ndim == 2 and min(image.data.shape) > 1 and e2ds.has_solution(image.header):
        instrument, cards, note = _identify(name, image.header, overrides)
        return e2ds.read_image(name, image.header, image.data, cards, instrument, blaze, band_only), note
    name, hdul = fits_from_bytes(name, raw, gzipped)
    with hdul:
        instrument, cards, note = _identify(name, hdul[0].header, overrides)
        kind = detect_format(name, hdul)
        obs = READERS[kind](name, hdul, cards, instrument, blaze=blaze if kind == "e2ds" else None)
        return (_band_rows(obs) if band_only else obs), note


def _band_rows(obs: Observation) -> Observation:
    """``obs`` with only its rows near the canonical range (:func:`~survey_estimator.layout.rows_near_band`);
    unchanged for 1D data or when no row is near."""
    if not obs.is_echelle:
        return obs
    rows = rows_near_band(obs.wave)
    if rows.size in (0, obs.flux.shape[0]):
        return obs
    orders = rows if obs.orders is None else np.asarray(obs.orders)[rows]
    return replace(obs, flux=obs.flux[rows], variance=obs.variance[rows], wave=obs.wave[rows], mask=obs.mask[rows], orders=orders)


def read_unchecked(source: Source, blaze: Source | None = None, resolution: float | None = None,
                   overrides: Overrides | None = None, band_only: bool = False) -> Observation:
    """Read a spectrum like :func:`read_observation`, without the final :func:`validate`
    (band coverage, resolution limit): for tools that look at partial spectra."""
    overrides = overrides or Overrides()
    if resolution is not None:
        overrides = replace(overrides, resolution=resolution)
    name, raw, gzipped = read_bytes(source)
    instrument_note = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # old headers with 'nan' cards trigger VerifyWarning
        try:
            if is_fits(raw):
                obs, instrument_note = _read_fits(name, raw, gzipped, overrides, blaze, band_only)
            else:
                obs = text.read(name, raw, gzipped)
                if overrides.instrument:
                    record, obs.instrument, instrument_note = identify_instrument(None, overrides.instrument)
                    obs.resolution, obs.resolution_source = record.resolving_power()
        except ReadError:
            raise
        except Exception as exc:  # anything astropy/numpy raise on malformed content
            raise ReadError(name, f"unreadable content ({type(exc).__name__}: {exc})") from exc
    if instrument_note:
        obs.notes.insert(0, instrument_note)
    if obs.instrument == "unknown" and not overrides.instrument:
        obs.instrument_source = "assumed"
    obs.normalised, obs.normalised_source = looks_normalised(obs), "data"
    overrides.apply(obs)
    if obs.resolution is None:
        obs.resolution, obs.resolution_source = assumed_resolution(obs.wave), "assumed"
        obs.notes.append(f"resolution unknown: R = {obs.resolution:,.0f} assumed (pass --resolution R)")
    elif obs.resolution_source == "assumed":
        obs.notes.append(f"resolution R = {obs.resolution:,.0f} assumed from the instrument's usual setting (pass --resolution R)")
    log.debug("read %s: %s %s %s", source_name(source), obs.instrument, obs.kind, obs.flux.shape)
    return obs


def read_observation(source: Source, blaze: Source | None = None, resolution: float | None = None,
                     overrides: Overrides | None = None, band_only: bool = False) -> Observation:
    """Read a science spectrum from a path, ``(name, bytes)`` or ``(name, file-like)``.

    Args:
        source: the spectrum (FITS or plain text); gzip-compressed content is recognised by its
            magic bytes.
        blaze: optional blaze file for an old-DRS e2ds, or a function of its primary header that
            returns one or None (the catalogue's lookup in its archive listing); else looked up
            via ``DRS BLAZE FILE`` next to a local file; absent blaze leaves ``blaze_corrected=False``.
        resolution: resolving power to use whatever the file says (``--resolution``; the same
            as ``overrides.resolution``).
        overrides: what the user says about the spectrum (:class:`Overrides`: instrument,
            resolution, medium, frame, RV, normalisation), over what the file says or was assumed.
        band_only: keep only the echelle rows near the canonical range, all that preprocessing
            uses (:func:`~survey_estimator.layout.rows_near_band`; ``orders`` names them): an old-DRS
            e2ds is then read ~7x cheaper (the catalogue reads so). All rows when none is near.
    Returns:
        a validated :class:`Observation` (covers 5050-5350 A with usable pixels, R >= 20,000).
    Raises:
        ReadError: for every kind of unusable input; the message names the file and the reason.
    """
    return validate(read_unchecked(source, blaze, resolution, overrides, band_only))

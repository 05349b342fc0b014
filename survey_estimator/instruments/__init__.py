"""Instrument readers: archive files in, one :class:`~survey_estimator.observation.Observation` out.

The format is chosen by content (:mod:`.detect`), one module per format:

- :mod:`.e2ds` old-DRS HARPS-N / HARPS ``e2ds`` (+ optional blaze)
- :mod:`.s2d`  new-DRS HARPS-N / ESPRESSO ``S2D``
- :mod:`.s1d`  1D spectra with a linear wavelength WCS
- :mod:`.adp`  ESO Phase-3 ``ADP`` tables (WAVE/FLUX/ERR)

Every failure is a :class:`~survey_estimator.observation.ReadError` naming the file and reason.
"""
from __future__ import annotations

import logging
import warnings

from ..observation import Observation, ReadError, validate
from . import adp, e2ds, s1d, s2d
from .detect import INSTRUMENTS, Cards, Source, check_science, detect_format, identify_instrument, open_fits, source_name

log = logging.getLogger(__name__)

READERS = {"e2ds": e2ds.read, "s2d": s2d.read, "s1d": s1d.read, "adp": adp.read}
"""Format name -> reader ``(name, hdul, cards, instrument, blaze) -> Observation``."""

__all__ = ["Observation", "ReadError", "READERS", "Source", "read_observation"]


def read_observation(source: Source, blaze: Source | None = None) -> Observation:
    """Read a science spectrum from a path, ``(name, bytes)`` or ``(name, file-like)``.

    Args:
        source: the spectrum; gzip-compressed content is recognised by its magic bytes.
        blaze: optional blaze file for an old-DRS e2ds (else looked up via ``DRS BLAZE FILE``
            next to a local file; absent blaze leaves ``blaze_corrected=False``).
    Returns:
        a validated :class:`Observation` (covers 5050-5350 A with usable pixels).
    Raises:
        ReadError: for every kind of unusable input; the message names the file and the reason.
    """
    name, hdul = open_fits(source)
    with hdul, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # old headers with 'nan' cards trigger VerifyWarning
        try:
            header = hdul[0].header
            instrument = identify_instrument(name, header)
            cards = Cards(header, INSTRUMENTS[instrument])
            check_science(name, header, cards)
            kind = detect_format(name, hdul)
            obs = READERS[kind](name, hdul, cards, instrument, blaze=blaze if kind == "e2ds" else None)
        except ReadError:
            raise
        except Exception as exc:  # anything astropy/numpy raise on malformed content
            raise ReadError(name, f"unreadable content ({type(exc).__name__}: {exc})") from exc
    log.debug("read %s: %s %s %s", source_name(source), instrument, kind, obs.flux.shape)
    return validate(obs)

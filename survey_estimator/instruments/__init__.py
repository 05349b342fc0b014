"""Instrument readers: archive files in, one :class:`~survey_estimator.observation.Observation` out.

The format is chosen by content (:mod:`.detect`), one module per format:

- :mod:`.e2ds`    old-DRS HARPS-N / HARPS ``e2ds`` (+ optional blaze)
- :mod:`.s2d`     new-DRS HARPS-N / ESPRESSO ``S2D``
- :mod:`.echelle` any multi-order image with a wavelength image (HIRES / APF style)
- :mod:`.s1d`     any 1D FITS image with a linear or log-linear wavelength WCS
- :mod:`.table`   FITS binary tables (ESO Phase-3 ADP, ESPRESSO / HARPS-N S1D, iSpec, ...)
- :mod:`.text`    plain-text 2-3 column spectra

The 1D readers share :mod:`.spectrum1d`. Unknown instruments are fine: a reader records what the
file says and where each value came from (``Observation.*_source``); :func:`read_observation`
fills in what nothing said (the resolving power) and says so. Every failure is a
:class:`~survey_estimator.observation.ReadError` naming the file and reason.
"""
from __future__ import annotations

from ..observation import Observation, Overrides, ReadError
from .registry import INSTRUMENTS, Instrument, lookup

_READING = ("READERS", "Source", "find_blaze", "read_observation", "read_unchecked", "assumed_resolution", "looks_normalised",
            "MODEL_RESOLUTION")
"""Names served by :mod:`.reading`, imported on first use: the FITS readers (and astropy) stay
out of processes that only draw training spectra (:mod:`survey_estimator.sampling`)."""

__all__ = ["INSTRUMENTS", "Instrument", "Observation", "Overrides", "ReadError", "READERS", "Source", "find_blaze", "lookup",
           "read_observation", "read_unchecked"]


def __getattr__(name: str):
    if name in _READING:
        from . import reading

        return getattr(reading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""One observed spectrum as read from an archive file, whatever the instrument or format.

Readers in :mod:`survey_estimator.instruments` produce an :class:`Observation`; the single
preprocessing path (:func:`survey_estimator.preprocess.preprocess`) turns it into model input.
Anything wrong with a file (not FITS, truncated, calibration frame, foreign instrument, no
wavelength solution, no coverage of the science band, ...) raises :class:`ReadError`.

Shapes: echelle formats hold one row per order, ``(n_orders, n_pixels)``; merged 1D spectra are
``(n_pixels,)``. Wavelengths are in Angstrom.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .layout import BAND

Medium = Literal["air", "vacuum"]
Frame = Literal["observatory", "barycentric", "rest"]
"""observatory: as recorded (BERV not removed); barycentric: BERV removed, the star's RV not;
rest: the star's own rest frame."""


class ReadError(ValueError):
    """A file that cannot become model input; the message names the file and the reason.

    Attributes:
        path: the file name (or object key) as given by the caller.
        reason: a short human-readable reason, e.g. ``"not a FITS file"``.
    """

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep picklable across Ray workers
        return (type(self), (self.path, self.reason))


@dataclass
class Observation:
    """A spectrum with its wavelengths, noise, mask and header metadata.

    Arrays share one shape: (n_orders, n_pixels) for echelle formats, (n_pixels,) for 1D.

    Attributes:
        flux: float64 flux (extracted counts for old-DRS e2ds, blaze-corrected where
            ``blaze_corrected``; arbitrary units otherwise). NaN where missing.
        variance: float64 variance of ``flux`` (from an error array where the file has one,
            otherwise estimated from counts and readout noise or from the data themselves).
        wave: float64 wavelength per pixel, Angstrom, in ``medium`` and ``frame``.
        mask: bool, True = usable (finite, not flagged by the pipeline's quality array).
        medium: "air" or "vacuum".
        frame: "observatory", "barycentric" or "rest".
        instrument: "HARPS", "HARPS-N" or "ESPRESSO".
        drs_version: pipeline identifier, e.g. "HARPS_3.5" or "espdr/1.0.9a2".
        kind: the reader that produced it: "e2ds", "s2d", "s1d" or "adp".
        object: target name; ra_deg/dec_deg: J2000 pointing in degrees.
        date_obs: ISO start time; mjd_obs: MJD at start; bjd: barycentric JD where given.
        exptime_s: exposure time in seconds.
        berv_kms: barycentric Earth radial velocity (km/s) from the header, None if absent.
        rv_kms: the pipeline's stellar RV (km/s, barycentric) where the header has one.
        snr: per-order S/N from the header (index = row), or None.
        resolution: resolving power lambda/dlambda of the spectrograph mode.
        blaze_corrected: whether ``flux`` has had the blaze removed.
        source: the file name as given.
        orders: native row index of each row of the arrays (None for 1D).
        notes: free-text remarks from the reader (e.g. "blaze file not found").
    """

    flux: np.ndarray
    variance: np.ndarray
    wave: np.ndarray
    mask: np.ndarray
    medium: Medium
    frame: Frame
    instrument: str
    drs_version: str
    kind: str
    source: str
    object: str = ""
    ra_deg: float | None = None
    dec_deg: float | None = None
    date_obs: str | None = None
    mjd_obs: float | None = None
    bjd: float | None = None
    exptime_s: float | None = None
    berv_kms: float | None = None
    rv_kms: float | None = None
    snr: np.ndarray | None = None
    resolution: float = 115000.0
    blaze_corrected: bool = True
    orders: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_echelle(self) -> bool:
        """True for (n_orders, n_pixels) data, False for a merged 1D spectrum."""
        return self.flux.ndim == 2

    def metadata(self) -> dict:
        """Scalar metadata as a JSON-ready dict (no arrays except S/N as a list)."""
        return {
            "source": self.source,
            "instrument": self.instrument,
            "drs_version": self.drs_version,
            "kind": self.kind,
            "object": self.object,
            "ra_deg": self.ra_deg,
            "dec_deg": self.dec_deg,
            "date_obs": self.date_obs,
            "mjd_obs": self.mjd_obs,
            "bjd": self.bjd,
            "exptime_s": self.exptime_s,
            "berv_kms": self.berv_kms,
            "rv_kms": self.rv_kms,
            "medium": self.medium,
            "frame": self.frame,
            "resolution": self.resolution,
            "blaze_corrected": self.blaze_corrected,
            "shape": list(self.flux.shape),
            "notes": list(self.notes),
        }


def band_coverage(wave: np.ndarray, usable: np.ndarray, band: tuple[float, float] = BAND) -> float:
    """Fraction (0-1) of ``band`` (A) spanned by usable pixels, counting every row separately.

    Uses the span of each row's (or the 1D array's) usable pixels inside the band; rows are merged
    on a 0.1 A grid so overlapping orders are not counted twice.
    """
    grid = np.arange(band[0], band[1], 0.1)
    hit = np.zeros(grid.size, dtype=bool)
    for w, u in zip(np.atleast_2d(wave), np.atleast_2d(usable)):
        w = w[u & np.isfinite(w)]
        if w.size < 2:
            continue
        # a pixel covers the grid point if the nearest usable pixel is within 0.1 A
        j = np.clip(np.searchsorted(w, grid), 1, w.size - 1)
        near = np.minimum(np.abs(grid - w[j - 1]), np.abs(w[j] - grid))
        hit |= (grid >= w[0]) & (grid <= w[-1]) & (near < 0.1)
    return float(hit.mean())


MIN_BAND_COVERAGE = 0.5
"""An observation must have usable pixels over at least this fraction of the science band."""


def validate(obs: Observation) -> Observation:
    """Check shapes, wavelength coverage of the science band and finite flux; return ``obs``.

    Raises:
        ReadError: wrong shape, no wavelengths over 5050-5350 A, or nothing usable there.
    """
    shapes = {a.shape for a in (obs.flux, obs.variance, obs.wave, obs.mask)}
    if len(shapes) != 1 or obs.flux.ndim not in (1, 2):
        raise ReadError(obs.source, f"wrong shape: arrays {sorted(shapes)} (need one 1D or 2D shape)")
    wave_ok = np.isfinite(obs.wave)
    if not wave_ok.any():
        raise ReadError(obs.source, "missing wavelength solution (no finite wavelengths)")
    lo, hi = BAND
    wave_cov = band_coverage(obs.wave, wave_ok)
    if wave_cov < MIN_BAND_COVERAGE:
        span = f"{np.nanmin(obs.wave):.1f}-{np.nanmax(obs.wave):.1f} A"
        raise ReadError(obs.source, f"no coverage of {lo:.0f}-{hi:.0f} A (spectrum spans {span}, {100 * wave_cov:.0f}% of the band)")
    usable = obs.mask & np.isfinite(obs.flux) & wave_ok
    in_band = wave_ok & (obs.wave >= lo) & (obs.wave <= hi)
    if not (usable & in_band).any():
        raise ReadError(obs.source, f"all pixels in {lo:.0f}-{hi:.0f} A are NaN or flagged (all-NaN orders)")
    if band_coverage(obs.wave, usable) < MIN_BAND_COVERAGE:
        raise ReadError(obs.source, f"fewer than {100 * MIN_BAND_COVERAGE:.0f}% of {lo:.0f}-{hi:.0f} A hold usable (finite, unflagged) flux")
    return obs

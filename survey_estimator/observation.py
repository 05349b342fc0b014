"""One observed spectrum as read from an archive file, whatever the instrument or format.

Readers in :mod:`survey_estimator.instruments` produce an :class:`Observation`; the single
preprocessing path (:func:`survey_estimator.preprocess.preprocess`) turns it into model input.
Anything wrong with a file (neither FITS nor a text spectrum, truncated, calibration frame, no
wavelength solution, several spectra in one file, R below 20,000, no coverage of the science
band, ...) raises :class:`ReadError`.

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
Source = Literal["header", "format", "instrument", "data", "user", "assumed"]
"""Where a value came from: a header card or column name ("header"), the documented convention of
the file format or pipeline ("format"), the spectrograph's record ("instrument"), the data
themselves ("data": normalisation judged from the flux), a command-line override ("user"), or
nothing at all ("assumed": a default was taken and the result is flagged)."""

MIN_RESOLUTION = 20000.0
"""Spectra with a resolving power below this are refused (the Mg b / Fe line blends the model
relies on are not resolved)."""
MOST_OF_BAND = 0.8
"""Below this usable fraction of 5050-5350 A (but above :data:`MIN_BAND_COVERAGE`) an observation
is read but flagged as covering only part of the band (preprocessing flag PARTIAL_COVERAGE)."""


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
        instrument: the name of its record in :mod:`survey_estimator.instruments.registry`
            ("HARPS", "HARPS-N", "ESPRESSO", "MIKE-Blue", ...), the ``INSTRUME`` card of any other
            spectrograph as written (e.g. "UVES"), or "unknown".
        drs_version: pipeline identifier, e.g. "HARPS_3.5" or "espdr/1.0.9a2" ("" when unknown).
        kind: the reader that produced it: "e2ds", "s2d", "echelle" (multi-order image with a
            wavelength image), "s1d" (1D image with a wavelength WCS), "table" (FITS binary
            table) or "text".
        object: target name; ra_deg/dec_deg: J2000 pointing in degrees.
        date_obs: ISO start time; mjd_obs: MJD at start; bjd: barycentric JD where given.
        exptime_s: exposure time in seconds.
        berv_kms: barycentric Earth radial velocity (km/s) from the header, None if absent.
        rv_kms: the pipeline's stellar RV (km/s, barycentric) where the header has one.
        snr: per-order S/N from the header (index = row), or None.
        resolution: resolving power lambda/dlambda of the spectrograph mode; None only inside a
            reader (``read_observation`` fills in the assumed value before validation).
        instrument_source, resolution_source, medium_source, frame_source, rv_source,
            normalised_source: where ``instrument``, ``resolution``, ``medium``, ``frame``,
            ``rv_kms`` and ``normalised`` came from (:data:`Source`); "assumed" ones are flagged by
            preprocessing (RESOLUTION_ASSUMED, MEDIUM_ASSUMED) or, for the frame, always lead to
            a measured RV. :class:`Overrides` sets them to "user".
        normalised: True when the flux already looks continuum-normalised (upper envelope ~1 in
            5050-5350 A), False otherwise, None before ``read_observation`` decides it.
        coverage: usable fraction (0-1) of 5050-5350 A, set by :func:`validate`.
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
    resolution: float | None = 115000.0
    instrument_source: Source = "header"
    resolution_source: Source = "instrument"
    medium_source: Source = "format"
    frame_source: Source = "format"
    rv_source: Source = "header"
    normalised: bool | None = None
    normalised_source: Source = "data"
    coverage: float | None = None
    blaze_corrected: bool = True
    orders: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_echelle(self) -> bool:
        """True for (n_orders, n_pixels) data, False for a merged 1D spectrum."""
        return self.flux.ndim == 2

    @property
    def assumed(self) -> list[str]:
        """Names of what was assumed rather than read: "instrument", "resolution", "medium",
        "frame" (in that order)."""
        out = ["instrument"] if self.instrument == "unknown" and self.instrument_source != "user" else []
        return out + [k for k in ("resolution", "medium", "frame") if getattr(self, f"{k}_source") == "assumed"]

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
            "instrument_source": self.instrument_source,
            "resolution_source": self.resolution_source,
            "medium_source": self.medium_source,
            "frame_source": self.frame_source,
            "normalised": self.normalised,
            "normalised_source": self.normalised_source,
            "coverage": self.coverage,
            "assumed": self.assumed,
            "blaze_corrected": self.blaze_corrected,
            "shape": list(self.flux.shape),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class Overrides:
    """What the user says about a spectrum, over whatever the file says or was assumed (the
    ``--instrument``, ``--resolution``, ``--medium``, ``--frame``, ``--rv`` and
    ``--normalised``/``--not-normalised`` options of ``inspect`` and ``estimate``). None = not
    given. Applied while reading (:func:`survey_estimator.instruments.read_observation`), before
    validation and preprocessing; each value given gets the source "user" and a note.

    Attributes:
        instrument: instrument name; a known one (:mod:`survey_estimator.instruments.registry`)
            also brings its record: card prefix, resolving power (unless a card or
            ``resolution`` gives one), native layout, blaze card, observatory.
        resolution: resolving power lambda / dlambda.
        medium: "air" or "vacuum": the medium of the file's wavelengths (vacuum is converted).
        frame: "observatory" (BERV applied from the header), "barycentric" (the star's RV still
            in) or "rest" (no shift at all).
        rv_kms: the star's barycentric radial velocity (km/s), applied instead of the header's
            or a measured one (not with frame "rest").
        normalised: whether the flux is already continuum-normalised (recorded and reported;
            preprocessing normalises each order either way).
    """

    instrument: str | None = None
    resolution: float | None = None
    medium: Medium | None = None
    frame: Frame | None = None
    rv_kms: float | None = None
    normalised: bool | None = None

    def __post_init__(self):
        if self.resolution is not None and not self.resolution > 0:
            raise ValueError(f"resolution must be positive (got {self.resolution})")
        if self.medium not in (None, "air", "vacuum"):
            raise ValueError(f"medium must be air or vacuum (got {self.medium!r})")
        if self.frame not in (None, "observatory", "barycentric", "rest"):
            raise ValueError(f"frame must be rest, barycentric or observatory (got {self.frame!r})")
        if self.rv_kms is not None and not (np.isfinite(self.rv_kms) and abs(self.rv_kms) < 3000):
            raise ValueError(f"rv must be a finite velocity below 3000 km/s (got {self.rv_kms})")
        if self.rv_kms is not None and self.frame == "rest":
            raise ValueError("an RV cannot be applied to a spectrum said to be in the rest frame")

    def apply(self, obs: Observation) -> Observation:
        """Set the given values on ``obs`` (source "user", a note each); for ``instrument`` only its
        source (the reader took its name and record). Returns ``obs``."""
        if self.instrument is not None:
            obs.instrument_source = "user"
        for key in ("resolution", "medium", "frame", "normalised"):
            value = getattr(self, key)
            if value is not None:
                if getattr(obs, key) != value:
                    obs.notes.append(f"{key} {getattr(obs, key)} ({getattr(obs, key + '_source')}) replaced by {value} given by the user")
                setattr(obs, key, float(value) if key == "resolution" else value)
                setattr(obs, key + "_source", "user")
        if self.rv_kms is not None:
            obs.rv_kms, obs.rv_source = float(self.rv_kms), "user"
            obs.notes.append(f"RV {self.rv_kms:+.3f} km/s given by the user")
        return obs


def band_coverage(wave: np.ndarray, usable: np.ndarray, band: tuple[float, float] = BAND) -> float:
    """Fraction (0-1) of ``band`` (A) spanned by usable pixels, counting every row separately.

    Uses the span of each row's (or the 1D array's) usable pixels inside the band; rows are merged
    on a 0.1 A grid so overlapping orders are not counted twice.
    """
    grid = np.arange(band[0], band[1], 0.1)
    hit = np.zeros(grid.size, dtype=bool)
    wave, usable = np.atleast_2d(wave), np.atleast_2d(usable)
    finite = np.isfinite(wave)
    # only rows that reach into the band can cover it (an e2ds: ~9 of 69)
    reach = (np.where(finite, wave, np.inf).min(axis=1) <= grid[-1]) & (np.where(finite, wave, -np.inf).max(axis=1) >= grid[0])
    for w, u in zip(wave[reach], usable[reach]):
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
    """Check shapes, resolving power, wavelength coverage of the science band and finite flux;
    set ``obs.coverage``; return ``obs``.

    Raises:
        ReadError: wrong shape, R below :data:`MIN_RESOLUTION`, wavelengths over less than
            :data:`MIN_BAND_COVERAGE` of 5050-5350 A, or too little usable flux there.
    """
    shapes = {a.shape for a in (obs.flux, obs.variance, obs.wave, obs.mask)}
    if len(shapes) != 1 or obs.flux.ndim not in (1, 2):
        raise ReadError(obs.source, f"wrong shape: arrays {sorted(shapes)} (need one 1D or 2D shape)")
    wave_ok = np.isfinite(obs.wave)
    if not wave_ok.any():
        raise ReadError(obs.source, "missing wavelength solution (no finite wavelengths)")
    lo, hi = BAND
    usable = obs.mask & np.isfinite(obs.flux) & (obs.flux != 0) & wave_ok
    in_band = wave_ok & (obs.wave >= lo) & (obs.wave <= hi)
    any_usable = bool((usable & in_band).any())
    coverage = band_coverage(obs.wave, usable) if any_usable else 0.0
    # usable pixels are a subset of those with wavelengths, so their coverage bounds the wavelengths'
    # from below: the wavelength coverage is computed (for the message) only when the file fails
    wave_cov = MIN_BAND_COVERAGE if coverage >= MIN_BAND_COVERAGE else band_coverage(obs.wave, wave_ok)
    if wave_cov < MIN_BAND_COVERAGE:
        span = f"{np.nanmin(obs.wave):.1f}-{np.nanmax(obs.wave):.1f} A"
        raise ReadError(obs.source, f"no coverage of {lo:.0f}-{hi:.0f} A (spectrum spans {span}, {100 * wave_cov:.0f}% of the band)")
    if not any_usable:
        raise ReadError(obs.source, f"all pixels in {lo:.0f}-{hi:.0f} A are NaN or flagged (all-NaN orders)")
    if coverage < MIN_BAND_COVERAGE:
        raise ReadError(obs.source, f"fewer than {100 * MIN_BAND_COVERAGE:.0f}% of {lo:.0f}-{hi:.0f} A hold usable (finite, unflagged, non-zero) flux "
                                    f"({100 * coverage:.0f}%)")
    if obs.resolution is not None and obs.resolution < MIN_RESOLUTION:
        raise ReadError(obs.source, f"resolution R = {obs.resolution:,.0f} ({obs.resolution_source}) is below the {MIN_RESOLUTION:,.0f} "
                                    "the model needs (pass --resolution if that value is wrong)")
    obs.coverage = coverage
    return obs

"""ONE path from an :class:`~survey_estimator.observation.Observation` to model input.

Steps (each recorded in :class:`Flag` bits of the result):

1. keep the rows / pixels near the canonical range (5026-5395 A);
2. vacuum -> air where needed (IAU / Morton 2000);
3. mask what the observation lacks: NaN, non-positive and (reader-flagged) saturated pixels,
   order edges of echelle data, cosmic-ray outliers; echelle data in a foreign layout (their
   instrument record's ``layout`` "resampled": HARPS, ESPRESSO) are flattened per native order, since several native orders with different
   throughputs feed one canonical order;
4. shift to the stellar rest frame: BERV for observatory-frame data, then the pipeline's RV where
   the header has one (or the user's, ``--rv``), else an RV measured by cross-correlation (:mod:`survey_estimator.rv`),
   applied only when the measurement is reliable (else RV_UNRELIABLE and no stellar shift);
5. degrade to R = 115,000 where the instrument is sharper (ESPRESSO);
6. resample into the canonical HARPS-N layout (:func:`survey_estimator.layout.resample_to_layout`;
   echelle data whose record's layout is "canonical", HARPS-N: each canonical order from its one
   matching native row): pixels no input
   covers (HARPS CCD gap, band ends) are masked, never zero-filled;
7. normalise per order with :func:`survey_estimator.normalise.normalise_orders`, the same code the
   training sampler uses, and build the network input with ``model_input``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import IntFlag

import numpy as np
import torch
from scipy.ndimage import binary_dilation, gaussian_filter1d

from . import inputs, normalise
from .inputs import PreprocessConfig
from .layout import C_KMS, LAYOUT_VERSION, N_ORDERS, canonical_wave, doppler_factor, resample_to_layout, rows_near_band
from .instruments.registry import lookup
from .observation import MOST_OF_BAND, Observation, ReadError
from .rv import RVMeasurement, measure_rv

log = logging.getLogger(__name__)

PREPROCESSING_VERSION = f"pre-v1+{normalise.NORMALISATION_VERSION}+{LAYOUT_VERSION}"
"""Identifier of this preprocessing (with the normalisation and layout it embeds); stored in model
bundles and catalogue rows."""


class Flag(IntFlag):
    """What preprocessing did or found. Bit values are stable: the catalogue stores them."""

    RESAMPLED = 1 << 0
    """Resampled by wavelength into the canonical layout (always, since the rest-frame shift moves
    every pixel)."""
    GAP_MASKED = 1 << 1
    """Canonical pixels inside the observed range that no input covers (HARPS CCD gap) are masked."""
    RV_MEASURED = 1 << 2
    """The stellar RV was measured by cross-correlation (no usable pipeline RV); applied only when
    reliable (see RV_UNRELIABLE)."""
    BLAZE_MISSING = 1 << 3
    """Old-DRS counts without their blaze: normalised with the blaze shape still in (HARPS-N, as
    in training) or after flattening each native order (foreign layouts)."""
    ORDERS_MISSING = 1 << 4
    """At least one canonical order has less than ``min_order_fraction`` usable pixels."""
    LOW_SNR = 1 << 5
    """Median S/N per pixel over the canonical orders below ``low_snr``."""
    DEGRADED_RESOLUTION = 1 << 6
    """Convolved down to the target resolving power (sharper instrument)."""
    VACUUM_CONVERTED = 1 << 7
    """Vacuum wavelengths converted to air."""
    BERV_APPLIED = 1 << 8
    """Observatory-frame wavelengths moved to the barycentre with the header BERV."""
    RV_FROM_HEADER = 1 << 9
    """The pipeline's RV from the header was applied."""
    RV_UNRELIABLE = 1 << 10
    """The cross-correlation peak was weak (or no template line was covered): the measured RV is
    NOT applied, so no stellar RV shift is made (``rv_kms`` None, ``rv_source`` "none"; the
    catalogue's ``rv_kms`` is null) and the data stay in the barycentric (or, with BERV_MISSING,
    observatory) frame. The measurement itself is kept in ``ModelInput.rv_measurement``."""
    COSMICS_MASKED = 1 << 11
    """Upward outliers (cosmic rays) were masked."""
    EDGES_MASKED = 1 << 12
    """Order-edge pixels of echelle data were masked."""
    BERV_MISSING = 1 << 13
    """Observatory-frame data without BERV: the measured RV includes the Earth's motion."""
    RESOLUTION_ASSUMED = 1 << 14
    """No header card, instrument record or ``--resolution`` gave the resolving power: a value was
    assumed (115,000, or what the pixel sampling allows; ``Observation.resolution_source``)."""
    MEDIUM_ASSUMED = 1 << 15
    """Nothing in the file said air or vacuum: air was assumed (a vacuum spectrum read as air is
    shifted by ~84 km/s, which the measured RV absorbs)."""
    PARTIAL_COVERAGE = 1 << 16
    """Usable flux covers less than ``MOST_OF_BAND`` (80%) of 5050-5350 A (but at least half)."""

    def names(self) -> list[str]:
        """Names of the set bits, lowest first."""
        return [f.name for f in Flag if f in self]


@dataclass
class ModelInput:
    """The model input for one observation and what was done to get it.

    Attributes:
        wave: (8, 4096) float64 air rest-frame wavelengths, A (= ``canonical_wave()``).
        flux: (8, 4096) float32 normalised flux (1.0 where masked).
        mask: (8, 4096) bool, True = usable.
        variance: (8, 4096) float32 variance of ``flux`` (inf where masked): the likelihood fit's noise.
        resolution: resolving power of ``flux`` (the instrument's, or 115,000 after degradation).
        x: (2, 8, 4096) float32 network input from ``normalise.model_input``.
        flags: :class:`Flag` bits.
        rv_kms: stellar RV removed (km/s), None when none was applied.
        rv_source: "header", "user" (``--rv``), "measured" or "none".
        berv_kms: BERV applied (km/s), None when the data were already barycentric.
        snr: median S/N per pixel over the canonical orders with data (before normalisation).
        snr_orders: (8,) S/N per canonical order (NaN where empty).
        masked_fraction: fraction of the 8 x 4096 pixels that are masked.
        orders_used: native rows that contributed (empty for 1D input).
        rv_measurement: the cross-correlation result when one was made.
        observation: the observation's scalar metadata.
        version: :data:`PREPROCESSING_VERSION`.
    """

    wave: np.ndarray
    flux: np.ndarray
    mask: np.ndarray
    x: np.ndarray
    flags: Flag
    rv_kms: float | None
    rv_source: str
    berv_kms: float | None
    snr: float
    snr_orders: np.ndarray
    masked_fraction: float
    orders_used: list[int]
    observation: dict
    variance: np.ndarray | None = None
    resolution: float | None = None
    rv_measurement: RVMeasurement | None = None
    version: str = PREPROCESSING_VERSION
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """JSON-ready description (no pixel arrays)."""
        return {
            **self.observation,
            "preprocessing_version": self.version,
            "flags": int(self.flags),
            "flag_names": self.flags.names(),
            "rv_kms": self.rv_kms,
            "rv_source": self.rv_source,
            "rv_ccf_contrast": None if self.rv_measurement is None else self.rv_measurement.contrast,
            "berv_applied_kms": self.berv_kms,
            "snr": self.snr,
            "snr_orders": [None if not np.isfinite(s) else round(float(s), 2) for s in self.snr_orders],
            "masked_fraction": self.masked_fraction,
            "orders_used": self.orders_used,
            "usable_orders": int((self.mask.mean(axis=1) >= 0.5).sum()),
        }


def vacuum_to_air(wave_vac: np.ndarray) -> np.ndarray:
    """Air wavelengths (A) from vacuum ones (IAU standard, Morton 2000; valid > 2000 A)."""
    w = np.asarray(wave_vac, dtype=np.float64)
    s2 = (1e4 / w) ** 2
    n = 1 + 0.0000834254 + 0.02406147 / (130 - s2) + 0.00015998 / (38.9 - s2)
    return w / n


def degrade(wave: np.ndarray, flux: np.ndarray, variance: np.ndarray, usable: np.ndarray, r_from: float, r_to: float):
    """Convolve each row with a Gaussian so that resolving power ``r_from`` becomes ``r_to``.

    Returns (flux, variance, usable); masked pixels are filled by interpolation before the
    convolution and their neighbours within two kernel sigmas become unusable.
    """
    fwhm_kms = C_KMS * np.sqrt(1.0 / r_to**2 - 1.0 / r_from**2)
    flux, variance, usable = flux.copy(), variance.copy(), usable.copy()
    for i in range(flux.shape[0]):
        w, u = wave[i], usable[i]
        good = np.flatnonzero(u)
        if good.size < 10:
            continue
        dv = np.nanmedian(C_KMS * np.diff(w) / w[:-1])
        sigma = fwhm_kms / 2.3548 / dv
        x = np.arange(w.size)
        f = np.interp(x, good, flux[i][good])
        v = np.interp(x, good, variance[i][good])
        flux[i] = gaussian_filter1d(f, sigma, mode="nearest")
        variance[i] = gaussian_filter1d(v, sigma, mode="nearest") / (2 * np.sqrt(np.pi) * max(sigma, 0.5))
        usable[i] = ~binary_dilation(~u, iterations=int(np.ceil(2 * sigma)))
    return flux, variance, usable


def _flatten_orders(flux: np.ndarray, variance: np.ndarray, usable: np.ndarray):
    """Divide each native row by its upper-envelope continuum (normalise.continuum_fit)."""
    f = torch.as_tensor(np.nan_to_num(flux))[None]
    m = torch.as_tensor(usable)[None]
    cont = normalise.continuum_fit(f, m)[0].numpy()
    return flux / cont, variance / cont**2


def _select(obs: Observation, margin: float):
    """Rows (echelle) or pixels (1D) near the canonical range; returns 2D arrays and row ids."""
    cw = canonical_wave()
    lo, hi = cw.min() - margin, cw.max() + margin
    wave = np.atleast_2d(obs.wave)
    arrays = [np.atleast_2d(a) for a in (obs.flux, obs.variance, obs.mask)]
    if obs.is_echelle:
        rows = rows_near_band(wave, margin)
        ids = [int(obs.orders[i]) if obs.orders is not None else int(i) for i in rows]
        return wave[rows], *(a[rows] for a in arrays), ids
    keep = np.flatnonzero((wave[0] > lo) & (wave[0] < hi))
    sl = slice(keep.min(), keep.max() + 1)
    return wave[:, sl], *(a[:, sl] for a in arrays), []


def _has_gap(wave_rest: np.ndarray, mask: np.ndarray, min_width_A: float) -> bool:
    """True if a run of masked canonical pixels wider than ``min_width_A`` lies strictly inside
    the observed wavelength range (a detector gap, or a zero-filled gap in a merged 1D spectrum)."""
    cw = canonical_wave()
    lo, hi = np.nanmin(wave_rest), np.nanmax(wave_rest)
    for w, m in zip(cw, mask):
        bad = np.concatenate([[False], ~m & (w > lo) & (w < hi), [False]])
        edges = np.flatnonzero(np.diff(bad.astype(int)))
        for start, stop in zip(edges[::2], edges[1::2]):
            if start > 0 and stop < w.size and w[stop - 1] - w[start] > min_width_A:
                return True
    return False


def preprocess(obs: Observation, config: PreprocessConfig | None = None) -> ModelInput:
    """Turn an observation into the canonical model input (see the module docstring).

    Raises:
        ReadError: nothing usable is left in the canonical layout.
    """
    cfg = config or PreprocessConfig()
    flags = Flag.RESAMPLED
    notes: list[str] = []
    if obs.resolution_source == "assumed":
        flags |= Flag.RESOLUTION_ASSUMED
    if obs.medium_source == "assumed":
        flags |= Flag.MEDIUM_ASSUMED
    if obs.coverage is not None and obs.coverage < MOST_OF_BAND:
        flags |= Flag.PARTIAL_COVERAGE
        notes.append(f"only {100 * obs.coverage:.0f}% of 5050-5350 A covered")
    wave, flux, var, usable, orders_used = _select(obs, cfg.margin_A)
    # float32 pixels, as the training sampler makes them (float64 wavelengths: a pixel is 2.5e-6 of them)
    wave, flux, var = wave.astype(np.float64), flux.astype(np.float32), var.astype(np.float32)

    if obs.medium == "vacuum":
        wave = vacuum_to_air(wave)
        flags |= Flag.VACUUM_CONVERTED

    # steps 3 (masks) and 6-7 (native resampling, normalisation) are THE input builder's
    # (:mod:`.inputs`), as the training sampler runs them: here for a batch of one
    t_wave, t_flux, t_var = (torch.from_numpy(a)[None] for a in (wave, flux, var))
    edges = cfg.edge_pixels if obs.is_echelle else 0
    t_usable = inputs.usable_pixels(t_wave, t_flux, t_var, torch.from_numpy(np.asarray(usable, dtype=bool))[None], edges)
    if edges > 0:
        flags |= Flag.EDGES_MASKED
    cosmics = inputs.cosmic_mask(t_flux, t_var, t_usable, cfg)
    if bool(cosmics.any()):
        t_usable &= ~cosmics
        flags |= Flag.COSMICS_MASKED
        notes.append(f"{int(cosmics.sum())} cosmic-ray pixels masked")
    usable = t_usable[0].numpy()

    native = obs.is_echelle and lookup(obs.instrument).layout == "canonical"
    if obs.kind == "e2ds" and not obs.blaze_corrected:
        flags |= Flag.BLAZE_MISSING
    if obs.is_echelle and not native:
        # foreign echelle layout: several native orders feed one canonical order, so their
        # different throughputs (and any blaze left in) are divided out first
        flux, var = _flatten_orders(flux, var, usable)
        notes.append("native orders flattened by their continuum fit before resampling")

    # frame: observatory -> barycentric -> stellar rest
    factor = 1.0
    berv = None
    if obs.frame == "observatory":
        if obs.berv_kms is not None:
            berv = obs.berv_kms
            factor *= float(doppler_factor(berv))
            flags |= Flag.BERV_APPLIED
        else:
            flags |= Flag.BERV_MISSING
    rv, rv_source, meas = None, "none", None
    if obs.frame != "rest" and cfg.rv_source != "none":
        if cfg.rv_source == "auto" and obs.rv_kms is not None and not (flags & Flag.BERV_MISSING):
            rv, rv_source = obs.rv_kms, obs.rv_source
            if rv_source == "header":
                flags |= Flag.RV_FROM_HEADER
        else:
            meas = measure_rv(wave * factor, flux, usable)
            flags |= Flag.RV_MEASURED
            if meas.reliable and np.isfinite(meas.rv_kms):
                rv, rv_source = meas.rv_kms, "measured"
            else:  # a weak peak is as likely noise as the star: no stellar shift at all
                flags |= Flag.RV_UNRELIABLE
                notes.append(f"measured RV {meas.rv_kms:.2f} km/s (CCF contrast {meas.contrast:.1f}) unreliable: not applied")
    if rv is not None:
        factor /= float(doppler_factor(rv))
    wave_rest = wave * factor

    if obs.resolution > cfg.target_resolution * 1.01:
        flux, var, usable = degrade(wave_rest, flux, var, usable, obs.resolution, cfg.target_resolution)
        flags |= Flag.DEGRADED_RESOLUTION

    if native:  # each canonical order from its one matching native row
        t_rest = torch.from_numpy(wave_rest)[None]
        resampler = inputs.NativeResampler(t_rest, inputs.nearest_rows(t_rest))
        t_f, t_v, t_m = resampler(torch.from_numpy(usable)[None], torch.from_numpy(flux)[None], torch.from_numpy(var)[None])
    else:
        t_f, t_v, t_m = (torch.from_numpy(a)[None] for a in resample_to_layout(wave_rest, flux, var, usable))
    f, v, m = t_f[0].numpy(), t_v[0].numpy(), t_m[0].numpy()
    if _has_gap(wave_rest, m, cfg.gap_min_A):
        flags |= Flag.GAP_MASKED
    if not m.any():
        raise ReadError(obs.source, "no usable pixels left in the canonical layout after masking")

    frac = m.mean(axis=1)
    if (frac < cfg.min_order_fraction).any():
        flags |= Flag.ORDERS_MISSING
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(m, f / np.sqrt(v), np.nan)
    snr_orders = np.full(len(ratio), np.nan)
    has = m.any(axis=1)
    snr_orders[has] = np.nanmedian(ratio[has], axis=1)
    snr = float(np.nanmedian(snr_orders))
    if not snr >= cfg.low_snr:
        flags |= Flag.LOW_SNR

    x, nf, nm, nv = inputs.build(t_f, t_m, t_v)
    x = x[0].to(torch.float32).numpy()
    norm_flux = nf[0].numpy().astype(np.float32)
    mask = nm[0].numpy().astype(bool)
    result = ModelInput(
        wave=np.array(canonical_wave()),
        flux=norm_flux,
        mask=mask,
        x=x,
        flags=flags,
        rv_kms=rv,
        rv_source=rv_source,
        berv_kms=berv,
        snr=snr,
        snr_orders=snr_orders,
        masked_fraction=float(1.0 - mask.mean()),
        orders_used=orders_used,
        observation=obs.metadata(),
        variance=nv[0].numpy().astype(np.float32),
        resolution=float(min(obs.resolution, cfg.target_resolution)) if obs.resolution else None,
        rv_measurement=meas,
        notes=notes,
    )
    assert result.x.shape == (2, N_ORDERS, canonical_wave().shape[1])
    log.debug("%s: %s rv=%s (%s) berv=%s snr=%.1f masked=%.3f", obs.source, "|".join(flags.names()), rv, rv_source, berv, snr, result.masked_fraction)
    return result

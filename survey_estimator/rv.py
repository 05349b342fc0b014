"""Stellar radial velocity by cross-correlation with a line-mask template (5040-5360 A).

Used when a file carries no pipeline RV (old-DRS e2ds and s1d, ESO ADP tables). The template is a
short list of strong, mostly unblended lines in the science band (air wavelengths from the solar
spectrum: Mg I b triplet, Fe I/II, Ca I, Cr I, Ni I, Ti I), each a Gaussian absorption weighted by
its depth. The spectrum is flattened by a running upper envelope per segment, so blaze-shaped
counts, blaze-corrected flux and normalised flux all work, for FGK and M stars alike.

Convention: ``lambda_obs = lambda_rest * doppler_factor(rv)``; a positive RV means redshift.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d, percentile_filter

from .layout import C_KMS, doppler_factor

log = logging.getLogger(__name__)

TEMPLATE_LINES: tuple[tuple[float, float], ...] = (
    # (air wavelength A, relative depth) -- strong lines of the solar spectrum in 5040-5360 A
    (5041.072, 0.5), (5041.756, 0.6), (5049.820, 0.6), (5051.635, 0.6), (5068.766, 0.6),
    (5079.223, 0.5), (5079.740, 0.5), (5083.339, 0.6), (5090.773, 0.5), (5107.447, 0.5),
    (5107.641, 0.5), (5110.413, 0.6), (5123.720, 0.6), (5127.359, 0.5), (5133.689, 0.6),
    (5137.382, 0.5), (5139.252, 0.6), (5139.463, 0.6), (5150.840, 0.5), (5151.911, 0.6),
    (5162.273, 0.7), (5166.282, 0.6), (5167.322, 0.9), (5168.898, 0.6),
    (5171.596, 0.7), (5172.684, 0.9), (5183.604, 0.9), (5191.455, 0.7), (5192.344, 0.7),
    (5194.942, 0.6), (5198.711, 0.5), (5202.336, 0.6), (5206.038, 0.7),
    (5208.419, 0.7), (5215.181, 0.5), (5216.274, 0.6), (5225.526, 0.5), (5226.862, 0.6),
    (5232.940, 0.7), (5242.491, 0.5), (5250.209, 0.5), (5250.646, 0.5),
    (5254.956, 0.5), (5261.704, 0.5), (5262.241, 0.5), (5263.306, 0.5), (5264.802, 0.5),
    (5266.555, 0.6), (5269.537, 0.8), (5270.356, 0.7), (5273.164, 0.5), (5281.790, 0.6),
    (5283.621, 0.6), (5302.302, 0.5), (5307.361, 0.5), (5324.179, 0.6), (5328.039, 0.8),
    (5328.532, 0.5), (5332.900, 0.5), (5339.929, 0.6), (5341.024, 0.6), (5353.374, 0.4),
)
"""Template lines: (air wavelength in Angstrom, relative depth). Checked against the ESPRESSO
spectrum of HD 41248 shifted by its pipeline RV: every line sits within 0.015 A of its listed
wavelength, with a common offset of +0.5 km/s (the CCF zero point relative to that pipeline)."""


@dataclass(frozen=True)
class RVMeasurement:
    """Result of :func:`measure_rv`.

    Attributes:
        rv_kms: velocity of the CCF peak (km/s), in the frame of the input wavelengths.
        peak: CCF value at the peak (mean template-weighted line depth, 0-1).
        contrast: peak height over the CCF's median level in units of its robust scatter; below
            ~5 the measurement is doubtful.
        n_lines: template lines used.
    """

    rv_kms: float
    peak: float
    contrast: float
    n_lines: int

    @property
    def reliable(self) -> bool:
        return self.contrast >= 5.0 and self.n_lines >= 10


@dataclass(frozen=True)
class CCFConfig:
    """Velocity grid and smoothing of the cross-correlation."""

    v_min_kms: float = -400.0
    v_max_kms: float = 400.0
    step_kms: float = 0.5
    line_sigma_kms: float = 3.0
    """Gaussian width given to each template line (and to the smoothing of the data)."""
    envelope_A: float = 3.0
    """Width of the running upper-envelope window used to flatten the data."""
    envelope_percentile: float = 95.0
    fit_half_width_kms: float = 4.0
    """Half-width of the window around the peak fitted by a parabola."""
    coarse_factor: int = 4
    """:func:`measure_rv` searches the whole range every ``coarse_factor`` steps (its median and
    scatter give the contrast), then every step around the highest coarse point."""
    pixels_per_sigma: float = 1.5
    """Pixels are averaged in groups while ``line_sigma_kms`` spans at least this many of them
    (HARPS and HARPS-N: pairs; the averaging adds 0.5 km/s in quadrature to the 3 km/s)."""


def _flatten(wave: np.ndarray, flux: np.ndarray, usable: np.ndarray, cfg: CCFConfig) -> np.ndarray:
    """Absorption depth ``1 - flux / envelope`` for one segment, 0 where unusable."""
    f = np.where(usable, flux, np.nan)
    good = np.flatnonzero(usable)
    f = np.interp(np.arange(f.size), good, f[good])  # fill gaps so filters behave
    step = (wave[-1] - wave[0]) / (wave.size - 1)  # mean pixel step (A)
    size = max(int(cfg.envelope_A / step) | 1, 5)
    env = percentile_filter(f, cfg.envelope_percentile, size=size, mode="nearest")
    # the envelope varies on the scale of its window (~120 px at HARPS sampling): smoothed on every
    # k-th pixel and interpolated back, 1e-3 of the full-resolution smoothing at a k-th of its cost
    k = max(size // 32, 1)
    coarse = gaussian_filter1d(env[::k], size / 4 / k)
    env = np.interp(np.arange(f.size), np.arange(0, f.size, k), coarse)
    sigma_px = cfg.line_sigma_kms / C_KMS * wave[wave.size // 2] / step  # ~ the median: the row increases
    f = gaussian_filter1d(f, max(sigma_px, 0.5))
    depth = np.clip(1.0 - f / np.where(env > 0, env, np.nan), -0.5, 1.0)
    return np.where(usable & np.isfinite(depth), depth, 0.0)


def _binned(wave: np.ndarray, flux: np.ndarray, usable: np.ndarray, cfg: CCFConfig):
    """(wave, flux, usable) of one increasing segment averaged over groups of pixels while
    ``line_sigma_kms`` still spans ``pixels_per_sigma`` of the groups; a group is usable when
    all its pixels are."""
    step_kms = C_KMS * (wave[-1] - wave[0]) / (wave.size - 1) / wave[wave.size // 2]
    n = int(cfg.line_sigma_kms / step_kms / cfg.pixels_per_sigma)
    if n < 2:
        return wave, flux, usable
    m = wave.size // n * n
    f = np.where(usable, flux, 0.0)
    w_sum, f_sum, u_all = wave[0:m:n].copy(), f[0:m:n].copy(), usable[0:m:n].copy()
    for i in range(1, n):  # strided sums: faster than a mean over a short last axis
        w_sum += wave[i:m:n]
        f_sum += f[i:m:n]
        u_all &= usable[i:m:n]
    return w_sum / n, f_sum / n, u_all


def _segments(wave: np.ndarray, flux: np.ndarray, mask: np.ndarray | None, cfg: CCFConfig) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The rows that can correlate: (wavelengths, absorption depth, template lines they cover
    over the whole velocity range) per row, after :func:`_binned` and :func:`_flatten`."""
    wave = np.atleast_2d(np.asarray(wave, dtype=np.float64))
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    usable = np.isfinite(flux) & np.isfinite(wave)
    if mask is not None:
        usable &= np.atleast_2d(mask)
    f_lo, f_hi = doppler_factor(cfg.v_min_kms), doppler_factor(cfg.v_max_kms)
    lines = np.array(TEMPLATE_LINES)
    lo_all, hi_all = lines[:, 0].min() * f_lo - 5, lines[:, 0].max() * f_hi + 5
    out = []
    for w, f, u in zip(wave, flux, usable):
        keep = np.isfinite(w) & (w > lo_all) & (w < hi_all)
        if u[keep].sum() < 50:
            continue
        w, f, u = _binned(w[keep], f[keep], u[keep], cfg)
        covered = np.flatnonzero((lines[:, 0] * f_lo >= w[0]) & (lines[:, 0] * f_hi <= w[-1]))
        if covered.size and u.sum() >= 25:
            out.append((w, _flatten(w, f, u, cfg), covered))
    return out


def _correlate(segments, v: np.ndarray) -> tuple[np.ndarray, int]:
    """(CCF at velocities ``v`` (n_v,) km/s: the template-weighted mean depth, lines used)."""
    lines = np.array(TEMPLATE_LINES)
    factors = doppler_factor(v)
    total = np.zeros(v.size)
    weight = np.zeros(len(lines))
    for w, depth, covered in segments:
        pos = lines[covered, 0, None] * factors  # (n_covered, n_v)
        total += (lines[covered, 1, None] * np.interp(pos, w, depth)).sum(axis=0)
        weight[covered] += lines[covered, 1]
    norm = weight.sum()
    return (total / norm if norm > 0 else total), int((weight > 0).sum())


def ccf(wave: np.ndarray, flux: np.ndarray, mask: np.ndarray | None = None, config: CCFConfig | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Cross-correlation function against the line-mask template, every ``step_kms``.

    Args:
        wave: (n_orders, n_pixels) or (n_pixels,) wavelengths, A, increasing along each row.
        flux: same shape, any positive scale.
        mask: same shape, True = usable (default: finite flux).
    Returns:
        (velocities (n_v,) km/s, CCF (n_v,) mean weighted depth, number of lines used).
    """
    cfg = config or CCFConfig()
    v = np.arange(cfg.v_min_kms, cfg.v_max_kms + cfg.step_kms / 2, cfg.step_kms)
    c, n_lines = _correlate(_segments(wave, flux, mask, cfg), v)
    return v, c, n_lines


def measure_rv(wave: np.ndarray, flux: np.ndarray, mask: np.ndarray | None = None, config: CCFConfig | None = None) -> RVMeasurement:
    """Radial velocity (km/s) of the spectrum relative to its wavelength frame.

    The CCF is searched every ``coarse_factor`` steps over the whole range, then every step
    within ``coarse_factor`` steps plus ``fit_half_width_kms`` of the highest coarse point; the
    peak is refined by a parabola fit to the points within ``fit_half_width_kms``.
    Returns an :class:`RVMeasurement`; ``reliable`` is False when the peak barely rises above
    the CCF's noise (median and robust scatter of the coarse CCF) or too few lines were covered.
    """
    cfg = config or CCFConfig()
    segments = _segments(wave, flux, mask, cfg)
    coarse_step = cfg.step_kms * cfg.coarse_factor
    v_coarse = np.arange(cfg.v_min_kms, cfg.v_max_kms + coarse_step / 2, coarse_step)
    c_coarse, n_lines = _correlate(segments, v_coarse)
    if n_lines == 0 or not np.any(c_coarse):
        return RVMeasurement(rv_kms=float("nan"), peak=0.0, contrast=0.0, n_lines=n_lines)
    half = coarse_step + cfg.fit_half_width_kms
    centre = v_coarse[int(np.argmax(c_coarse))]
    v = np.arange(max(cfg.v_min_kms, centre - half), min(cfg.v_max_kms, centre + half) + cfg.step_kms / 2, cfg.step_kms)
    c, _ = _correlate(segments, v)
    k = int(np.argmax(c))
    sel = np.abs(v - v[k]) <= cfg.fit_half_width_kms
    rv = float(v[k])
    if sel.sum() >= 3 and 0 < k < v.size - 1:
        a, b, _ = np.polyfit(v[sel] - v[k], c[sel], 2)
        if a < 0:
            rv = float(v[k] - b / (2 * a))
            rv = float(np.clip(rv, v[k] - cfg.fit_half_width_kms, v[k] + cfg.fit_half_width_kms))
    base = np.median(c_coarse)
    scatter = 1.4826 * np.median(np.abs(c_coarse - base)) or 1e-12
    meas = RVMeasurement(rv_kms=rv, peak=float(c[k]), contrast=float((c[k] - base) / scatter), n_lines=n_lines)
    log.debug("CCF: rv=%.3f km/s peak=%.3f contrast=%.1f lines=%d", meas.rv_kms, meas.peak, meas.contrast, n_lines)
    return meas


MGB_AIR: tuple[float, float, float] = (5167.32, 5172.68, 5183.60)
"""The Mg I b triplet, air wavelengths (A): the check that a spectrum sits in the rest frame."""


def line_centre(wave: np.ndarray, flux: np.ndarray, mask: np.ndarray, lam: float, search_A: float = 0.3,
                half_A: float = 0.05) -> float:
    """Centre (A) of the absorption line nearest ``lam``: in every row that covers ``lam +- search_A``
    with usable pixels only, a parabola through the pixels within ``half_A`` of the flux minimum;
    the median over rows, NaN when no row covers the line.

    Args:
        wave, flux, mask: (n_rows, n_pixels) or (n_pixels,), e.g. the canonical (8, 4096) model input.
    """
    found = []
    for w, f, m in zip(np.atleast_2d(wave), np.atleast_2d(flux), np.atleast_2d(mask)):
        sel = np.abs(w - lam) < search_A
        if sel.sum() < 5 or not m[sel].all():
            continue
        j = np.flatnonzero(sel)[np.argmin(f[sel])]
        fit = np.abs(w - w[j]) <= max(half_A, 2.5 * np.median(np.diff(w[sel])))
        if fit.sum() < 3:
            continue
        a, b, _ = np.polyfit(w[fit] - w[j], f[fit], 2)
        if a > 0:
            found.append(float(w[j] - b / (2 * a)))
    return float(np.median(found)) if found else float("nan")


def line_offsets(wave: np.ndarray, flux: np.ndarray, mask: np.ndarray, lines=MGB_AIR) -> np.ndarray:
    """Offset (A) of each line's measured centre from its listed wavelength (:func:`line_centre`);
    NaN for a line no row covers. Shape ``(len(lines),)``."""
    return np.array([line_centre(wave, flux, mask, lam) - lam for lam in lines])

"""The canonical model input: HARPS-N echelle rows 36-43 (5026-5395 A), 8 orders x 4096 pixels.

Wavelengths are in AIR, in Angstrom, evaluated from a real HARPS-N wavelength solution
(HARPN_3.7, 2016-01-07; the 276 ``HIERARCH TNG DRS CAL TH COEFF LL{i}`` cards, shipped as
``survey_estimator/data/harpn_wave_coeff_ll.txt``):

    lambda[o, x] = sum_{p=0..d} C[o*(d+1) + p] * x**p,   x = 0..4095 (0-based), d = 3.

Every spectrum, synthetic or observed, is resampled onto ``CANONICAL_WAVE`` (shape (8, 4096)) with a
boolean mask (True = usable) for the pixels it lacks.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

from .cubic import weights as cubic_weights

N_ORDERS = 8
N_PIXELS = 4096
FIRST_ROW = 36
"""HARPS-N e2ds row (0-based) of the first canonical order; physical order m = 157 - row."""
ROWS = tuple(range(FIRST_ROW, FIRST_ROW + N_ORDERS))
BAND = (5050.0, 5350.0)
"""The science band in Angstrom (air) that the eight rows cover with overlap."""
C_KMS = 299792.458
LAYOUT_VERSION = "harpn-r36-43-v1"
"""Identifier of this layout, stored in grids and model bundles."""


def wavelength_solution(coeffs: np.ndarray, degree: int, n_pixels: int = N_PIXELS) -> np.ndarray:
    """Evaluate a DRS polynomial wavelength solution.

    Args:
        coeffs: flat coefficient array C, length n_orders * (degree + 1).
        degree: polynomial degree d (``DRS CAL TH DEG LL``).
        n_pixels: pixels per order.

    Returns:
        float64 array (n_orders, n_pixels) of wavelengths (same medium as the coefficients),
        READ-ONLY: the exposures of a night share their calibration, so the last few solutions
        are kept and handed out again (copy before changing one).
    """
    coeffs = np.ascontiguousarray(coeffs, dtype=np.float64)
    if coeffs.size % (degree + 1):
        raise ValueError(f"{coeffs.size} coefficients do not split into orders of degree {degree}")
    return _solution(coeffs.tobytes(), int(degree), int(n_pixels))


@lru_cache(maxsize=8)
def _solution(coeffs: bytes, degree: int, n_pixels: int) -> np.ndarray:
    """:func:`wavelength_solution` of the coefficients' bytes, by Horner's rule."""
    c = np.frombuffer(coeffs, dtype=np.float64).reshape(-1, degree + 1)
    x = np.arange(n_pixels, dtype=np.float64)
    wave = np.repeat(c[:, degree : degree + 1], n_pixels, axis=1)
    for k in range(degree - 1, -1, -1):
        wave *= x
        wave += c[:, k : k + 1]
    wave.flags.writeable = False
    return wave


@lru_cache(maxsize=1)
def harpn_reference_coefficients() -> tuple[np.ndarray, int]:
    """The shipped HARPS-N solution: (coefficients (69*4,), degree 3)."""
    text = resources.files("survey_estimator.data").joinpath("harpn_wave_coeff_ll.txt").read_text()
    rows = [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    table = np.array([[float(v.replace("D", "E")) for v in r[1:]] for r in rows])
    return table.reshape(-1), table.shape[1] - 1


@lru_cache(maxsize=1)
def _canonical_wave() -> np.ndarray:
    coeffs, degree = harpn_reference_coefficients()
    wave = wavelength_solution(coeffs, degree)[FIRST_ROW : FIRST_ROW + N_ORDERS]
    wave.setflags(write=False)
    return wave


def canonical_wave() -> np.ndarray:
    """Air wavelengths of the canonical layout, Angstrom, float64, shape (8, 4096), read-only."""
    return _canonical_wave()


BAND_MARGIN_A = 10.0
"""Native data within this margin (A) of the canonical range are what preprocessing uses."""


def rows_near_band(wave: np.ndarray, margin_A: float = BAND_MARGIN_A) -> np.ndarray:
    """Indices of the rows of ``wave`` (R, P), A, with a wavelength strictly inside the canonical
    range widened by ``margin_A`` on each side (a HARPS-N e2ds: 10 of its 69 rows)."""
    cw = canonical_wave()
    lo, hi = cw[0, 0] - margin_A, cw[-1, -1] + margin_A
    w = np.atleast_2d(wave)
    with np.errstate(invalid="ignore"):
        return np.flatnonzero(((w > lo) & (w < hi)).any(axis=1))


def fine_grid_bounds(margin_kms: float = 400.0) -> tuple[float, float]:
    """Wavelength range (A) a synthetic spectrum must cover so that any RV shift up to
    ``margin_kms`` and rotational broadening still fill the canonical layout."""
    w = canonical_wave()
    f = margin_kms / C_KMS
    return float(w.min() * (1 - f)), float(w.max() * (1 + f))


def doppler_factor(rv_kms):
    """Relativistic Doppler factor sqrt((1+b)/(1-b)); lambda_obs = lambda_rest * factor."""
    b = np.asarray(rv_kms, dtype=np.float64) / C_KMS
    return np.sqrt((1 + b) / (1 - b))


def resample_to_layout(
    wave: np.ndarray,
    flux: np.ndarray,
    variance: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    target: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample a spectrum onto the canonical layout (Keys cubic convolution, :mod:`.cubic`; linear
    next to unusable pixels, at segment ends and where the input sampling is uneven).

    Args:
        wave: wavelengths (A), any shape; each row (or the 1D array) must be increasing. Rows of a
            2D echelle input are treated as separate segments, so no interpolation bridges two
            orders or a gap between them.
        flux: same shape as ``wave``.
        variance: same shape, or None.
        mask: boolean, same shape, True = usable; None means all finite pixels are usable.
        target: wavelengths to sample (default ``canonical_wave()``), shape (8, 4096).

    Returns:
        (flux, variance, mask) on ``target``: float64 arrays and a boolean mask, True where the
        target pixel lies inside an input segment and both neighbouring input pixels are usable.
        Where several segments overlap a target pixel, the one with the best mean S/N there wins
        (or the later one when no variance is given). Unusable pixels hold NaN.
    """
    target = canonical_wave() if target is None else np.asarray(target, dtype=np.float64)
    wave = np.atleast_2d(np.asarray(wave, dtype=np.float64))
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    var = None if variance is None else np.atleast_2d(np.asarray(variance, dtype=np.float64))
    usable = np.isfinite(flux) & np.isfinite(wave)
    if var is not None:
        usable &= np.isfinite(var) & (var > 0)
    if mask is not None:
        usable &= np.atleast_2d(np.asarray(mask, dtype=bool))

    out_f = np.full(target.shape, np.nan)
    out_v = np.full(target.shape, np.nan)
    out_m = np.zeros(target.shape, dtype=bool)
    best = np.full(target.shape, -np.inf)
    flat_t = target.reshape(-1)
    for w, f, u, v in zip(wave, flux, usable, var if var is not None else [None] * len(wave)):
        ok_w = np.isfinite(w)
        if ok_w.sum() < 2:
            continue
        w, f, u = w[ok_w], f[ok_w], u[ok_w]
        v = None if v is None else v[ok_w]
        if np.any(np.diff(w) <= 0):
            raise ValueError("wavelengths must increase along each segment")
        inside = (flat_t >= w[0]) & (flat_t <= w[-1])
        if not inside.any():
            continue
        t = flat_t[inside]
        j = np.clip(np.searchsorted(w, t, side="right") - 1, 0, len(w) - 2)
        a = (t - w[j]) / (w[j + 1] - w[j])
        good = u[j] & u[j + 1]
        # Keys cubic where the four taps exist, are usable and are evenly spaced; linear elsewhere
        jm, jp = np.maximum(j - 1, 0), np.minimum(j + 2, len(w) - 1)
        dw = w[j + 1] - w[j]
        even = (np.abs((w[j] - w[jm]) / dw - 1) < 0.05) & (np.abs((w[jp] - w[j + 1]) / dw - 1) < 0.05)
        cubic = good & (j >= 1) & (j + 2 <= len(w) - 1) & u[jm] & u[jp] & even
        taps = np.stack([jm, j, j + 1, jp])  # (4, N)
        wts = np.where(cubic, np.stack(cubic_weights(a)), np.stack([np.zeros_like(a), 1 - a, a, np.zeros_like(a)]))
        fz = np.where(u, f, 0.0)
        fi = np.where(good, (wts * fz[taps]).sum(axis=0), np.nan)
        if v is not None:
            vz = np.where(u, v, 0.0)
            vi = np.where(good, (wts**2 * vz[taps]).sum(axis=0), np.nan)
            quality = np.where(good, np.abs(fi) / np.sqrt(np.where(good, vi, 1.0)), -np.inf)
        else:
            vi = np.full_like(fi, np.nan)
            quality = np.where(good, 0.0, -np.inf)
        idx = np.flatnonzero(inside)
        take = good & (quality >= best.reshape(-1)[idx])
        sel = idx[take]
        out_f.reshape(-1)[sel] = fi[take]
        out_v.reshape(-1)[sel] = vi[take]
        out_m.reshape(-1)[sel] = True
        best.reshape(-1)[sel] = quality[take]
    return out_f, out_v, out_m

"""What every merged 1D spectrum goes through, whichever file it came from (FITS image with a
wavelength WCS, FITS table, plain text): wavelength units, order, sampling, zero-filled stretches,
quality and variance.

Shapes: every array is ``(n_pixels,)``; wavelengths in Angstrom.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..layout import BAND
from ..observation import Observation, ReadError
from .noise import der_snr_variance

UNITS_TO_A = {"angstrom": 1.0, "angstroms": 1.0, "a": 1.0, "aa": 1.0, "0.1nm": 1.0, "nm": 10.0, "nanometer": 10.0,
              "nanometers": 10.0, "nanometre": 10.0, "um": 1e4, "micron": 1e4, "microns": 1e4, "micrometer": 1e4}
"""Wavelength unit names (lower case) and their factor to Angstrom."""
NON_UNIFORM = 0.05
"""Relative spread (5-95 percentile over the median) of the pixel step, both in A and in km/s,
above which the sampling is reported as non-uniform."""


@dataclass
class Spectrum1D:
    """A cleaned merged spectrum.

    Attributes:
        wave: (n,) float64 increasing wavelengths, A.
        flux: (n,) float64 flux, NaN where missing.
        variance: (n,) float64 variance of ``flux``.
        mask: (n,) bool, True = usable.
        notes: what was found or done, for ``Observation.notes``.
    """

    wave: np.ndarray
    flux: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    notes: list[str] = field(default_factory=list)

    def observation(self, name: str, kind: str, instrument: str, *, medium: str | None = None, frame: str | None = None,
                    convention: bool = False, medium_default: str = "air", **metadata) -> Observation:
        """This spectrum as an :class:`Observation` from reader ``kind``.

        Args:
            medium, frame: what the file's cards or column names say (source "header"), None when
                nothing does: then the format's convention when ``convention`` (source "format"),
                else assumed ("assumed"); the value is then ``medium_default`` / barycentric.
            metadata: the other :class:`Observation` fields (target, times, DRS fields, ...).
        """
        fallback = "format" if convention else "assumed"
        return Observation(
            flux=self.flux,
            variance=self.variance,
            wave=self.wave,
            mask=self.mask,
            medium=medium or medium_default,
            medium_source="header" if medium else fallback,
            frame=frame or "barycentric",
            frame_source="header" if frame else fallback,
            instrument=instrument,
            kind=kind,
            source=name,
            notes=self.notes,
            **{"drs_version": "", **metadata},
        )


def to_angstrom(wave: np.ndarray, unit: str | None, notes: list[str]) -> np.ndarray:
    """Wavelengths in A from ``unit`` (a FITS unit string; None or unrecognised: judged by the values:
    a median of 300-1100 is taken as nm, 0.3-1.1 as micron, anything else as A, with a note)."""
    u = str(unit or "").strip().lower().replace("ångström", "angstrom")
    if u in UNITS_TO_A:
        return wave * UNITS_TO_A[u]
    med = float(np.nanmedian(wave)) if np.isfinite(wave).any() else np.nan
    if 300 <= med <= 1100:
        notes.append(f"wavelength unit {unit or 'not given'}: taken as nm from the values (median {med:.1f})")
        return wave * 10.0
    if 0.3 <= med <= 1.1:
        notes.append(f"wavelength unit {unit or 'not given'}: taken as micron from the values (median {med:.3f})")
        return wave * 1e4
    if unit and u not in ("", "linear", "wavelength", "lambda", "pixel"):
        notes.append(f"wavelength unit {unit!r} not recognised: taken as A")
    return wave


def quality_mask(quality: np.ndarray, notes: list[str]) -> np.ndarray:
    """Good pixels (True) from a quality/flag column: 0 = good (the ESO convention), except when most
    values are non-zero, which marks a boolean "good pixel" mask (then non-zero = good)."""
    q = np.asarray(quality)
    if q.dtype == bool:
        bad = ~q if q.mean() > 0.5 else q
    else:
        q = np.nan_to_num(q.astype(np.float64), nan=1.0)
        bad = (q == 0) if (q != 0).mean() > 0.5 else (q != 0)
    if (q != 0).mean() > 0.5:
        notes.append("quality column is mostly non-zero: read as a good-pixel mask (non-zero = good)")
    return ~np.asarray(bad, dtype=bool)


def _zero_runs(flux: np.ndarray, wave: np.ndarray, notes: list[str]) -> np.ndarray:
    """True where the flux is exactly zero (a zero-filled gap or padding); noted with its spans."""
    zero = flux == 0
    if zero.sum() == 0:
        return zero
    edges = np.flatnonzero(np.diff(np.concatenate([[0], zero.astype(int), [0]])))
    spans = [(wave[a], wave[b - 1]) for a, b in zip(edges[::2], edges[1::2]) if b - a >= 2]
    inside = [f"{lo:.1f}-{hi:.1f} A" for lo, hi in spans if hi > BAND[0] and lo < BAND[1]]
    text = f"{int(zero.sum())} pixels of exactly zero flux masked"
    if inside:
        text += f" (inside the band: {', '.join(inside[:3])})"
    notes.append(text)
    return zero


def _order(name: str, wave: np.ndarray, arrays: list[np.ndarray | None], notes: list[str]):
    """Wavelengths made increasing (a descending spectrum is reversed); anything else that is not
    monotonic (several spectra or orders one after another, repeated wavelengths) is refused."""
    step = np.diff(wave)
    if step.size and np.all(step < 0):
        notes.append("wavelengths descending: reversed")
        return wave[::-1], [None if a is None else a[::-1] for a in arrays]
    if np.all(step > 0):
        return wave, arrays
    back = np.flatnonzero(step < 0)
    typical = float(np.median(np.abs(step[step != 0]))) if np.any(step != 0) else 0.0
    jumps = back[np.abs(step[back]) > 10 * typical] if typical > 0 else back
    if jumps.size:
        at = ", ".join(f"{wave[j]:.1f} -> {wave[j + 1]:.1f} A" for j in jumps[:3])
        raise ReadError(name, f"wavelengths jump back {jumps.size} time(s) ({at}): the data hold {jumps.size + 1} spectra "
                              "(or echelle orders) one after another; give one spectrum per file")
    raise ReadError(name, f"wavelengths not monotonic ({back.size} steps backwards, {int((step == 0).sum())} repeated)")


def _sampling_note(wave: np.ndarray, notes: list[str]) -> None:
    """Note a pixel step that is neither constant in A nor in km/s over the band."""
    sel = (wave > BAND[0]) & (wave < BAND[1])
    w = wave[sel]
    if w.size < 20:
        return
    step = np.diff(w)
    med = float(np.median(step))
    step = step[step < 5 * med]  # gaps are masked later, not "sampling"
    if step.size < 10:
        return
    lo, hi = np.percentile(step, [5, 95])
    dv = step / w[1 : step.size + 1]
    dlo, dhi = np.percentile(dv, [5, 95])
    if (hi - lo) / med > NON_UNIFORM and (dhi - dlo) / np.median(dv) > NON_UNIFORM:
        notes.append(f"non-uniform sampling (pixel step {step.min():.4f}-{step.max():.4f} A in the band): resampled by wavelength")


def build(name: str, wave, flux, *, error=None, variance=None, ivar=None, quality=None, unit: str | None = "angstrom",
          notes: list[str] | None = None) -> Spectrum1D:
    """Clean one merged spectrum.

    Args:
        name: file name for errors.
        wave, flux: (n,) wavelengths (in ``unit``) and flux.
        error / variance / ivar: optional (n,) one-sigma error, variance or inverse variance (the
            first given of these wins; an ivar <= 0 is a missing value).
        quality: optional (n,) quality flags (see :func:`quality_mask`).
        unit: wavelength unit (see :func:`to_angstrom`).
        notes: list to extend (a new one by default).
    Raises:
        ReadError: shapes differ, no finite wavelength, too few pixels, non-monotonic wavelengths.
    """
    notes = [] if notes is None else notes
    if variance is None and ivar is not None:
        ivar = np.asarray(ivar, dtype=np.float64)
        with np.errstate(divide="ignore"):
            variance = np.where(ivar > 0, 1.0 / ivar, np.nan)
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    flux = np.asarray(flux, dtype=np.float64).reshape(-1)
    extra = [None if a is None else np.asarray(a).reshape(-1) for a in (error, variance, quality)]
    for label, a in zip(("error", "variance", "quality"), extra):
        if a is not None and a.shape != flux.shape:
            raise ReadError(name, f"wrong shape: {label} {a.shape} vs flux {flux.shape}")
    if wave.shape != flux.shape:
        raise ReadError(name, f"wrong shape: wavelength {wave.shape} vs flux {flux.shape}")
    finite = np.isfinite(wave)
    if not finite.any():
        raise ReadError(name, "missing wavelength solution (no finite wavelengths)")
    if not finite.all():  # NaN wavelengths carry nothing
        notes.append(f"{int((~finite).sum())} pixels without a finite wavelength dropped")
        wave, flux = wave[finite], flux[finite]
        extra = [None if a is None else a[finite] for a in extra]
    if wave.size < 100:
        raise ReadError(name, f"only {wave.size} pixels: too few for a spectrum")
    wave = to_angstrom(wave, unit, notes)
    wave, (flux, error, variance, quality) = _order(name, wave, [flux, *extra], notes)
    _sampling_note(wave, notes)
    zero = _zero_runs(flux, wave, notes)
    flux = np.where(zero, np.nan, flux)
    var = None
    if error is not None:
        var = np.asarray(error, dtype=np.float64) ** 2
    elif variance is not None:
        var = np.asarray(variance, dtype=np.float64)
    if var is not None:
        have = np.isfinite(flux)
        if not have.any() or (np.isfinite(var) & (var > 0))[have].mean() < 0.5:
            notes.append("error values mostly missing or zero: variance estimated from the flux (DER_SNR)")
            var = None
    if var is None:
        var = der_snr_variance(flux)
        if error is None and variance is None:
            notes.append("no error array: variance estimated from the flux (DER_SNR)")
    mask = np.isfinite(flux) & np.isfinite(var) & (var > 0)
    if quality is not None:
        mask &= quality_mask(quality, notes)
    return Spectrum1D(wave=wave, flux=flux, variance=var, mask=mask, notes=notes)

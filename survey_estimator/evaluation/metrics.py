"""Scores of predicted label distributions against true labels: the seed's Tables 2 and 3, and calibration.

All inputs are physical units with the label axis last, in ``LABEL_NAMES`` order:
``true``, ``mean``, ``sigma`` of shape (N, 4) (sigma = marginal 1-sigma; for a full covariance pass
``sqrt(diag(cov))``). Outputs are per label, shape (4,).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import erf

from ..labels import LABEL_NAMES, LABEL_UNITS

ONE_SIGMA = float(erf(1 / np.sqrt(2)))   # 0.6827: Gaussian mass within 1 sigma
TWO_SIGMA = float(erf(2 / np.sqrt(2)))   # 0.9545


def _check(*arrays: np.ndarray) -> list[np.ndarray]:
    out = [np.asarray(a, dtype=np.float64) for a in arrays]
    shape = out[0].shape
    if len(shape) != 2 or shape[1] != len(LABEL_NAMES):
        raise ValueError(f"expected arrays of shape (N, {len(LABEL_NAMES)}), got {shape}")
    for a in out[1:]:
        if a.shape != shape:
            raise ValueError(f"shape mismatch: {a.shape} vs {shape}")
    if shape[0] == 0:
        raise ValueError("no samples to score")
    return out


def mae(true: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Mean absolute error per label (physical units), shape (4,): the seed's Table 2."""
    true, mean = _check(true, mean)
    return np.mean(np.abs(mean - true), axis=0)


def coverage(true: np.ndarray, mean: np.ndarray, sigma: np.ndarray, k: float = 1.0) -> np.ndarray:
    """Fraction of samples with ``|mean - true| <= k * sigma`` per label, shape (4,): the seed's Table 3.

    A calibrated Gaussian gives 0.683 at k=1 and 0.954 at k=2.
    """
    true, mean, sigma = _check(true, mean, sigma)
    return np.mean(np.abs(mean - true) <= k * sigma, axis=0)


def fit_calibration_scales(true: np.ndarray, mean: np.ndarray, sigma: np.ndarray, method: str = "quantile") -> np.ndarray:
    """Per-label factors ``s`` (4,) such that ``s * sigma`` is calibrated on these (validation) samples.

    ``method="quantile"``: ``s`` = the 68.27% quantile of ``|r| / sigma`` (exact 1-sigma coverage on
    the fitting set, robust to outliers). ``method="rms"``: ``s = sqrt(mean((r / sigma)**2))`` (the
    maximum-likelihood scale of a Gaussian).
    """
    true, mean, sigma = _check(true, mean, sigma)
    z = np.abs(mean - true) / np.maximum(sigma, np.finfo(np.float64).tiny)
    if method == "quantile":
        s = np.quantile(z, ONE_SIGMA, axis=0)
    elif method == "rms":
        s = np.sqrt(np.mean(z**2, axis=0))
    else:
        raise ValueError(f"unknown calibration method {method!r} (quantile | rms)")
    return np.where(np.isfinite(s) & (s > 0), s, 1.0)


@dataclass
class Scores:
    """Scores of one prediction set, each a per-label list in ``LABEL_NAMES`` order."""

    n: int
    mae: list[float]
    bias: list[float]
    within_1sigma: list[float]
    within_2sigma: list[float]
    median_sigma: list[float]

    def to_dict(self) -> dict:
        return asdict(self)

    def flat(self, prefix: str = "") -> dict[str, float]:
        """``{prefix}mae_teff`` ... style scalars for MLflow."""
        out: dict[str, float] = {}
        for field in ("mae", "bias", "within_1sigma", "within_2sigma", "median_sigma"):
            for name, v in zip(LABEL_NAMES, getattr(self, field)):
                out[f"{prefix}{field}_{name}"] = float(v)
        return out


def score(true: np.ndarray, mean: np.ndarray, sigma: np.ndarray) -> Scores:
    """All scores of one prediction set (see :class:`Scores`)."""
    true, mean, sigma = _check(true, mean, sigma)
    return Scores(
        n=int(true.shape[0]),
        mae=mae(true, mean).tolist(),
        bias=np.mean(mean - true, axis=0).tolist(),
        within_1sigma=coverage(true, mean, sigma, 1.0).tolist(),
        within_2sigma=coverage(true, mean, sigma, 2.0).tolist(),
        median_sigma=np.median(sigma, axis=0).tolist(),
    )


_FMT = {"teff": "{:.1f}", "logg": "{:.3f}", "mh": "{:.3f}", "vsini": "{:.2f}"}


def mae_table(rows: dict[str, Scores]) -> str:
    """Markdown table of MAE per label, one row per key (e.g. "S/N 20"): the seed's Table 2."""
    head = "| set | N | " + " | ".join(f"{n} ({LABEL_UNITS[n]})" for n in LABEL_NAMES) + " |"
    lines = [head, "|" + "---|" * (len(LABEL_NAMES) + 2)]
    for key, s in rows.items():
        cells = [_FMT[n].format(v) for n, v in zip(LABEL_NAMES, s.mae)]
        lines.append(f"| {key} | {s.n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def coverage_table(rows: dict[str, Scores]) -> str:
    """Markdown table of the % within 1 and 2 sigma per label (the seed's Table 3)."""
    head = "| set | " + " | ".join(f"{n} 1σ / 2σ (%)" for n in LABEL_NAMES) + " |"
    lines = [head, "|" + "---|" * (len(LABEL_NAMES) + 1)]
    for key, s in rows.items():
        cells = [f"{100 * a:.1f} / {100 * b:.1f}" for a, b in zip(s.within_1sigma, s.within_2sigma)]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class BoundScores:
    """Errors against the Cramer-Rao bound for one prediction set (per-label lists).

    ``rms_over_bound`` is ``sqrt(mean((error / bound)^2))`` over the spectra (1 = at the noise
    limit of the forward model, whatever the mix of labels and S/N); ``median_bound`` the median
    per-spectrum bound (physical units)."""

    n: int
    rms: list[float]
    median_bound: list[float]
    rms_over_bound: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def bound_scores(true: np.ndarray, mean: np.ndarray, bound: np.ndarray) -> BoundScores:
    """:class:`BoundScores` of ``mean`` against ``true`` with per-spectrum bounds (N, 4)."""
    true, mean, bound = _check(true, mean, bound)
    err = mean - true
    return BoundScores(int(true.shape[0]), np.sqrt(np.mean(err**2, axis=0)).tolist(), np.median(bound, axis=0).tolist(),
                       np.sqrt(np.mean((err / bound) ** 2, axis=0)).tolist())


def bound_table(rows: dict[str, BoundScores]) -> str:
    """Markdown table: RMS error, median bound and RMS / bound per label, one row per key."""
    head = "| set | N | " + " | ".join(f"{n} RMS / bound ({LABEL_UNITS[n]})" for n in LABEL_NAMES) + " |"
    lines = [head, "|" + "---|" * (len(LABEL_NAMES) + 2)]
    for key, s in rows.items():
        cells = [f"{_FMT[n].format(r)} / {_FMT[n].format(b) if b >= 0.01 else f'{b:.4f}'} = **{q:.2f}x**"
                 for n, r, b, q in zip(LABEL_NAMES, s.rms, s.median_bound, s.rms_over_bound)]
        lines.append(f"| {key} | {s.n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def attention_near_lines(wave: np.ndarray, maps: np.ndarray, lines: tuple[float, ...], half_width: float = 0.5) -> dict:
    """How much of each attention map falls on given lines.

    Args:
        wave: (O, P) wavelengths, A; maps: (n_blocks, O, P) attention maps (each summing to 1).
        lines: line centres, A, in the frame of ``wave``; half_width: A either side of a centre.
    Returns:
        {"lines", "half_width_A", "share" (n_blocks,): the attention within ``half_width`` of a line,
        "pixel_share": the fraction of pixels there (what a uniform map gives), "enrichment"
        (n_blocks,): share / pixel_share (1 = no preference for the lines)}.
    """
    wave, maps = np.asarray(wave, np.float64), np.asarray(maps, np.float64)
    near = np.zeros(wave.shape, dtype=bool)
    for centre in lines:
        near |= np.abs(wave - centre) <= half_width
    pixel_share = float(near.mean())
    share = (maps * near).sum(axis=(-2, -1)) / maps.sum(axis=(-2, -1))
    enrichment = share / pixel_share if pixel_share > 0 else np.full_like(share, np.nan)
    return {"lines": [float(c) for c in lines], "half_width_A": float(half_width), "share": share.tolist(),
            "pixel_share": pixel_share, "enrichment": enrichment.tolist()}

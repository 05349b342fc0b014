"""Calibration of the fit's statistical sigmas on held-out spectra, as a function of S/N.

The inverse Fisher matrix at the optimum is the fit's raw covariance (``FitResult.cov_stat``). On
held-out spectra its 1-sigma intervals hold 67-72 % of the truths depending on label and S/N
(docs/model-card.md): near the bound but not exactly (the continuum's 120 coefficients and the
model-based variance below S/N 40 make the Gaussian approximation a little off). A
:class:`SigmaCalibration` holds, per label and per S/N node, a factor ``s`` for ``sigma_stat``
fitted on a calibration set, and interpolates it linearly in log S/N (constant beyond the outer
nodes). ``s`` is the geometric mean of the two factors that would each put one quantile of
``z = |error| / sigma_stat`` where a Gaussian has it: ``q_68.27(z)`` (1 sigma) and
``q_95.45(z) / 2`` (2 sigma). For Gaussian errors both are equal; where the errors have heavier
tails than a Gaussian (the fit at S/N 10, where a few spectra end in a neighbouring optimum) the
1-sigma factor alone leaves the 2-sigma intervals short by 2-3 %, and one factor per label can
only share the difference between the two. The fit applies it to
``cov_stat`` (``cov = S cov_stat S`` plus the interpolation error), and keeps the raw matrix.

Fitted by ``survey-estimator evaluate --fit-calibration-out FILE`` on spectra of one seed and
checked on another; the fit picks it up from ``survey_estimator/data/grids/<grid_id>.calibration.json``
when one is shipped (docs/fit.md) or from ``FitConfig(calibration=...)``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..labels import LABEL_NAMES

from ..evaluation.metrics import ONE_SIGMA, TWO_SIGMA


def measured_snr(y: torch.Tensor, var: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) median S/N per usable pixel of normalised spectra (NaN where none is usable): the S/N
    the fit switches on and the calibration is indexed by.

    Args:
        y: (B, O, P) normalised flux.
        var: (B, O, P) its variance.
        mask: (B, O, P) bool, True where the pixel is usable.
    """
    ok = mask & (var > 0) & torch.isfinite(var) & torch.isfinite(y)
    ratio = torch.where(ok, y / torch.sqrt(torch.where(ok, var, torch.ones_like(var))), torch.full_like(y, float("nan")))
    return torch.nanmedian(ratio.reshape(len(y), -1), dim=1).values


@dataclass(frozen=True)
class SigmaCalibration:
    """Factors on the statistical sigmas by S/N.

    Attributes:
        snr: (K,) increasing S/N nodes (the measured S/N of :func:`measured_snr`).
        scale: (K, 4) factor per node and label (Teff, log g, [M/H], v sin i).
        n: (K,) spectra each node was fitted on.
    """

    snr: tuple[float, ...]
    scale: tuple[tuple[float, ...], ...]
    n: tuple[int, ...]

    def at(self, snr) -> np.ndarray:
        """(B, 4) factors at the S/N values ``snr`` (B,); NaN or non-positive S/N gets the
        factors of the lowest node (the conservative end)."""
        snr = np.atleast_1d(np.asarray(snr, dtype=np.float64))
        nodes = np.log(np.asarray(self.snr))
        scale = np.asarray(self.scale, dtype=np.float64)
        x = np.log(np.where(np.isfinite(snr) & (snr > 0), snr, self.snr[0]))
        return np.stack([np.interp(x, nodes, scale[:, k]) for k in range(scale.shape[1])], axis=1)

    @classmethod
    def fit(cls, errors: np.ndarray, sigma: np.ndarray, snr: np.ndarray, nodes=None, min_n: int = 100) -> "SigmaCalibration":
        """Calibrate on held-out fits.

        Args:
            errors: (N, 4) fitted minus true labels.
            sigma: (N, 4) the fits' statistical sigmas (``FitResult.sigma_stat``).
            snr: (N,) each spectrum's measured S/N.
            nodes: S/N of the bins, whose edges are the geometric midpoints between them
                (default: the 10, 30, 50, 70 and 90 % quantiles of ``snr``).
            min_n: fewest spectra a node may hold.
        """
        errors, sigma, snr = (np.asarray(a, dtype=np.float64) for a in (errors, sigma, snr))
        good = np.isfinite(errors).all(1) & np.isfinite(sigma).all(1) & (sigma > 0).all(1) & np.isfinite(snr)
        errors, sigma, snr = errors[good], sigma[good], snr[good]
        if nodes is None:
            nodes = np.exp(np.quantile(np.log(snr), np.linspace(0.1, 0.9, 5)))
        nodes = np.sort(np.asarray(nodes, dtype=np.float64))
        edges = np.sqrt(nodes[1:] * nodes[:-1])
        which = np.searchsorted(edges, snr)
        keep_snr, keep_scale, keep_n = [], [], []
        for k in range(len(nodes)):
            sel = which == k
            if sel.sum() < min_n:
                continue
            z = np.abs(errors[sel]) / sigma[sel]
            keep_snr.append(float(np.exp(np.median(np.log(snr[sel])))))
            one, two = np.quantile(z, ONE_SIGMA, axis=0), np.quantile(z, TWO_SIGMA, axis=0) / 2
            keep_scale.append(tuple(float(v) for v in np.sqrt(one * two)))
            keep_n.append(int(sel.sum()))
        if not keep_snr:
            raise ValueError(f"no S/N bin holds {min_n} spectra ({len(snr)} usable)")
        return cls(tuple(keep_snr), tuple(keep_scale), tuple(keep_n))

    def to_dict(self) -> dict:
        return {"snr": list(self.snr), "labels": list(LABEL_NAMES),
                "scale": [dict(zip(LABEL_NAMES, s)) for s in self.scale], "n": list(self.n)}

    @classmethod
    def from_dict(cls, record: dict) -> "SigmaCalibration":
        scale = tuple(tuple(float(s[n]) for n in LABEL_NAMES) for s in record["scale"])
        return cls(tuple(float(v) for v in record["snr"]), scale, tuple(int(v) for v in record["n"]))

    def write(self, path: str | Path, **provenance) -> None:
        """Write as JSON with free-form provenance (command, date, forward model...)."""
        Path(path).write_text(json.dumps({**self.to_dict(), **provenance}, indent=1) + "\n")


def shipped_calibration(grid_id: str) -> SigmaCalibration | None:
    """The calibration shipped for ``grid_id`` (``data/grids/<grid_id>.calibration.json``), or None."""
    path = resources.files("survey_estimator.data").joinpath("grids").joinpath(f"{grid_id}.calibration.json")
    if not path.is_file():
        return None
    return SigmaCalibration.from_dict(json.loads(path.read_text()))

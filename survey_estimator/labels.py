"""The four stellar labels: names, units, the grid axes (the seed's Table 1) and the loss scaling.

Every other module takes label names, units and axes from here; nothing else defines them.
Arrays of labels always have their last axis in ``LABEL_NAMES`` order: shape (..., 4).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LABEL_NAMES: tuple[str, ...] = ("teff", "logg", "mh", "vsini")
"""Column names used in tables, catalogues and bundles, in array order."""

LABEL_UNITS: dict[str, str] = {"teff": "K", "logg": "dex", "mh": "dex", "vsini": "km/s"}
LABEL_TITLES: dict[str, str] = {
    "teff": "Teff [K]",
    "logg": "log g [dex]",
    "mh": "[M/H] [dex]",
    "vsini": "v sin i [km/s]",
}


@dataclass(frozen=True)
class Axis:
    """A regular grid axis from ``start`` to ``stop`` inclusive in steps of ``step``."""

    name: str
    start: float
    stop: float
    step: float

    @property
    def values(self) -> np.ndarray:
        """Node values, float64, shape (n,)."""
        n = int(round((self.stop - self.start) / self.step)) + 1
        return np.round(self.start + self.step * np.arange(n), 6)

    def index(self, value: float) -> int:
        """Index of the node equal to ``value`` (raises ValueError when off the axis)."""
        i = int(round((value - self.start) / self.step))
        if i < 0 or i >= len(self.values) or abs(self.values[i] - value) > 1e-6 * max(1.0, abs(value)):
            raise ValueError(f"{value} is not a node of the {self.name} axis {self.start}..{self.stop}/{self.step}")
        return i


TEFF = Axis("teff", 3500.0, 9750.0, 250.0)
LOGG = Axis("logg", 0.0, 5.0, 0.5)
MH = Axis("mh", -2.5, 0.5, 0.5)
VSINI = Axis("vsini", 0.0, 30.0, 2.0)

GRID_AXES: tuple[Axis, Axis, Axis] = (TEFF, LOGG, MH)
"""The synthesised axes: spectra are computed at v sin i = 0 on every (Teff, log g, [M/H]) node."""

LABEL_AXES: tuple[Axis, Axis, Axis, Axis] = (TEFF, LOGG, MH, VSINI)
"""All four label axes (Table 1); v sin i is applied by rotational broadening, not synthesised."""

LABEL_LO = np.array([a.start for a in LABEL_AXES], dtype=np.float64)
LABEL_HI = np.array([a.stop for a in LABEL_AXES], dtype=np.float64)
"""(4,) lower and upper ends of the Table-1 axes (K, dex, dex, km/s)."""

# Loss scaling: z = (x - centre) / half_range maps each Table-1 axis onto [-1, 1].
LABEL_CENTRE = np.array([(a.start + a.stop) / 2 for a in LABEL_AXES], dtype=np.float64)
LABEL_SCALE = np.array([(a.stop - a.start) / 2 for a in LABEL_AXES], dtype=np.float64)


@dataclass(frozen=True)
class LabelScaler:
    """Affine map between physical labels (..., 4) and normalised labels used by the loss.

    ``normalise(x) = (x - centre) / scale``. Covariances transform as ``S C S`` with
    ``S = diag(scale)``. The scaler is stored in every model bundle.
    """

    centre: tuple[float, ...] = tuple(LABEL_CENTRE)
    scale: tuple[float, ...] = tuple(LABEL_SCALE)

    def normalise(self, x):
        """Physical -> normalised; works on numpy arrays and torch tensors of shape (..., 4)."""
        return (x - _like(self.centre, x)) / _like(self.scale, x)

    def denormalise(self, z):
        """Normalised -> physical; numpy or torch, shape (..., 4)."""
        return z * _like(self.scale, z) + _like(self.centre, z)

    def sigma_to_physical(self, sigma_z):
        """Normalised 1-sigma (..., 4) -> physical units."""
        return sigma_z * _like(self.scale, sigma_z)

    def cov_to_physical(self, cov_z):
        """Normalised covariance (..., 4, 4) -> physical units."""
        s = _like(self.scale, cov_z)
        return cov_z * s[..., :, None] * s[..., None, :]

    def to_dict(self) -> dict:
        return {"names": list(LABEL_NAMES), "centre": list(self.centre), "scale": list(self.scale)}

    @classmethod
    def from_dict(cls, d: dict) -> "LabelScaler":
        if list(d["names"]) != list(LABEL_NAMES):
            raise ValueError(f"label names {d['names']} differ from {list(LABEL_NAMES)}")
        return cls(tuple(float(v) for v in d["centre"]), tuple(float(v) for v in d["scale"]))


def _like(values, ref):
    """``values`` as an array of the same kind (numpy/torch), dtype and device as ``ref``."""
    if hasattr(ref, "device") and hasattr(ref, "dtype") and not isinstance(ref, np.ndarray):
        import torch

        return torch.as_tensor(values, dtype=ref.dtype, device=ref.device)
    return np.asarray(values, dtype=np.result_type(ref, np.float32))

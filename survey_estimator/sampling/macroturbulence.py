"""Radial-tangential macroturbulence: Gray's kernel and a Teff / log g relation for its width.

The grid is synthesised without macroturbulence (``vmac = 0``); real FGK stars have 2-10 km/s of
it, which a model without it reads as v sin i. The forward model therefore broadens every node by
the radial-tangential (RT) profile of Gray (2005, ch. 17) with equal radial and tangential parts,
whose disk integral (no limb darkening) has the closed form

    M(v) = 2 / (sqrt(pi) zeta) * [exp(-x^2) - sqrt(pi) x erfc(x)],    x = |v| / zeta,

and a width zeta from the empirical relation of Doyle et al. (2014, MNRAS 444, 3592), the one
iSpec uses for dwarfs:

    zeta = 3.21 + 2.33e-3 (Teff - 5777) + 2.00e-6 (Teff - 5777)^2 - 2.00 (log g - 4.44)  km/s,

with Teff held inside 5200-6500 K (the relation's range; its parabola turns up below 5200 K) and
zeta clipped to ``VMAC_RANGE``. Both choices are recorded in the forward model's description.
"""
from __future__ import annotations

import math

import numpy as np
import torch

VMAC_RANGE = (0.5, 10.0)
"""km/s bounds of the relation's output."""
RELATION = "Doyle et al. 2014 (Teff clamped to 5200-6500 K), radial-tangential, A_R = A_T"


def vmac_relation(teff, logg) -> np.ndarray:
    """Macroturbulence zeta_RT (km/s) from Teff (K) and log g (dex); numpy, broadcast shape."""
    t = np.clip(np.asarray(teff, dtype=np.float64), 5200.0, 6500.0) - 5777.0
    z = 3.21 + 2.33e-3 * t + 2.00e-6 * t**2 - 2.00 * (np.asarray(logg, dtype=np.float64) - 4.44)
    return np.clip(z, *VMAC_RANGE)


def rt_profile(v: np.ndarray, zeta: float) -> np.ndarray:
    """Gray's radial-tangential profile M(v) in (km/s)^-1 at velocities ``v`` (km/s)."""
    from scipy.special import erfc

    x = np.abs(np.asarray(v, dtype=np.float64)) / zeta
    return 2.0 / (math.sqrt(math.pi) * zeta) * (np.exp(-x * x) - math.sqrt(math.pi) * x * erfc(x))


def rt_kernel(zeta: float, velocity_step: float, oversample: int = 9) -> torch.Tensor:
    """Pixel-integrated RT kernel on a log-uniform grid of step ``velocity_step`` km/s.

    Returns:
        (2K+1,) float64 weights summing to 1, centred on tap K, K = ceil(4 zeta / step).
    """
    K = max(1, int(math.ceil(4.0 * zeta / velocity_step)))
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    v = (np.arange(-K, K + 1)[:, None] + sub[None, :]) * velocity_step
    w = rt_profile(v, zeta).mean(axis=1)
    return torch.as_tensor(w / w.sum(), dtype=torch.float64)

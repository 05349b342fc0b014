"""Noiseless spectra in a target layout: interpolate -> rotate -> Doppler-shift and resample."""
from __future__ import annotations

import numpy as np
import torch

from ..labels import VSINI
from .interpolation import GridInterpolator
from .resample import LayoutResampler
from .rotation import LIMB_DARKENING, rotational_broadening


class SpectrumRenderer:
    """Continuum-normalised spectra at continuous labels in a wavelength layout.

    Args:
        interpolator: the grid view to interpolate.
        target: (O, P) observed-frame wavelengths (A); default the canonical layout.
        epsilon: limb darkening of the rotational kernel.
        vsini_max: largest v sin i the kernel must hold (km/s).
    """

    def __init__(self, interpolator: GridInterpolator, target: np.ndarray | None = None,
                 epsilon: float = LIMB_DARKENING, vsini_max: float = VSINI.stop):
        self.interpolator = interpolator
        self.target = target
        self.resampler = LayoutResampler(interpolator.wave, target, device=interpolator.device)
        self.epsilon = epsilon
        self.vsini_max = vsini_max

    def with_interpolator(self, interpolator: GridInterpolator) -> "SpectrumRenderer":
        """The same renderer over another view of the same grid (e.g. a split's training view)."""
        return SpectrumRenderer(interpolator, self.target, self.epsilon, self.vsini_max)

    def rest_frame(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, L) fine-grid spectra at ``labels`` (B, 4), rotationally broadened."""
        labels = torch.as_tensor(labels, device=self.interpolator.device)
        flux = self.interpolator.interpolate(labels)
        vsini = labels[:, 3].to(flux.dtype)
        if float(vsini.max()) > self.vsini_max:
            raise ValueError(f"v sin i {float(vsini.max()):g} km/s exceeds the maximum {self.vsini_max:g}")
        return rotational_broadening(flux, vsini, self.interpolator.velocity_step, self.epsilon, vsini_max=self.vsini_max)

    def __call__(self, labels: torch.Tensor, factor: torch.Tensor | float = 1.0) -> torch.Tensor:
        """(B, O, P) spectra at ``labels`` (B, 4) shifted by Doppler factors ``factor`` (B,)."""
        return self.resampler(self.rest_frame(labels), factor)

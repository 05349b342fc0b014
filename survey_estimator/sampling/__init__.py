"""Training-time generation of synthetic spectra in torch (CPU or GPU, batched).

Modules, one job each: :mod:`.interpolation` (trilinear grid interpolation, sampleable cells),
:mod:`.rotation` (Gray rotational broadening), :mod:`.resample` (Doppler shift and resampling
into the canonical layout), :mod:`.nuisance` (blaze-like shapes, masks, cosmics, S/N noise),
:mod:`.splits` (train / validation / test by node), :mod:`.spectrum` (the noiseless chain) and
:mod:`.sampler` (batches for training, through the shared normalisation).
"""
from .interpolation import GridInterpolator, OutsideGridError
from .resample import LayoutResampler, doppler_factors
from .rotation import LIMB_DARKENING, gray_kernel, gray_profile, rotational_broadening
from .sampler import Batch, Sampler, SamplerConfig, build_views
from .spectrum import SpectrumRenderer
from .splits import NodeSplit, split_nodes

__all__ = [
    "Batch", "GridInterpolator", "LIMB_DARKENING", "LayoutResampler", "NodeSplit", "OutsideGridError", "Sampler",
    "SamplerConfig", "SpectrumRenderer", "build_views", "doppler_factors", "gray_kernel", "gray_profile",
    "rotational_broadening", "split_nodes",
]

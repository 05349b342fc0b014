"""The likelihood fit: estimates at the noise limit from the network's first guess.

- :mod:`.continuum`: the per-order continuum nuisance (solved linearly);
- :mod:`.likelihood`: chi^2, normal equations, inverse-Fisher covariance;
- :mod:`.fitter`: batched Levenberg-Marquardt, starts, model error, flags;
- :mod:`.bound`: the Cramer-Rao bound of the same likelihood.
"""
from .bound import cramer_rao
from .fitter import FIT_VERSION, FitConfig, Fitter, FitFlag, FitResult, fit_spectra

__all__ = ["FIT_VERSION", "FitConfig", "FitFlag", "FitResult", "Fitter", "cramer_rao", "fit_spectra"]

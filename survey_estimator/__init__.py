"""survey-estimator: stellar parameters with calibrated uncertainties from HARPS-N 2D spectra."""

__version__ = "0.1.0"

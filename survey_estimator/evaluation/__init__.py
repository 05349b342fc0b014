"""Scoring trained models: metrics (the seed's Tables 2 and 3, calibration), figures, and the
evaluation of a model bundle on held-out grid nodes at fixed S/N."""
from .metrics import Scores, coverage, coverage_table, fit_calibration_scales, mae, mae_table, score

__all__ = ["Scores", "coverage", "coverage_table", "fit_calibration_scales", "mae", "mae_table", "score"]

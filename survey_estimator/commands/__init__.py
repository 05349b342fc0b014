"""Sub-commands of ``survey-estimator``; see :mod:`survey_estimator.cli`."""

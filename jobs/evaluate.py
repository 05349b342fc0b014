"""Entry point for `ray job submit -- python jobs/evaluate.py ...` (same as `survey-estimator evaluate`)."""
import sys

from survey_estimator.cli import run_command

sys.exit(run_command("evaluate", sys.argv[1:]))

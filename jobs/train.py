"""Entry point for `ray job submit -- python jobs/train.py ...` (same as `survey-estimator train`)."""
import sys

from survey_estimator.cli import run_command

sys.exit(run_command("train", sys.argv[1:]))

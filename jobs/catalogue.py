"""Nightly catalogue job: `ray job submit -- python jobs/catalogue.py --archive ... --out ...` (or plain python)."""
import sys

from survey_estimator.cli import run_command

sys.exit(run_command("catalogue", sys.argv[1:]))

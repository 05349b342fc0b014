"""Write a simulated HARPS-N e2ds file: ``python jobs/simulate.py --help``."""
import sys

from survey_estimator.cli import run_command

sys.exit(run_command("simulate", sys.argv[1:]))

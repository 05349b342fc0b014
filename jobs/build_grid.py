"""Grid build job: `ray job submit -- python jobs/build_grid.py [options]` or run standalone."""
import sys

from survey_estimator.cli import run_command

sys.exit(run_command("build-grid", sys.argv[1:]))

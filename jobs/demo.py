"""End-to-end demo on embedded defaults: `python jobs/demo.py --help`."""
import sys

from survey_estimator.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("demo", sys.argv[1:]))

"""Query a Parquet catalogue with SQL (DuckDB): table `catalogue`, view `latest`, macro flag_bit().

examples:
  survey-estimator query --catalogue s3://survey/catalogue "SELECT night, count(*) FROM latest GROUP BY ALL"
  survey-estimator query --catalogue ./cat --format csv \\
      "SELECT object, teff, teff_err FROM latest WHERE status = 'ok' AND flags & flag_bit('LOW_SNR') = 0"
"""
from __future__ import annotations

import argparse

import duckdb

from ..storage import StorageError, redact


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--catalogue", required=True, help="catalogue root: s3://bucket/prefix or local folder")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    parser.add_argument("sql", help="SQL over the table `catalogue` and the view `latest`")


def run(args: argparse.Namespace) -> int:
    from ..catalogue.query import format_rows, query

    try:
        cols, rows = query(args.catalogue, args.sql)
    except (StorageError, duckdb.Error) as exc:
        print(f"error: {redact(str(exc))}")
        return 2
    print(format_rows(cols, rows, args.format))
    return 0

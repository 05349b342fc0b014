"""SQL over a catalogue with DuckDB: table ``catalogue``, view ``latest``, macro ``flag_bit``.

The catalogue (local folder or s3://) is opened as a pyarrow dataset (Hive partitioning on
``night``; S3 through the pyarrow filesystem, so no DuckDB extension or network download is
needed) and registered in an in-memory DuckDB connection:

* ``catalogue``: every row ever written (all model versions, all ETags);
* ``latest``: one row per ``source_uri``: the row of the newest model version, newest
  ``processed_at`` within it. "Newest model version" is the (model_name, model_version) that first
  wrote to the catalogue most recently, so registry versions and local-bundle hashes order alike;
* ``flag_bit('LOW_SNR')``: the integer value of a named flag, for ``flags & flag_bit(...) <> 0``.
"""
from __future__ import annotations

import csv
import io
import json
import math

import duckdb

from .inventory import open_catalogue
from .schema import SCHEMA, flag_table

LATEST_SQL = """
CREATE OR REPLACE VIEW latest AS
WITH versions AS (
    SELECT model_name, model_version, min(processed_at) AS first_seen
    FROM catalogue GROUP BY ALL
)
SELECT c.* FROM catalogue c JOIN versions v USING (model_name, model_version)
QUALIFY row_number() OVER (PARTITION BY c.source_uri ORDER BY v.first_seen DESC, c.processed_at DESC) = 1
"""


def connect(catalogue_uri: str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with ``catalogue``, ``latest`` and ``flag_bit`` defined.

    An absent or empty catalogue gives an empty ``catalogue`` table with the full schema.
    """
    con = duckdb.connect()
    ds = open_catalogue(catalogue_uri)
    con.register("catalogue", ds if ds is not None else SCHEMA.empty_table())
    con.execute(LATEST_SQL)
    cases = " ".join(f"WHEN '{name}' THEN {bit}" for bit, name, _ in flag_table())
    con.execute(f"CREATE OR REPLACE MACRO flag_bit(name) AS CASE name {cases} ELSE NULL END")
    return con


def query(catalogue_uri: str, sql: str) -> tuple[list[str], list[tuple]]:
    """Run ``sql`` against a catalogue; returns (column names, rows)."""
    con = connect(catalogue_uri)
    try:
        cur = con.execute(sql)
        cols = [d[0] for d in cur.description] if cur.description else []
        rows = cur.fetchall() if cur.description else []
    finally:
        con.close()
    return cols, rows


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_cell(x) for x in v) + "]"
    return str(v)


def format_table(cols: list[str], rows: list[tuple], max_width: int = 40) -> str:
    """A plain-text table with a header line; cells longer than ``max_width`` are cut with '...'."""
    cells = [[_cell(v) for v in r] for r in rows]
    cells = [[c if len(c) <= max_width else c[: max_width - 3] + "..." for c in r] for r in cells]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return str(v)


def format_rows(cols: list[str], rows: list[tuple], fmt: str = "table") -> str:
    """Render rows as 'table', 'csv' or 'json' (a list of objects; NaN -> null)."""
    if fmt == "table":
        return format_table(cols, rows)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        w.writerows([[_cell(v) for v in r] for r in rows])
        return buf.getvalue().rstrip("\n")
    if fmt == "json":
        return json.dumps([{c: _jsonable(v) for c, v in zip(cols, r)} for r in rows], indent=1)
    raise ValueError(f"unknown format {fmt!r}: use table, csv or json")

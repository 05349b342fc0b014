"""SQL over a catalogue with DuckDB: tables ``catalogue``, ``archive``, ``models``, view ``latest``, macro ``flag_bit``.

The catalogue (local folder or s3://) is opened as a pyarrow dataset (Hive partitioning on
``night``; S3 through the pyarrow filesystem, so no DuckDB extension or network download is
needed) and registered in an in-memory DuckDB connection:

* ``catalogue``: every row ever written (all model versions, all ETags);
* ``archive``: the archive as the last run listed it (:mod:`~survey_estimator.catalogue.state`);
* ``models``: the model promotion history (model_name, model_version, promoted_at, run_id);
* ``latest``: one row per ``source_uri``, chosen by, in this order:
  1. its newest content: the ETag the archive holds now, else the ETag seen last;
  2. an ok row before an error row;
  3. the model version promoted last (``models.promoted_at``; versions missing from the history
     rank by the time they first wrote), so after a rollback the rolled-back-to version wins;
  4. the newest ``processed_at``;
  plus a column ``archive_state``: 'current' (the file, with this ETag, is in the archive),
  'changed' (the archive holds other content, not yet catalogued), 'gone' (no longer in the
  archive) or 'unknown' (no listing recorded);
* ``flag_bit('LOW_SNR')``: the integer value of a named flag, for ``flags & flag_bit(...) <> 0``.
"""
from __future__ import annotations

import csv
import io
import json
import math

import duckdb

from . import state
from .inventory import open_catalogue
from .schema import SCHEMA, flag_table

LATEST_SQL = """
CREATE OR REPLACE VIEW latest AS
WITH etags AS (
    SELECT source_uri, etag, min(processed_at) AS etag_seen FROM catalogue GROUP BY ALL
), versions AS (
    SELECT model_name, model_version, min(processed_at) AS first_seen FROM catalogue GROUP BY ALL
), promoted AS (
    SELECT model_name, model_version, max(promoted_at) AS promoted_at FROM models GROUP BY ALL
), ranked AS (
    SELECT c.*,
           CASE WHEN (SELECT count(*) FROM archive) = 0 THEN 'unknown'
                WHEN a.source_uri IS NULL THEN 'gone'
                WHEN a.etag = c.etag THEN 'current'
                ELSE 'changed' END AS archive_state,
           coalesce(a.etag = c.etag, false) AS _listed,
           e.etag_seen AS _etag_seen,
           coalesce(p.promoted_at, v.first_seen) AS _promoted
    FROM catalogue c
    JOIN etags e USING (source_uri, etag)
    JOIN versions v USING (model_name, model_version)
    LEFT JOIN promoted p USING (model_name, model_version)
    LEFT JOIN archive a ON a.source_uri = c.source_uri
)
SELECT * EXCLUDE (_listed, _etag_seen, _promoted) FROM ranked
QUALIFY row_number() OVER (PARTITION BY source_uri
                           ORDER BY _listed DESC, _etag_seen DESC, (status = 'ok') DESC, _promoted DESC,
                                    processed_at DESC) = 1
"""


def connect(catalogue_uri: str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with ``catalogue``, ``archive``, ``models``, ``latest`` and
    ``flag_bit`` defined. An absent or empty catalogue gives empty tables with the full schema."""
    con = duckdb.connect()
    ds = open_catalogue(catalogue_uri)
    con.register("catalogue", ds if ds is not None else SCHEMA.empty_table())
    listing = state.load_listing(catalogue_uri)
    con.register("archive", listing if listing is not None else state.ARCHIVE_SCHEMA.empty_table())
    con.register("models", state.models_table(catalogue_uri))
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

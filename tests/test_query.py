"""Querying a catalogue: DuckDB `catalogue`/`latest`/flag_bit, the query command, and the documented
pyarrow / pandas / polars snippets, on local and S3 (moto) catalogues."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from catalogue_testing import write_catalogue
from survey_estimator.catalogue.query import connect, format_rows, query
from survey_estimator.cli import run_command

DOC = Path(__file__).resolve().parents[1] / "docs" / "catalogue.md"


@pytest.fixture
def two_versions(tmp_path):
    """a, b on two nights by model v1; then a, b again by v2 (a new model version); c only by v1."""
    root = str(tmp_path / "cat")
    write_catalogue(root, ["s3://x/a.fits", "s3://x/b.fits", "s3://x/c.fits"], ["2016-01-07", "2016-01-08", "2016-01-08"],
                    [5000.0, 6000.0, 7000.0], model=("m", "1"))
    write_catalogue(root, ["s3://x/a.fits", "s3://x/b.fits"], ["2016-01-07", "2016-01-08"], [5100.0, 6100.0], model=("m", "2"))
    write_catalogue(root, ["s3://x/d.fits"], ["2016-01-08"], [0.0], model=("m", "2"), status="error")
    return root


def test_latest_keeps_one_row_per_observation_from_newest_version(two_versions):
    cols, rows = query(two_versions, "SELECT source_uri, model_version, teff, status FROM latest ORDER BY source_uri")
    assert cols == ["source_uri", "model_version", "teff", "status"]
    assert rows == [("s3://x/a.fits", "2", 5100.0, "ok"), ("s3://x/b.fits", "2", 6100.0, "ok"),
                    ("s3://x/c.fits", "1", 7000.0, "ok"), ("s3://x/d.fits", "2", None, "error")]
    (n,), = query(two_versions, "SELECT count(*) FROM catalogue")[1]
    assert n == 6
    nights = query(two_versions, "SELECT night::VARCHAR, count(*) FROM latest GROUP BY 1 ORDER BY 1")[1]
    assert nights == [("2016-01-07", 1), ("2016-01-08", 3)]


def test_flag_bit_macro_and_cov_array(two_versions):
    con = connect(two_versions)
    assert con.execute("SELECT flag_bit('LOW_SNR')").fetchone()[0] == 1 << 5
    assert con.execute("SELECT flag_bit('OUTSIDE_GRID')").fetchone()[0] == 1 << 32
    cov = con.execute("SELECT cov FROM latest WHERE source_uri = 's3://x/a.fits'").fetchone()[0]
    assert np.allclose(np.asarray(cov).reshape(4, 4), np.diag([0.01] * 4))


def test_empty_catalogue_has_the_schema(tmp_path):
    cols, rows = query(str(tmp_path / "nothing"), "SELECT * FROM latest")
    assert rows == [] and "teff_err" in cols and "night" in cols


def test_query_command_formats(two_versions, capsys):
    sql = "SELECT source_uri, teff FROM latest WHERE status = 'ok' ORDER BY source_uri"
    assert run_command("query", ["--catalogue", two_versions, "--format", "csv", sql]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["source_uri,teff", "s3://x/a.fits,5100", "s3://x/b.fits,6100", "s3://x/c.fits,7000"]
    assert run_command("query", ["--catalogue", two_versions, "--format", "json", sql]) == 0
    assert [r["teff"] for r in json.loads(capsys.readouterr().out)] == [5100.0, 6100.0, 7000.0]
    assert run_command("query", ["--catalogue", two_versions, sql]) == 0
    table = capsys.readouterr().out
    assert "source_uri" in table and "(3 rows)" in table
    assert run_command("query", ["--catalogue", two_versions, "SELECT nope FROM latest"]) == 2
    assert "error:" in capsys.readouterr().out


def test_format_rows_handles_nan_and_lists():
    assert json.loads(format_rows(["a", "b"], [(float("nan"), [1.0, 2.0])], "json")) == [{"a": None, "b": [1.0, 2.0]}]
    with pytest.raises(ValueError):
        format_rows(["a"], [], "xml")


def _snippets() -> dict[str, str]:
    text = DOC.read_text()
    out = {}
    for section in ("pyarrow", "pandas", "polars", "DuckDB directly"):
        m = re.search(rf"### {re.escape(section)}.*?```python\n(.*?)```", text, re.S)
        assert m, f"no {section} snippet in docs/catalogue.md"
        out[section] = m.group(1)
    return out


def test_documented_snippets_run(two_versions):
    ns: dict = {"root": two_versions}
    snippets = _snippets()
    exec(snippets["pyarrow"], ns)
    assert ns["ok"].num_rows == 5 and set(ns["ok"].column("night").to_pylist()) == {"2016-01-07", "2016-01-08"}
    exec(snippets["pandas"], ns)
    assert len(ns["df"]) == 5 and sorted(ns["newest"]["teff"]) == [5100.0, 6100.0, 7000.0]
    exec(snippets["polars"], ns)
    assert dict(zip(ns["per_night"]["night"].cast(str), ns["per_night"]["len"])) == {"2016-01-07": 2, "2016-01-08": 3}
    exec(snippets["DuckDB directly"], ns)
    assert sum(n for _, n in ns["rel"].fetchall()) == 6


def test_query_catalogue_on_s3(s3_bucket):
    from survey_estimator.storage import resolve

    loc = resolve(f"s3://{s3_bucket}/cat")
    write_catalogue(loc.path, ["s3://x/a.fits"], ["2016-01-07"], [5000.0], fs=loc.fs)
    write_catalogue(loc.path, ["s3://x/a.fits"], ["2016-01-07"], [5200.0], model=("m", "9"), fs=loc.fs)
    assert query(f"s3://{s3_bucket}/cat", "SELECT teff, model_version FROM latest")[1] == [(5200.0, "9")]


def test_latest_rules_newest_etag_ok_first_promotion_order_and_gone_files(tmp_path):
    """issue 11, point 5: per file its newest content only; an ok row before an error row; model
    versions in promotion order (a rollback shows the rolled-back-to version); files gone from the
    archive flagged."""
    import datetime as dt

    from survey_estimator.catalogue import state
    from survey_estimator.catalogue.inventory import ArchiveObject

    root = str(tmp_path / "cat")
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    night = ["2016-01-07"]
    state.record_model(root, "m", "1", "r1", when=t0)
    write_catalogue(root, ["a", "b", "c"], night * 3, [5000.0, 5000.0, 5000.0], model=("m", "1"))
    state.record_model(root, "m", "2", "r2", when=t0 + dt.timedelta(days=1))
    write_catalogue(root, ["a"], night, [5200.0], model=("m", "2"))
    write_catalogue(root, ["b"], night, [0.0], model=("m", "2"), status="error", error_class="unexpected")
    write_catalogue(root, ["c"], night, [5300.0], model=("m", "2"), etag="e2")  # c changed: new content
    state.record_model(root, "m", "1", "r3", when=t0 + dt.timedelta(days=2))  # rollback to version 1
    write_catalogue(root, ["d", "e"], night * 2, [6000.0, 6100.0], model=("m", "1"))
    assert state.record_model(root, "m", "1", "r4") is False, "the same version again is no promotion"
    state.record_listing(root, [ArchiveObject("a", "e1", 1), ArchiveObject("b", "e1", 1), ArchiveObject("c", "e2", 1),
                                ArchiveObject("e", "e9", 1)])
    cols, rows = query(root, "SELECT source_uri, model_version, etag, status, teff, archive_state FROM latest ORDER BY 1")
    got = {r[0]: r[1:] for r in rows}
    assert got["a"] == ("1", "e1", "ok", 5000.0, "current"), "after the rollback version 1 is the one shown"
    assert got["b"] == ("1", "e1", "ok", 5000.0, "current"), "a newer version's error row must not hide an ok row"
    assert got["c"] == ("2", "e2", "ok", 5300.0, "current"), "only the newest ETag of a file is shown"
    assert got["d"][-1] == "gone" and got["e"][-1] == "changed"
    (n,), = query(root, "SELECT count(*) FROM models")[1]
    assert n == 3
    # without a recorded listing nothing is known about the archive
    assert query(str(tmp_path / "empty"), "SELECT count(*) FROM latest")[1] == [(0,)]


def test_documented_latest_sql_examples_run(two_versions):
    from survey_estimator.catalogue import state
    from survey_estimator.catalogue.inventory import ArchiveObject

    state.record_listing(two_versions, [ArchiveObject("s3://x/a.fits", "e1", 1)])
    text = DOC.read_text()
    block = re.search(r"### The `latest` view.*?```sql\n(.*?)```", text, re.S).group(1)
    statements = [s.strip() for s in re.sub(r"--[^\n]*", "", block).split(";") if s.strip()]
    assert len(statements) >= 5
    con = connect(two_versions)
    for sql in statements:
        con.execute(sql).fetchall()
    assert con.execute(statements[1]).fetchall() and all(r[0] != "s3://x/a.fits" for r in con.execute(statements[1]).fetchall())

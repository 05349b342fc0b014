"""The catalogue schema contract, flag bits, the night rule and row assembly."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa

from catalogue_testing import fake_rows
from survey_estimator.models.resolve import ModelRef
from survey_estimator.catalogue.predict import Estimates, build_table
from survey_estimator.catalogue.schema import (COLUMNS, COV_SIZE, DATA_SCHEMA, SCHEMA, CatalogueFlag, catalogue_flags,
                                               columns_markdown, flag_names, flag_table, flags_markdown, night_from_key, night_from_mjd, night_of)

CONTRACT = ["source_uri", "etag", "size_bytes", "night", "object", "instrument", "drs_version", "ra_deg", "dec_deg",
            "mjd_obs", "bjd", "exptime_s", "berv_kms", "rv_kms", "snr", "teff", "teff_err", "logg", "logg_err", "mh",
            "mh_err", "vsini", "vsini_err", "cov", "method", "chi2_red", "model_error", "fit_rv_kms", "fit_iterations",
            "fit_converged", "grid_id", "nn_teff", "nn_teff_err", "nn_logg", "nn_logg_err", "nn_mh", "nn_mh_err",
            "nn_vsini", "nn_vsini_err", "flags", "status", "error", "error_class", "code_version", "model_name", "model_version",
            "preprocessing_version", "processed_at"]
DOC = Path(__file__).resolve().parents[1] / "docs" / "catalogue.md"


def test_schema_is_the_contract_and_documented():
    assert SCHEMA.names == CONTRACT
    assert "night" not in DATA_SCHEMA.names and len(DATA_SCHEMA) == len(CONTRACT) - 1
    assert SCHEMA.field("cov").type == pa.list_(pa.float64())
    assert SCHEMA.field("processed_at").type == pa.timestamp("us", tz="UTC")
    doc = DOC.read_text()
    for c in COLUMNS:
        assert len(c.description) > 15, c.name
        assert SCHEMA.field(c.name).metadata[b"description"].decode() == c.description
        assert f"| `{c.name}` |" in doc, f"{c.name} missing from docs/catalogue.md"
    for _, name, _ in flag_table():
        assert f"`{name}`" in doc, f"flag {name} missing from docs/catalogue.md"
    assert columns_markdown() in doc and flags_markdown() in doc, "docs/catalogue.md tables are stale: run python -m survey_estimator.catalogue.schema docs/catalogue.md"


def test_catalogue_flags_are_named_high_bits():
    bits = [int(f) for f in CatalogueFlag]
    assert min(bits) >= 1 << 32 and len(set(bits)) == len(bits)
    from survey_estimator.preprocess import Flag

    value = int(Flag.LOW_SNR | Flag.RV_MEASURED) | int(CatalogueFlag.OUTSIDE_GRID) | (1 << 60)
    assert flag_names(value) == ["RV_MEASURED", "LOW_SNR", "OUTSIDE_GRID", "bit60"]
    names = [n for _, n, _ in flag_table()]
    assert len(names) == len(set(names)), "a catalogue flag repeats a preprocessing flag name"
    assert all(b < 1 << 32 for b, n, _ in flag_table() if n in Flag.__members__)


def test_catalogue_flags_from_predictions():
    mean = np.array([[5000, 4.0, 0.0, 5.0], [3000, 4.0, 0.0, 5.0], [3600, 4.0, 0.0, 5.0], [np.nan, 4, 0, 5]])
    sigma = np.array([[50, 0.1, 0.1, 1.0], [50, 0.1, 0.1, 1.0], [200, 0.1, 0.1, 1.0], [1, 1, 1, 1]])
    mask = np.ones((4, 8, 4096), bool)
    mask[1, 3] = False
    mask[2, :, :3000] = False
    f = catalogue_flags(mean, sigma, mask)
    names = [flag_names(v) for v in f]
    assert names[0] == []
    assert set(names[1]) == {"OUTSIDE_GRID"}
    assert set(names[2]) == {"EXTRAPOLATED", "MOSTLY_MASKED"}
    assert "NONFINITE" in names[3]


def test_catalogue_flags_follow_the_model_range():
    """A model trained on Teff 4000-7000 K flags an M dwarf estimate that Table 1 would accept."""
    mean = np.array([[3900, 4.8, 0.0, 2.0], [4100, 4.8, 0.0, 2.0], [5000, 4.0, 0.0, 2.0]])
    sigma = np.array([[50, 0.1, 0.1, 1.0], [150, 0.1, 0.1, 1.0], [50, 0.1, 0.1, 1.0]])
    mask = np.ones((3, 8, 4096), bool)
    assert [flag_names(v) for v in catalogue_flags(mean, sigma, mask)] == [[], [], []]
    bounds = (np.array([4000, 0, -2.5, 0]), np.array([7000, 5, 0.5, 30]))
    names = [flag_names(v) for v in catalogue_flags(mean, sigma, mask, bounds)]
    assert names == [["OUTSIDE_GRID"], ["EXTRAPOLATED"], []]


def test_a_sigma_beyond_the_validation_maximum_is_unfamiliar():
    mean = np.tile([5000, 4.0, 0.0, 5.0], (3, 1))
    sigma = np.array([[300, 0.5, 0.3, 1.9], [380, 0.5, 0.3, 1.9], [300, 0.5, 0.3, 2.1]])
    mask = np.ones((3, 8, 4096), bool)
    limit = np.array([343.0, 0.56, 0.38, 2.0])
    assert [flag_names(v) for v in catalogue_flags(mean, sigma, mask, sigma_limit=limit)] == [[], ["UNFAMILIAR"], ["UNFAMILIAR"]]
    assert [flag_names(v) for v in catalogue_flags(mean, sigma, mask)] == [[], [], []]


def test_night_is_the_local_noon_date():
    # La Palma (HARPS-N): local mean time = UTC - 1.19 h
    assert night_of(dt.datetime(2016, 1, 8, 2, 30), "HARPS-N") == "2016-01-07"
    assert night_of(dt.datetime(2016, 1, 8, 13, 30), "HARPS-N") == "2016-01-08"
    assert night_of(dt.datetime(2016, 1, 8, 12, 30), "HARPS-N") == "2016-01-07"  # 11:18 local
    # La Silla (HARPS): UTC - 4.72 h
    assert night_of(dt.datetime(2003, 12, 13, 16, 0), "HARPS") == "2003-12-12"
    assert night_of(dt.datetime(2003, 12, 13, 17, 0), "HARPS") == "2003-12-13"
    assert night_from_key("raw/HARPN.2016-01-08T02-30-21.236_e2ds_A.fits.gz") == "2016-01-07"
    assert night_from_key("HARPS.2003-12-13T06-19-48.371_e2ds_A.fits") == "2003-12-12"
    assert night_from_key("garbage.fits") is None
    mjd = (dt.datetime(2016, 1, 8, 2, 30) - dt.datetime(1858, 11, 17)).total_seconds() / 86400
    assert night_from_mjd(mjd, "HARPS-N") == "2016-01-07"
    assert night_from_mjd(float("nan")) is None


def test_build_table_nulls_estimates_of_error_rows(tmp_path):
    batch = fake_rows(["s3://b/a.fits", "s3://b/c.fits"], ["2016-01-07", "2016-01-07"])
    batch["status"][1] = "error"
    batch["error"][1] = "c.fits: not a FITS file"
    ok = np.array([True, False])
    mean = np.array([[5000, 4.0, 0.0, 5.0], [np.nan] * 4])
    cov = np.tile(np.eye(4).ravel(), (2, 1))
    t = build_table(batch, ok, Estimates.network(mean, np.ones((2, 4)), cov, np.array([0, 1 << 36])), ModelRef("x", "m", "7"))
    assert t.schema.equals(SCHEMA)
    d = t.to_pylist()
    assert d[0]["teff"] == 5000 and d[0]["cov"] == list(np.eye(4).ravel()) and len(d[0]["cov"]) == COV_SIZE
    assert d[1]["teff"] is None and d[1]["cov"] is None and d[1]["teff_err"] is None
    assert d[1]["error"] == "c.fits: not a FITS file" and d[1]["status"] == "error"
    assert {r["model_version"] for r in d} == {"7"} and d[0]["processed_at"].tzinfo is not None
    import pyarrow.parquet as pq

    mixed = pa.concat_tables([t, t.slice(1), t.slice(0, 1)])  # ok, error, error, ok
    pq.write_table(mixed, tmp_path / "x.parquet")
    back = pq.read_table(tmp_path / "x.parquet")
    assert back["cov"].null_count == 2 and back["cov"].to_pylist()[3] == list(np.eye(4).ravel())

"""The row contract between the read stage and the model stage (catalogue/rows.py)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from survey_estimator.catalogue import rows
from survey_estimator.catalogue.rows import BatchError, check_batch, new_row, to_batch
from survey_estimator.catalogue.schema import COLUMNS, MODEL, SCHEMA

READ_COLUMNS = ["source_uri", "etag", "size_bytes", "night", "object", "instrument", "drs_version", "ra_deg", "dec_deg",
                "mjd_obs", "bjd", "exptime_s", "berv_kms", "rv_kms", "snr", "flags", "status", "error", "error_class",
                "code_version", "preprocessing_version"]


def _ok_row(**values) -> dict:
    x = np.random.default_rng(0).normal(size=(2, 8, 4096)).astype(np.float32)
    return new_row(source_uri="/a/f.fits", etag="local-1-2", size_bytes=1234, night="2016-01-07", object="HD 1",
                   instrument="HARPS-N", drs_version="3.7", ra_deg=10.5, dec_deg=-3.0, mjd_obs=57395.1, bjd=57395.6,
                   exptime_s=900.0, berv_kms=1.5, rv_kms=-20.0, snr=80.0, flags=4, status="ok",
                   preprocessing_version="pp-1", code_version="c-1", resolution=115000.0, x=x,
                   ivar=np.full((8, 4096), 2.0, np.float32), **values)


def test_metadata_columns_are_the_schemas():
    assert [f.name for f in rows.META_FIELDS] == [c.name for c in COLUMNS if c.origin != MODEL] == READ_COLUMNS
    for f in rows.META_FIELDS:
        assert f.column.type == SCHEMA.field(f.name).type
        assert f.dtype == {pa.string(): object, pa.float64(): np.float64, pa.int64(): np.int64}[f.column.type]
    assert [f.name for f in rows.HEADER_FIELDS] == READ_COLUMNS[4:14]
    assert rows.NAMES == (*READ_COLUMNS, "resolution", "x", "ivar")
    assert not set(rows.NAMES[-3:]) & set(SCHEMA.names)  # model inputs are not written


def test_error_and_ok_rows_round_trip_with_declared_dtypes():
    err, ok = new_row(source_uri="/a/bad.fits", error="bad.fits: not a FITS file", error_class="permanent"), _ok_row()
    assert err["status"] == "error" and err["object"] is None and np.isnan(err["ra_deg"]) and err["flags"] == 0
    batch = to_batch([err, ok])
    assert check_batch(batch) == 2
    for f in rows.FIELDS:
        assert batch[f.name].dtype == f.dtype and batch[f.name].shape == (2, *f.shape), f.name
    assert batch["x"].shape == (2, 2, 8, 4096) and batch["ivar"].shape == (2, 8, 4096)
    assert not batch["x"][0].any() and not batch["ivar"][0].any()
    np.testing.assert_array_equal(batch["x"][1], ok["x"])
    assert list(batch["status"]) == ["error", "ok"] and list(batch["object"]) == [None, "HD 1"]
    assert np.isnan(batch["mjd_obs"][0]) and batch["mjd_obs"][1] == 57395.1 and list(batch["size_bytes"]) == [0, 1234]
    arrow = rows.arrow_columns(batch)
    assert list(arrow) == READ_COLUMNS
    assert arrow["object"].to_pylist() == [None, "HD 1"] and arrow["ra_deg"].to_pylist() == [None, 10.5]
    empty = to_batch([])
    assert check_batch(empty) == 0 and empty["x"].shape == (0, 2, 8, 4096) and empty["x"].dtype == np.float32


def test_check_batch_names_the_broken_column():
    batch = to_batch([_ok_row(), _ok_row()])
    with pytest.raises(BatchError, match="lacks column.*ivar"):
        check_batch({k: v for k, v in batch.items() if k != "ivar"})
    with pytest.raises(BatchError, match=r"'x': shape \(2, 8, 4096\), expected \(2, 2, 8, 4096\)"):
        check_batch(dict(batch, x=batch["x"][:, 0]))
    with pytest.raises(BatchError, match="'ivar': dtype float64"):
        check_batch(dict(batch, ivar=batch["ivar"].astype(np.float64)))
    with pytest.raises(BatchError, match="'size_bytes': dtype object"):
        check_batch(dict(batch, size_bytes=batch["size_bytes"].astype(object)))
    # strings as Ray Data hands an all-null column over (NaN floats) are accepted
    assert check_batch(dict(batch, error=np.full(2, np.nan))) == 2


def test_rows_are_checked_when_made_and_stacked():
    with pytest.raises(BatchError, match="not a read-row field: ra"):
        new_row(ra=1.0)
    row = _ok_row()
    del row["ivar"]
    with pytest.raises(BatchError, match=r"row 0: missing \['ivar'\]"):
        to_batch([row])
    with pytest.raises(BatchError, match="'x'"):
        to_batch([_ok_row(), dict(_ok_row(), x=np.zeros((8, 4096), np.float32))])

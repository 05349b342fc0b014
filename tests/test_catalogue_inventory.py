"""Archive listing (local and S3 with ETags), what is new, night selection, and the read stage on
real FITS files (blaze found in the archive, broken files as error rows, transient fetch errors)."""
from __future__ import annotations

import hashlib
import os
import shutil

import boto3
import numpy as np
import pytest

from catalogue_testing import write_catalogue
from survey_estimator.catalogue.inventory import (ArchiveObject, done_keys, list_archive, new_work, night_selected,
                                                  select_nights)
from survey_estimator.catalogue.read import ReadOptions, fetch, read_batch, read_one
from survey_estimator.catalogue.retry import RetryPolicy
from survey_estimator.catalogue.schema import CatalogueFlag
from survey_estimator.storage import StorageError

E2DS = "HARPS.2003-12-13T06-19-48.371_e2ds_A.fits"
BLAZE = "HARPS.2003-12-12T21-42-45.093_blaze_A.fits"


def test_local_listing_filters_and_indexes_blaze(tmp_path, data_dir):
    (tmp_path / "a" / "b").mkdir(parents=True)
    shutil.copy(data_dir / E2DS, tmp_path / "a" / E2DS)
    shutil.copy(data_dir / BLAZE, tmp_path / "a" / "b" / BLAZE)
    (tmp_path / "a" / "b" / "x.fits.gz").write_bytes(b"\x1f\x8b junk")
    (tmp_path / "notes.txt").write_text("not fits")
    (tmp_path / "r.HARPN.2015-08-03T14-17-24.899_CCF_A.fits").write_bytes(b"ccf")
    listing = list_archive(str(tmp_path))
    names = [f.uri.rsplit("/", 1)[-1] for f in listing.files]
    assert names == [E2DS, "x.fits.gz"]
    assert listing.blaze == {BLAZE: str(tmp_path / "a" / "b" / BLAZE)}
    e2ds = listing.files[0]
    assert e2ds.size == os.path.getsize(data_dir / E2DS) and e2ds.night_hint == "2003-12-12"
    before = e2ds.etag
    os.utime(tmp_path / "a" / E2DS, ns=(1, 1))
    assert list_archive(str(tmp_path)).files[0].etag != before, "a touched file must look new"


def test_s3_listing_has_etags_and_sizes(s3_bucket):
    s3 = boto3.client("s3")
    body = b"SIMPLE  = T" + b" " * 100
    s3.put_object(Bucket=s3_bucket, Key="raw/2016/HARPN.2016-01-08T02-30-21.236_e2ds_A.fits", Body=body)
    s3.put_object(Bucket=s3_bucket, Key="raw/readme.md", Body=b"x")
    s3.put_object(Bucket=s3_bucket, Key="rawother/y.fits", Body=b"y")
    files = list_archive(f"s3://{s3_bucket}/raw").files
    assert len(files) == 1
    f = files[0]
    assert f.uri == f"s3://{s3_bucket}/raw/2016/HARPN.2016-01-08T02-30-21.236_e2ds_A.fits"
    assert f.etag == hashlib.md5(body).hexdigest() and f.size == len(body) and f.night_hint == "2016-01-07"
    assert fetch(f.uri) == body


def test_unreachable_bucket_fails_fast_without_secrets(s3_server):
    with pytest.raises(StorageError) as err:
        list_archive("s3://no-such-bucket-here/raw")
    msg = str(err.value)
    assert "no-such-bucket-here" in msg and os.environ["AWS_SECRET_ACCESS_KEY"] not in msg
    with pytest.raises(StorageError):
        list_archive("/definitely/not/a/folder")


def test_missing_object_is_a_transient_error_row(s3_bucket):
    with pytest.raises(StorageError):
        fetch(f"s3://{s3_bucket}/gone.fits", retries=2, backoff_s=0.01)
    row = read_one(f"s3://{s3_bucket}/gone.fits", ReadOptions(retry=RetryPolicy(attempts=2, base_s=0.01)))
    assert row["status"] == "error" and row["error_class"] == "transient" and "fetch" in row["error"]
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in row["error"]


def test_done_keys_and_new_work(tmp_path):
    root = str(tmp_path / "cat")
    write_catalogue(root, ["u1", "u2"], ["2016-01-07"] * 2, [5000.0, 5100.0], model=("m", "1"), etag="e1")
    write_catalogue(root, ["u3"], ["2016-01-07"], [0.0], model=("m", "1"), status="error", etag="e1")
    done = done_keys(root, "1")
    assert ("u1", "e1") in done and ("u3", "e1") in done
    assert done_keys(root, "2") == set()
    files = [ArchiveObject("u1", "e1", 1), ArchiveObject("u1", "e2", 1), ArchiveObject("u5", "e1", 1)]
    assert [(f.uri, f.etag) for f in new_work(files, done)] == [("u1", "e2"), ("u5", "e1")]
    assert done_keys(str(tmp_path / "empty"), "1") == set()


def test_transient_errors_are_retried_and_unexpected_ones_when_the_code_changes(tmp_path):
    import pyarrow as pa
    import pyarrow.dataset as pads

    root = str(tmp_path / "cat")
    write_catalogue(root, ["u1"], ["2016-01-07"], [0.0], status="error", etag="e1", error_class="permanent")
    write_catalogue(root, ["u2"], ["2016-01-07"], [0.0], status="error", etag="e1", error_class="transient")
    write_catalogue(root, ["u3"], ["2016-01-07"], [0.0], status="error", etag="e1", error_class="unexpected")
    same = done_keys(root, "1", code="code-1", preprocessing="pp-1")
    assert same == {("u1", "e1"), ("u3", "e1")}
    assert done_keys(root, "1", code="code-2", preprocessing="pp-1") == {("u1", "e1")}
    assert done_keys(root, "1", code="code-1", preprocessing="pp-2") == {("u1", "e1")}
    # rows from before the retry classes: a 'transient:' reason is transient, any other error permanent
    legacy = str(tmp_path / "legacy")
    t = write_catalogue(legacy, ["u4", "u5"], ["2016-01-07"] * 2, [0.0, 0.0], status="error", etag="e1")
    shutil.rmtree(legacy)
    t = t.set_column(t.schema.get_field_index("error"), "error", pa.array(["transient: cannot read s3://b/u4", "bad"]))
    t = t.drop_columns(["error_class", "code_version"])
    pads.write_dataset(t, legacy, format="parquet", partitioning=["night"], partitioning_flavor="hive")
    assert done_keys(legacy, "1") == {("u5", "e1")}


def test_night_selection():
    files = [ArchiveObject("a", "", 1, "2016-01-06"), ArchiveObject("b", "", 1, "2016-01-07"), ArchiveObject("c", "", 1, None)]
    assert [f.uri for f in select_nights(files, night="2016-01-07")] == ["b", "c"]
    assert [f.uri for f in select_nights(files, since="2016-01-07")] == ["b", "c"]
    assert [f.uri for f in select_nights(files)] == ["a", "b", "c"]
    assert night_selected("2016-01-08", None, "2016-01-07") and not night_selected("2016-01-06", None, "2016-01-07")


def test_read_stage_uses_archive_blaze_and_isolates_bad_files(tmp_path, data_dir):
    shutil.copy(data_dir / E2DS, tmp_path / E2DS)
    shutil.copy(data_dir / BLAZE, tmp_path / BLAZE)
    (tmp_path / "garbage.fits").write_bytes(b"\x00" * 5000)
    trunc = tmp_path / "HARPS.2003-12-14T01-00-00.000_e2ds_A.fits"
    trunc.write_bytes((data_dir / E2DS).read_bytes()[:30000])
    listing = list_archive(str(tmp_path))
    batch = {k: np.array([getattr(f, k) for f in listing.files], dtype=object)
             for k in ("uri", "etag", "size", "night_hint")}
    from survey_estimator.preprocess import Flag

    out = read_batch(batch, ReadOptions(blaze=listing.blaze))
    by_name = {u.rsplit("/", 1)[-1]: i for i, u in enumerate(out["source_uri"])}
    i = by_name[E2DS]
    assert out["status"][i] == "ok" and out["x"].shape == (3, 2, 8, 4096)
    assert not out["flags"][i] & Flag.BLAZE_MISSING, "the archive's blaze file should have been used"
    assert out["instrument"][i] == "HARPS" and out["night"][i] == "2003-12-12" and np.isfinite(out["snr"][i])
    assert np.isfinite(out["x"][i]).all() and out["x"][i, 1].mean() > 0.5
    for name in ("garbage.fits", trunc.name):
        j = by_name[name]
        assert out["status"][j] == "error" and name in out["error"][j]
        assert out["flags"][j] == int(CatalogueFlag.READ_ERROR) and not out["x"][j].any()
    assert out["night"][by_name[trunc.name]] == "2003-12-13"  # from the file name
    assert out["night"][by_name["garbage.fits"]] is not None
    without = read_batch({k: v[[i]] for k, v in batch.items()}, ReadOptions())
    assert without["flags"][0] & Flag.BLAZE_MISSING


def test_retry_classes_of_per_file_failures(tmp_path, data_dir):
    from survey_estimator.catalogue.status import DeadlineExceeded, FileRejected, classify
    from survey_estimator.observation import ReadError

    assert classify(MemoryError()) == "transient" and classify(DeadlineExceeded("x")) == "transient"
    assert classify(StorageError("x")) == "transient" and classify(TimeoutError()) == "transient"
    assert classify(ReadError("f", "not a FITS file")) == "permanent" and classify(FileRejected("big")) == "permanent"
    assert classify(KeyError("bug")) == "unexpected" and classify(TypeError("bug")) == "unexpected"
    shutil.copy(data_dir / E2DS, tmp_path / E2DS)
    # a wrong option type reaches code that cannot handle it: a bug, recorded as unexpected with its step
    row = read_one(str(tmp_path / E2DS), ReadOptions(resolution=[1.0, 2.0], code="c1"))
    assert row["status"] == "error" and row["error_class"] == "unexpected", row["error"]
    assert E2DS in row["error"] and row["code_version"] == "c1"


def test_predict_step_is_inside_the_per_file_guard(tmp_path, monkeypatch):
    """A model batch that fails is estimated row by row; rows that still fail become error rows
    with their class (the model refuses its input: a ValueError, so permanent). A batch that
    breaks the row contract is a bug of the read stage: refused whole, naming the column."""
    from catalogue_testing import fake_rows, save_tiny_bundle
    from survey_estimator.catalogue.predict import FitOptions, Predictor
    from survey_estimator.catalogue.rows import BatchError
    from survey_estimator.models.resolve import resolve_model

    ref = resolve_model(str(save_tiny_bundle(tmp_path / "b")))
    predictor = Predictor(ref, use_dae=False, fit=FitOptions(enabled=False))
    batch = fake_rows(["s3://x/a.fits", "s3://x/b.fits"], ["2016-01-07"] * 2)
    good = predictor(dict(batch))
    assert good["status"].to_pylist() == ["ok", "ok"]
    with pytest.raises(BatchError, match="'x'"):
        predictor(dict(batch, x=np.zeros((2, 8, 4096), np.float32)))  # no flux/mask axis

    def refuse(x):
        raise ValueError("model input refused")

    monkeypatch.setattr(predictor, "predict", refuse)
    table = predictor(dict(batch))
    assert table.num_rows == 2 and table["status"].to_pylist() == ["error", "error"]
    assert table["error_class"].to_pylist() == ["permanent"] * 2
    assert all("model input refused" in e and n in e for e, n in zip(table["error"].to_pylist(), ["a.fits", "b.fits"]))


def test_a_nights_blaze_is_fetched_once_per_worker_and_again_when_it_changes(tmp_path):
    from survey_estimator.catalogue.read import _blaze_source

    blaze = tmp_path / "HARPN.2016-01-10_blaze_A.fits"
    blaze.write_bytes(b"first")
    fetched = []

    def fetch_blaze(uri):
        fetched.append(uri)
        return open(uri, "rb").read()

    opts = ReadOptions(blaze_file=str(blaze))
    assert [_blaze_source(f"e2ds-{i}.fits", {}, opts, fetch_blaze)[1] for i in range(3)] == [b"first"] * 3
    assert fetched == [str(blaze)]
    blaze.write_bytes(b"second!")  # re-reduced in place: another size (and time)
    assert _blaze_source("e2ds-3.fits", {}, opts, fetch_blaze) == (blaze.name, b"second!")
    assert len(fetched) == 2

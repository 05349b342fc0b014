"""Local and S3 (moto server on loopback) storage through one API; credentials never leak."""
import os

import numpy as np
import pytest

from survey_estimator.storage import StorageError, redact, resolve


def test_local_round_trip(tmp_path):
    loc = resolve(tmp_path / "a" / "b.npy")
    loc.write_npy(np.arange(5))
    assert loc.exists() and np.array_equal(loc.read_npy(), np.arange(5))
    assert [i.base_name for i in resolve(tmp_path).list_files()] == ["b.npy"]


def test_s3_round_trip(s3_bucket):
    root = resolve(f"s3://{s3_bucket}/grid")
    root.join("manifest.json").write_json({"x": 1})
    root.join("nodes", "k.npy").write_npy(np.ones(3, np.float32))
    assert root.join("manifest.json").read_json() == {"x": 1}
    assert sorted(i.base_name for i in root.list_files()) == ["k.npy", "manifest.json"]
    assert not root.join("nope.json").exists()


def test_missing_object_is_a_storage_error_without_secrets(s3_bucket):
    with pytest.raises(StorageError) as err:
        resolve(f"s3://{s3_bucket}/missing.json").read_bytes()
    assert "missing.json" in str(err.value)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in str(err.value)


def test_redact_removes_env_secrets_and_assignments(s3_server):
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    text = f"boom {secret} secret_key={secret} token: abc123 AKIAABCDEFGHIJKLMNOP"
    out = redact(text)
    assert secret not in out and "abc123" not in out and "AKIAABCDEFGHIJKLMNOP" not in out


def test_unknown_scheme_is_refused():
    with pytest.raises(StorageError):
        resolve("gs://bucket/x")

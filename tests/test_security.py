"""Issue 11, points 7 and 8 (units): redact masks URL credentials, secrets never go to a Ray
runtime_env, HTTP client loggers stay at INFO under -v, MLflow params are redacted, and model
bundles are data only (known file names, nothing outside their folder, required checksums, size
limits), against a real moto S3 server and a real sqlite MLflow store."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import boto3
import pytest

from catalogue_testing import save_tiny_bundle
from survey_estimator.models import bundle as bundle_mod
from survey_estimator.models.bundle import (BUNDLE_FILES, ESTIMATOR_FILE, MANIFEST, BundleError, ModelBundle,
                                            bundle_member)
from survey_estimator.storage import redact


# -- point 7 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("http://alice:s3cr3t-pw@mlflow.survey:5000", "http://***@mlflow.survey:5000"),
    ("tracking https://bob:pa%40ss@host/api and more", "tracking https://***@host/api and more"),
    ("postgresql+psycopg2://mlflow:dbpass-9@db:5432/mlflow", "postgresql+psycopg2://***@db:5432/mlflow"),
    ("git clone https://ghp_tok3n@github.com/x/y", "git clone https://***@github.com/x/y"),
])
def test_redact_masks_url_user_and_password(text, expected):
    assert redact(text) == expected


def test_redact_leaves_urls_without_credentials_alone():
    for text in ("s3://survey/catalogue/night=2016-01-07", "http://mlflow.survey:5000/api", "a@b.org wrote"):
        assert redact(text) == text


def test_credentialed_tracking_uri_never_goes_to_the_runtime_env(s3_server, monkeypatch):
    from survey_estimator.ray_env import worker_env

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "mlflow-pw-canary")
    plain, secret = worker_env(MLFLOW_TRACKING_URI="http://u:uri-pw-canary@mlflow:5000")
    assert "MLFLOW_TRACKING_URI" not in plain and "MLFLOW_TRACKING_PASSWORD" not in plain
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(plain) and plain["AWS_ENDPOINT_URL"] == s3_server
    assert secret.values["MLFLOW_TRACKING_URI"] == "http://u:uri-pw-canary@mlflow:5000"
    assert "canary" not in repr(secret) and "canary" not in str(secret) and "canary" not in json.dumps(plain)
    plain, _ = worker_env(MLFLOW_TRACKING_URI="http://mlflow:5000")
    assert plain["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_verbose_logging_keeps_http_clients_at_info():
    from survey_estimator.cli import HTTP_CLIENT_LOGGERS, configure_logging

    for name in HTTP_CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    configure_logging(verbose=True)
    for name in HTTP_CLIENT_LOGGERS + ("botocore.endpoint", "botocore.auth", "urllib3.connectionpool"):
        assert not logging.getLogger(name).isEnabledFor(logging.DEBUG), name
        assert logging.getLogger(name).isEnabledFor(logging.INFO), name


def test_mlflow_params_never_hold_a_url_password(tmp_path):
    from survey_estimator import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = tracking.client(uri)
    run = c.create_run(tracking.get_or_create_experiment("t-params", uri))
    tracking.log_params(run.info.run_id, {"tracking_uri": "http://u:param-pw-canary@mlflow:5000", "lr": 0.001}, uri)
    params = c.get_run(run.info.run_id).data.params
    assert params["tracking_uri"] == "http://***@mlflow:5000" and params["lr"] == "0.001"
    assert b"param-pw-canary" not in (tmp_path / "mlflow.db").read_bytes()


# -- point 8 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../manifest.json", "../../etc/cron.d/x", "/etc/passwd", "sub/manifest.json",
                                  "estimator.pt", "", "."])
def test_bundle_member_refuses_names_outside_the_bundle(tmp_path, name):
    with pytest.raises(BundleError, match="not a bundle file name"):
        bundle_member(tmp_path, name)


def test_bundle_member_accepts_the_bundle_files(tmp_path):
    assert [bundle_member(tmp_path, n) for n in BUNDLE_FILES] == [tmp_path.resolve() / n for n in BUNDLE_FILES]


def _put_dir(s3, bucket, prefix, folder: Path):
    for p in folder.iterdir():
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{p.name}", Body=p.read_bytes())


def test_s3_bundle_download_writes_only_bundle_files_into_its_folder(s3_bucket, tmp_path):
    from survey_estimator.models.resolve import fetch_model, folder_hash, load_bundle, resolve_model

    src = save_tiny_bundle(tmp_path / "src")
    s3 = boto3.client("s3")
    _put_dir(s3, s3_bucket, "models/tiny", src)
    hostile = {"models/tiny/../escape.txt": b"x", "models/tiny/../../escape2.txt": b"y",
               "models/tiny/sub/../../../../escape3.txt": b"z", "models/tiny/notes/run.sh": b"#!/bin/sh\n"}
    for key, body in hostile.items():
        s3.put_object(Bucket=s3_bucket, Key=key, Body=body)
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="models/tiny/")["Contents"]}
    assert "models/tiny/../escape.txt" in listed, "the store kept the '../' key: the test is meaningful"

    work = tmp_path / "work"
    dst = work / "a" / "b" / "bundle"
    folder = fetch_model(f"s3://{s3_bucket}/models/tiny", str(dst))
    assert sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file()) == [
        "a/b/bundle/estimator.safetensors", "a/b/bundle/manifest.json"]
    assert folder_hash(folder) == folder_hash(src)
    ref = resolve_model(f"s3://{s3_bucket}/models/tiny")
    assert ref.version == folder_hash(src)
    assert load_bundle(ref).manifest.name == "tiny-test"


def test_s3_prefix_without_manifest_is_not_a_bundle(s3_bucket):
    from survey_estimator.models.resolve import ModelNotFoundError, resolve_model

    boto3.client("s3").put_object(Bucket=s3_bucket, Key="models/empty/estimator.safetensors", Body=b"\0" * 16)
    with pytest.raises(ModelNotFoundError, match="no model bundle"):
        resolve_model(f"s3://{s3_bucket}/models/empty")


def test_registry_download_fetches_only_bundle_files(tmp_path, monkeypatch):
    from survey_estimator import tracking
    from survey_estimator.models.resolve import fetch_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    src = save_tiny_bundle(tmp_path / "src")
    extra = tmp_path / "extra"
    (extra / "extra").mkdir(parents=True)
    (extra / "payload.py").write_text("import os\n")
    (extra / "extra" / "x.bin").write_bytes(b"1234")
    for p in extra.rglob("*"):
        if p.is_file():
            shutil.copy(p, src / p.name)
    mv = tracking.register_bundle_dir(src, name="t-data-only", alias="candidate", experiment="t-data-only", uri=uri)
    c = tracking.client(uri)
    assert sorted(a.path for a in c.list_artifacts(mv.run_id, "bundle")) == [f"bundle/{ESTIMATOR_FILE}", f"bundle/{MANIFEST}"]
    c.log_artifacts(mv.run_id, str(extra), artifact_path="bundle")  # a registry version whose folder holds more
    assert "bundle/payload.py" in {a.path for a in c.list_artifacts(mv.run_id, "bundle")}
    dst = tmp_path / "dl"
    got = fetch_model("models:/t-data-only@candidate", dst)
    assert got == dst and sorted(p.name for p in dst.rglob("*")) == [ESTIMATOR_FILE, MANIFEST]
    assert ModelBundle.load(got, device="cpu").manifest.name == "tiny-test"


def _edit(folder: Path, fn) -> None:
    m = json.loads((folder / MANIFEST).read_text())
    fn(m)
    (folder / MANIFEST).write_text(json.dumps(m))


@pytest.mark.parametrize("edit", [lambda m: m["weights"].clear(),
                                  lambda m: m["weights"].__setitem__(ESTIMATOR_FILE, ""),
                                  lambda m: m["weights"].__setitem__(ESTIMATOR_FILE, "deadbeef")],
                         ids=["no-entry", "empty", "not-a-sha256"])
def test_weights_checksum_is_required(tmp_path, edit):
    folder = save_tiny_bundle(tmp_path / "b")
    ModelBundle.load(folder, device="cpu")  # loads as saved
    _edit(folder, edit)
    with pytest.raises(BundleError, match="no SHA-256 checksum"):
        ModelBundle.load(folder, device="cpu")


@pytest.mark.parametrize("edit,match", [
    (lambda m: m["config"].__setitem__("widths", [8] * 65), "more than 64 items"),
    (lambda m: m["config"].__setitem__("stem_width", 10 ** 9), "out of bounds"),
    (lambda m: m["config"].__setitem__("dropout", {"nested": [1]}), "out of bounds"),
    (lambda m: m["config"].update({f"k{i}": 1 for i in range(70)}), "at most 64 keys"),
    (lambda m: m.__setitem__("config", [1, 2]), "JSON object"),
])
def test_manifest_configs_are_bounded(tmp_path, edit, match):
    folder = save_tiny_bundle(tmp_path / "b")
    _edit(folder, edit)
    with pytest.raises(BundleError, match=match):
        ModelBundle.load(folder, device="cpu")


def test_oversized_manifest_and_weights_are_refused(tmp_path, monkeypatch):
    folder = save_tiny_bundle(tmp_path / "b")
    _edit(folder, lambda m: m["metrics"].__setitem__("padding", "x" * (bundle_mod.MAX_MANIFEST_BYTES + 1)))
    with pytest.raises(BundleError, match="larger than"):
        ModelBundle.load(folder, device="cpu")
    folder = save_tiny_bundle(tmp_path / "c")
    monkeypatch.setattr(bundle_mod, "MAX_PARAMETERS", 1000)  # the tiny estimator has more values than that
    with pytest.raises(BundleError, match="more than 1000 values"):
        ModelBundle.load(folder, device="cpu")
    monkeypatch.setattr(bundle_mod, "MAX_WEIGHTS_BYTES", 1000)
    with pytest.raises(BundleError, match="larger than 1000 bytes"):
        ModelBundle.load(folder, device="cpu")


def test_s3_download_refuses_oversized_files_before_reading(s3_bucket, tmp_path, monkeypatch):
    from survey_estimator.models.resolve import ModelNotFoundError, fetch_model

    src = save_tiny_bundle(tmp_path / "src")
    _put_dir(boto3.client("s3"), s3_bucket, "models/big", src)
    monkeypatch.setattr(bundle_mod, "MAX_WEIGHTS_BYTES", 1000)
    with pytest.raises(ModelNotFoundError, match="larger than 1000 bytes"):
        fetch_model(f"s3://{s3_bucket}/models/big", str(tmp_path / "dst"))
    assert not (tmp_path / "dst" / ESTIMATOR_FILE).exists()

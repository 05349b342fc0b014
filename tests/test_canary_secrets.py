"""Issue 11, "Done when": a canary-secret test. A short training run and a catalogue run against
moto's S3 server on loopback, with canary credentials (the S3 key id, secret and session token,
MLflow username/password) and debug logging on (``-v``), leave none of them in Ray's session logs,
the MLflow store (params, tags, the sqlite file, the artifacts), the catalogue or the output.

Everything is real: the session's Ray cluster, Ray Train, Ray Data, the moto server, MLflow on
sqlite with its artifacts on S3 (boto3, whose DEBUG logs print request headers)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import boto3
import pytest

from catalogue_testing import save_tiny_bundle
from survey_estimator.cli import run_command

SESSION_TOKEN = "canary-session-token-5d1e7b"
MLFLOW_USER, MLFLOW_PASSWORD = "canary-mlflow-user-31c9", "canary-mlflow-password-8a2f"
ARCHIVE_FILES = ["HARPS.2003-12-13T06-19-48.371_e2ds_A.fits", "HARPS.2003-12-12T21-42-45.093_blaze_A.fits"]


def _upload(s3, folder: Path, bucket: str, prefix: str) -> None:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            s3.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(folder).as_posix()}")


def _s3_bytes(s3, bucket: str, prefix: str) -> dict[str, bytes]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def _hits(canaries: list[str], named_blobs) -> list[str]:
    """'<where>: <canary>' for every canary found in any of the (name, bytes or str) pairs."""
    out = []
    for name, blob in named_blobs:
        data = blob.encode() if isinstance(blob, str) else blob
        out += [f"{name}: {c}" for c in canaries if c.encode() in data]
    return out


@pytest.fixture
def canary_env(s3_server, monkeypatch, tmp_path):
    """The session's canary S3 credentials plus a session token and MLflow credentials; MLflow
    on a fresh sqlite store whose artifacts go to S3. Returns the canary strings."""
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", MLFLOW_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", MLFLOW_PASSWORD)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    # mlflow.set_registry_uri sets MLFLOW_REGISTRY_URI: set here so that teardown undoes it
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", os.environ["MLFLOW_TRACKING_URI"])
    return [os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"], SESSION_TOKEN,
            MLFLOW_USER, MLFLOW_PASSWORD]


def test_no_canary_secret_in_logs_mlflow_or_catalogue(ray_cluster, canary_env, s3_bucket, tiny_grid, data_dir,
                                                      tmp_path, monkeypatch, capsys, caplog):
    canaries = canary_env
    s3 = boto3.client("s3")
    monkeypatch.setenv("SURVEY_MLFLOW_ARTIFACT_ROOT", f"s3://{s3_bucket}/mlflow")
    _upload(s3, Path(tiny_grid), s3_bucket, "grid")
    caplog.set_level(logging.DEBUG)  # what -v does (pytest's handlers make basicConfig a no-op)

    # a short training run: grid and checkpoints on S3 (read/written by the Ray Train workers),
    # MLflow artifacts (the registered bundle) uploaded to S3 by boto3
    code = run_command("train", [
        "-v", "--grid", f"s3://{s3_bucket}/grid", "--storage", f"s3://{s3_bucket}/runs", "--run-name", "canary",
        "--preset", "tiny", "--epochs", "1", "--steps-per-epoch", "2", "--val-steps", "1", "--batch-size", "2",
        "--num-workers", "1", "--use-gpu", "false", "--no-eval", "--experiment", "canary",
        "--register-name", "canary-estimator", "--alias", "candidate"])
    assert code == 0
    assert logging.getLogger().isEnabledFor(logging.DEBUG) and logging.getLogger("botocore").getEffectiveLevel() == logging.INFO
    mlflow_objects = _s3_bytes(s3, s3_bucket, "mlflow/")
    assert any(k.endswith("/bundle/manifest.json") for k in mlflow_objects), "boto3 uploaded the bundle to S3"
    assert any("/checkpoint_" in k for k in _s3_bytes(s3, s3_bucket, "runs/canary/")), "the workers wrote to S3"

    # a catalogue run: archive, model bundle and catalogue on S3
    archive = tmp_path / "archive" / "2003-12-13"
    archive.mkdir(parents=True)
    for name in ARCHIVE_FILES:
        (archive / name).write_bytes((data_dir / name).read_bytes())
    (archive / "garbage.fits").write_bytes(b"not a FITS file" * 100)
    _upload(s3, archive.parent, s3_bucket, "archive")
    _upload(s3, save_tiny_bundle(tmp_path / "bundle"), s3_bucket, "model")
    code = run_command("catalogue", [
        "-v", "--archive", f"s3://{s3_bucket}/archive", "--out", f"s3://{s3_bucket}/catalogue",
        "--model", f"s3://{s3_bucket}/model", "--batch-size", "4", "--actors", "1", "--actor-timeout", "120", "--json"])
    assert code == 0
    catalogue = _s3_bytes(s3, s3_bucket, "catalogue/")
    assert any(k.endswith(".parquet") for k in catalogue)
    from survey_estimator.catalogue.query import query

    cols, rows = query(f"s3://{s3_bucket}/catalogue", "SELECT * FROM catalogue")
    assert sorted(r[cols.index("status")] for r in rows) == ["error", "ok"]

    # scan everything the two runs left
    from survey_estimator import tracking

    blobs = [("output", capsys.readouterr().out), ("logs", caplog.text), ("catalogue rows", repr(rows))]
    blobs += [(f"s3://{s3_bucket}/{k}", v) for k, v in {**catalogue, **mlflow_objects}.items()]
    c = tracking.client()
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()])
    assert runs and any("lr" in r.data.params for r in runs)
    blobs += [(f"mlflow run {r.info.run_id}", repr(r.data.params) + repr(r.data.tags)) for r in runs]
    blobs.append(("mlflow.db", (tmp_path / "mlflow.db").read_bytes()))
    session = Path(ray_cluster._private.worker.global_worker.node.get_session_dir_path()) / "logs"
    ray_logs = [p for p in session.rglob("*") if p.is_file()]
    assert any(p.name.startswith(("runtime_env", "python-core-worker", "worker-")) for p in ray_logs)
    blobs += [(f"ray log {p.relative_to(session)}", p.read_bytes()) for p in ray_logs]
    assert _hits(canaries, [("self-check", "x".join(canaries))]) and len(blobs) > 10
    assert not _hits(canaries, blobs)

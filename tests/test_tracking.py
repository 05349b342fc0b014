"""MLflow tracking against a real sqlite store: default locations, experiments, runs, resume."""
from __future__ import annotations

from pathlib import Path

import pytest

from survey_estimator import tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("SURVEY_MLFLOW_ARTIFACT_ROOT", raising=False)
    return uri


def test_default_store_is_sqlite_under_repo_mlflow(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.tracking_uri()
    root = tracking.repo_root()
    assert uri == f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    assert tracking.artifact_root(uri) == (root / "mlflow" / "artifacts").resolve().as_uri()
    assert not (root / "mlflow" / "__init__.py").exists()  # would shadow the mlflow package


def test_env_overrides(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking.tracking_uri() == "http://tracking.example:5000"
    assert tracking.artifact_root() is None
    monkeypatch.setenv("SURVEY_MLFLOW_ARTIFACT_ROOT", "s3://bucket/mlflow")
    assert tracking.artifact_root() == "s3://bucket/mlflow"


def test_experiment_has_explicit_artifact_location_and_runs_resume(store, tmp_path):
    exp_id = tracking.get_or_create_experiment("exp-a")
    assert tracking.get_or_create_experiment("exp-a") == exp_id
    exp = tracking.client().get_experiment(exp_id)
    assert exp.artifact_location == (tmp_path / "artifacts" / "exp-a").as_uri()

    run_id = tracking.start_or_resume_run("exp-a", "run-1")
    tracking.log_params(run_id, {"lr": 1e-4, "model": "resnet", "long": "x" * 7000})
    tracking.log_metrics(run_id, {"train/loss": 1.5, "bad": float("nan")}, step=0)
    tracking.log_metrics(run_id, {"train/loss": 1.0}, step=1)
    assert tracking.start_or_resume_run("exp-a", "run-1") == run_id      # same Ray run name -> same MLflow run
    assert tracking.start_or_resume_run("exp-a", "run-2") != run_id

    c = tracking.client()
    run = c.get_run(run_id)
    assert run.data.params["model"] == "resnet" and len(run.data.params["long"]) == 6000
    history = c.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.5), (1, 1.0)]
    assert "bad" not in run.data.metrics


def test_system_info_has_versions():
    info = tracking.system_info(device="cpu", num_workers=2)
    assert info["sys.device"] == "cpu" and info["sys.num_workers"] == "2"
    assert info["sys.torch"] and info["sys.ray"].startswith("2.")


def test_missing_model_is_a_clear_error(store, tmp_path):
    from survey_estimator.models.resolve import ModelNotFoundError, fetch_model, resolve_model

    with pytest.raises(ModelNotFoundError, match="does-not-exist@candidate not found in the registry"):
        resolve_model("models:/does-not-exist@candidate")
    with pytest.raises(ModelNotFoundError, match="no model bundle at"):
        fetch_model(str(Path("/nonexistent/bundle")), tmp_path / "dl")

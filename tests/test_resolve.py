"""The one model resolver (survey_estimator/models/resolve.py): MLflow's models:/ URI forms, and
`register` taking any spec; real sqlite registry, real moto S3, real tiny bundles."""
from __future__ import annotations

import boto3
import pytest

from catalogue_testing import save_tiny_bundle
from survey_estimator.cli import run_command
from survey_estimator.models.resolve import ModelNotFoundError, RegistryURI, load_bundle, resolve_model


@pytest.mark.parametrize("spec,parts", [
    ("models:/stellar-estimator@production", ("stellar-estimator", "production", None)),
    ("models:/stellar-estimator/12", ("stellar-estimator", None, "12")),
    ("models:/a.b_c/latest", ("a.b_c", None, "latest")),
])
def test_registry_uris_parse(spec, parts):
    reg = RegistryURI.parse(spec)
    assert (reg.name, reg.alias, reg.version) == parts
    assert str(reg) == spec


@pytest.mark.parametrize("spec", ["models:/x", "models:/x/Production", "models:/x/1/extra", "models:x@a", "models:/@a"])
def test_other_models_uris_are_refused(spec):
    with pytest.raises(ModelNotFoundError, match="is not models:/NAME@ALIAS or models:/NAME/VERSION"):
        RegistryURI.parse(spec)


def test_folders_and_s3_are_not_registry_uris():
    assert RegistryURI.parse("/data/bundle") is None and RegistryURI.parse("s3://b/models/x") is None


def test_register_from_s3_and_latest(s3_bucket, tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SURVEY_MLFLOW_ARTIFACT_ROOT", (tmp_path / "artifacts").as_uri())
    first = save_tiny_bundle(tmp_path / "a", name="first")
    (first / "notes.txt").write_text("not part of the bundle")
    second = save_tiny_bundle(tmp_path / "b", name="second", seed=1)
    s3 = boto3.client("s3")
    for p in second.iterdir():
        s3.put_object(Bucket=s3_bucket, Key=f"models/second/{p.name}", Body=p.read_bytes())

    assert run_command("register", [str(first), "--name", "t-res"]) == 0
    assert run_command("register", [f"s3://{s3_bucket}/models/second", "--name", "t-res", "--alias", "production"]) == 0
    assert "models:/t-res/2 (models:/t-res@production)" in capsys.readouterr().out
    ref = resolve_model("models:/t-res/latest")
    assert (ref.spec, ref.name, ref.version) == ("models:/t-res/2", "t-res", "2")
    assert load_bundle("models:/t-res/1", device="cpu").manifest.name == "first"
    assert load_bundle("models:/t-res@production", device="cpu").manifest.name == "second"
    assert run_command("register", [f"s3://{s3_bucket}/models/none", "--name", "t-res"]) == 2
    assert "no model bundle at" in capsys.readouterr().err

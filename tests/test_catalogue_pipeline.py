"""The catalogue job on a local archive of real files: fail-fast checks, the GPU-timeout guard, model
versions side by side, night filters, and models from the MLflow registry."""
from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from catalogue_testing import save_tiny_bundle
from survey_estimator.catalogue.inventory import catalogue_files
from survey_estimator.models.resolve import ModelNotFoundError, load_bundle, resolve_model
from survey_estimator.catalogue.pipeline import CatalogueConfig, CatalogueError, run_catalogue, worker_env
from survey_estimator.catalogue.query import query
from survey_estimator.cli import run_command

E2DS = "HARPS.2003-12-13T06-19-48.371_e2ds_A.fits"
S1D = "HARPS.2010-09-18T23-42-36.178_s1d_A.4900-5500.fits"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    return save_tiny_bundle(root / "a", seed=0), save_tiny_bundle(root / "b", seed=1)


@pytest.fixture
def archive(tmp_path, data_dir):
    root = tmp_path / "archive"
    (root / "2003").mkdir(parents=True)
    (root / "2010").mkdir()
    shutil.copy(data_dir / E2DS, root / "2003" / E2DS)
    shutil.copy(data_dir / S1D, root / "2010" / S1D)
    (root / "2010" / "HARPS.2010-09-19T01-00-00.000_e2ds_A.fits").write_bytes(b"SIMPLE  =                    T" + b"\0" * 100)
    return root


def test_fail_fast_before_any_work(tmp_path, archive, bundles, s3_server, capsys):
    out = tmp_path / "cat"
    t0 = time.time()
    assert run_command("catalogue", ["--archive", str(archive), "--out", str(out), "--model", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().out and not out.exists()
    code = run_command("catalogue", ["--archive", "s3://no-such-bucket-xyz/raw", "--out", str(out), "--model", str(bundles[0])])
    text = capsys.readouterr().out
    assert code == 2 and "no-such-bucket-xyz" in text and os.environ["AWS_SECRET_ACCESS_KEY"] not in text
    assert run_command("catalogue", ["--archive", str(archive), "--out", str(out), "--model", str(bundles[0]), "--night", "2016/01/07"]) == 2
    assert "YYYY-MM-DD" in capsys.readouterr().out
    assert run_command("catalogue", ["--archive", str(archive), "--out", str(out), "--model", "models:/x"]) == 2
    assert not out.exists() and time.time() - t0 < 60


def test_bundle_with_other_preprocessing_is_refused(tmp_path, bundles):
    bad = tmp_path / "bad"
    shutil.copytree(bundles[0], bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["preprocessing_version"] = "some-other-preprocessing"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelNotFoundError, match="preprocessing"):
        resolve_model(str(bad))


def test_secrets_stay_out_of_runtime_env(s3_server):
    plain, secret = worker_env()
    assert "AWS_ENDPOINT_URL" in plain and "AWS_SECRET_ACCESS_KEY" not in plain and "AWS_ACCESS_KEY_ID" not in plain
    assert secret.values["AWS_SECRET_ACCESS_KEY"] == os.environ["AWS_SECRET_ACCESS_KEY"]
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in repr(secret)


def test_versions_side_by_side_and_night_filter(tmp_path, archive, bundles, ray_cluster):
    out = str(tmp_path / "cat")
    cfg = dict(archive=str(archive), out=out, actor_start_timeout_s=120, batch_size=4)
    s = run_catalogue(CatalogueConfig(model=str(bundles[0]), night="2003-12-12", **cfg))
    assert (s.selected, s.written, s.ok, s.errors) == (1, 1, 1, 0)
    s = run_catalogue(CatalogueConfig(model=str(bundles[0]), **cfg))
    assert (s.skipped, s.processed, s.ok, s.errors) == (1, 2, 1, 1)
    files = catalogue_files(out)
    s = run_catalogue(CatalogueConfig(model=str(bundles[0]), **cfg))
    assert s.written == 0 and catalogue_files(out) == files
    s = run_catalogue(CatalogueConfig(model=str(bundles[1]), **cfg))
    assert (s.processed, s.written) == (3, 3) and s.model_version != ""
    rows = query(out, "SELECT model_version, count(*) FROM catalogue GROUP BY 1 ORDER BY 2")[1]
    assert [n for _, n in rows] == [3, 3]
    latest = query(out, "SELECT DISTINCT model_version FROM latest")[1]
    assert latest == [(s.model_version,)]
    nights = dict(query(out, "SELECT night::VARCHAR, count(*) FROM latest GROUP BY 1")[1])
    assert nights == {"2003-12-12": 1, "2010-09-18": 2}, nights  # the broken file's night comes from its name


def test_model_in_the_read_tasks_gives_the_rows_the_actor_pool_gives(tmp_path, archive, bundles, ray_cluster):
    columns = "source_uri, status, error, flags, method, teff, teff_err, logg, mh, vsini, nn_teff, nn_logg_err, cov"
    got = {}
    for stage in ("tasks", "actors"):
        out = str(tmp_path / stage)
        s = run_catalogue(CatalogueConfig(archive=str(archive), out=out, model=str(bundles[0]), batch_size=2, fit=False,
                                          model_stage=stage, actor_start_timeout_s=120))
        assert (s.processed, s.ok, s.errors) == (3, 2, 1)
        got[stage] = query(out, f"SELECT {columns} FROM catalogue ORDER BY source_uri")[1]
    assert got["tasks"] == got["actors"]
    assert sum(r[1] == "ok" and r[6] is not None for r in got["tasks"]) == 2  # estimates, not nulls
    with pytest.raises(CatalogueError, match="model-stage"):
        run_catalogue(CatalogueConfig(archive=str(archive), out=str(tmp_path / "x"), model=str(bundles[0]), model_stage="gpu"))


def test_missing_gpu_times_out_instead_of_hanging(tmp_path, archive, bundles, ray_cluster):
    if ray_cluster.cluster_resources().get("GPU"):
        pytest.skip("this machine has a GPU")
    t0 = time.time()
    with pytest.raises(CatalogueError, match="did not start within 5 s"):
        run_catalogue(CatalogueConfig(archive=str(archive), out=str(tmp_path / "cat"), model=str(bundles[0]),
                                      num_gpus=1, actor_start_timeout_s=5))
    assert time.time() - t0 < 120
    assert catalogue_files(str(tmp_path / "cat")) == []


def test_registry_model_is_pinned_to_a_version(tmp_path, bundles, monkeypatch):
    from survey_estimator import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SURVEY_MLFLOW_ARTIFACT_ROOT", (tmp_path / "artifacts").as_uri())
    tracking.register_bundle_dir(bundles[0], name="tiny-est", alias="production", uri=uri)
    tracking.register_bundle_dir(bundles[1], name="tiny-est", alias="candidate", uri=uri)
    ref = resolve_model("models:/tiny-est@production")
    assert (ref.spec, ref.name, ref.version) == ("models:/tiny-est/1", "tiny-est", "1")
    assert resolve_model("models:/tiny-est/2").version == "2"
    bundle = load_bundle(ref)
    assert bundle.manifest.name == "tiny-test"
    with pytest.raises(ModelNotFoundError, match="tiny-est@nope"):
        resolve_model("models:/tiny-est@nope")

"""Distributed training end to end on the session's Ray cluster: 2 CPU DDP workers, a real sqlite
MLflow store, a stopped run resumed by name, the registry round trip and the evaluation command."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from survey_estimator import tracking
from survey_estimator.cli import run_command
from survey_estimator.labels import LABEL_NAMES
from survey_estimator.models.bundle import ModelBundle
from survey_estimator.models.resolve import load_bundle
from survey_estimator.training import TrainConfig, run_training

RUN = "ddp-tiny"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved


def _cfg(grid, storage, uri, epochs, evaluate=True):
    return TrainConfig(eval=evaluate, grid=grid, preset="tiny", model="resnet", head="diag", epochs=epochs, steps_per_epoch=2, val_steps=1,
                       batch_size=2, num_workers=2, use_gpu=False, storage=str(storage), run_name=RUN, tracking_uri=uri,
                       experiment="test-train", register_name="test-estimator", alias="candidate", eval_n=4,
                       eval_snr=(20.0, 100.0), lr_decay_epochs=0)


@pytest.fixture(scope="module")
def runs(ray_cluster, tiny_grid, store, tmp_path_factory):
    """Epoch 1 of 2, as if the run had been stopped there; then the same run name with epochs=2."""
    storage = tmp_path_factory.mktemp("runs")
    first = run_training(_cfg(tiny_grid, storage, store, epochs=1, evaluate=False))  # registered uncalibrated
    second = run_training(_cfg(tiny_grid, storage, store, epochs=2))
    return first, second


def test_ddp_run_reports_and_checkpoints(runs):
    first, _ = runs
    st = first.fit.state
    assert st.epoch == 0 and st.starts == [0] and len(st.history) == 1
    h = st.history[0]
    assert np.isfinite(h["train/loss"]) and np.isfinite(h["val/loss"])
    assert all(f"val/mae_{n}" in h for n in LABEL_NAMES)
    assert (first.fit.checkpoint_dir / "state.pt").is_file()
    assert Path(first.fit.run_path).name == RUN


def test_rerun_with_same_name_resumes_at_epoch_2(runs):
    first, second = runs
    st = second.fit.state
    assert st.starts == [0, 1], "the second run must start at epoch index 1 (epoch 2), not retrain epoch 1"
    assert st.epoch == 1 and len(st.history) == 2
    assert st.history[0] == first.fit.state.history[0]
    assert second.mlflow_run_id == first.mlflow_run_id


def test_mlflow_run_has_params_metrics_artifacts(runs, store):
    _, second = runs
    c = tracking.client(store)
    run = c.get_run(second.mlflow_run_id)
    p = run.data.params
    assert p["model"] == "resnet" and p["num_workers"] == "2" and p["lr"] == "0.0001"
    assert p["grid_id"] and p["sys.torch"] == torch.__version__ and p["sys.num_workers"] == "2"
    assert run.data.tags["resumed.epochs"] == "2" and run.data.tags["train.starts"] == "0,1"
    assert run.info.status == "FINISHED"
    steps = [m.step for m in c.get_metric_history(run.info.run_id, "val/mae_teff")]
    assert steps == [0, 1]
    for key in ("snr20/mae_teff", "snr100/within_1sigma_logg", "snr20/within_2sigma_mh_cal", "calibration/vsini"):
        assert key in run.data.metrics, key
    arts = {a.path for a in c.list_artifacts(run.info.run_id, "evaluation")}
    for name in ("residuals_snr20.png", "sigma_snr100.png", "coverage_snr20.png", "report.md", "scores.json"):
        assert f"evaluation/{name}" in arts
    # each registration keeps its own files: the resumed run's bundle did not overwrite version 1's
    assert {a.path for a in c.list_artifacts(run.info.run_id, "bundle")} >= {"bundle/manifest.json", "bundle/estimator.safetensors"}
    assert {a.path for a in c.list_artifacts(run.info.run_id, "bundle-2")} >= {"bundle-2/manifest.json"}
    assert c.get_model_version("test-estimator", "2").source.endswith("/bundle-2")


def test_registry_round_trip_gives_identical_predictions(runs, store, tiny_grid, tmp_path):
    first, second = runs
    assert (first.model_version, second.model_version) == ("1", "2")
    by_alias = load_bundle("models:/test-estimator@candidate", device="cpu")
    by_version = load_bundle("models:/test-estimator/2", device="cpu")
    local = ModelBundle.load(second.bundle_dir, device="cpu")
    assert by_alias.manifest.weights == local.manifest.weights == by_version.manifest.weights
    assert by_alias.manifest.grid_id == tracking_grid_id(tiny_grid)
    assert by_alias.manifest.calibration == local.manifest.calibration
    assert any(abs(v - 1.0) > 1e-9 for v in local.manifest.calibration.values()), "calibration was not stored"
    assert local.manifest.label_range == {"teff": [5000, 6000], "logg": [4.0, 5.0], "mh": [-0.5, 0.0], "vsini": [0.0, 30.0]}
    assert set(local.manifest.sigma_limit) == set(LABEL_NAMES) and all(v > 0 for v in local.manifest.sigma_limit.values())
    x = torch.randn(3, 2, 8, 4096) * 0.05
    a, b = by_alias.predict(x), local.predict(x)
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.sigma, b.sigma)
    v1 = load_bundle("models:/test-estimator/1", device="cpu")
    assert v1.manifest.weights != local.manifest.weights


def tracking_grid_id(uri):
    from survey_estimator.synth.store import GridStore

    return GridStore(uri).grid_id


def test_evaluate_and_register_commands(runs, store, tiny_grid, tmp_path, capsys):
    _, second = runs
    rc = run_command("evaluate", ["--model", "models:/test-estimator@candidate", "--grid", tiny_grid, "--snr", "50",
                                  "--n", "4", "--batch-size", "4", "--teff-range", "5000", "5600", "--out", str(tmp_path / "ev"),
                                  "--device", "cpu", "--log", "--experiment", "test-eval"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| S/N 50 | 4 |" in out and "Within 1 / 2 sigma" in out and "stored in the bundle" in out
    true = np.load(tmp_path / "ev" / "predictions_snr50.npz")["true"]
    assert true.shape == (4, 4) and np.all((true[:, 0] >= 5000) & (true[:, 0] <= 5600))
    assert (tmp_path / "ev" / "residuals_snr50.png").stat().st_size > 1000

    rc = run_command("register", [str(second.bundle_dir), "--name", "test-local", "--alias", "production"])
    assert rc == 0
    assert "models:/test-local/1" in capsys.readouterr().out
    back = load_bundle("models:/test-local@production", device="cpu")
    assert back.manifest.weights == ModelBundle.load(second.bundle_dir, device="cpu").manifest.weights


@pytest.mark.slow
def test_job_script_runs_under_plain_python(tiny_grid, tmp_path):
    """`python jobs/train.py` starts its own local Ray (a separate process: slow on 2 cores)."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    proc = subprocess.run([sys.executable, str(repo / "jobs" / "train.py"), "--grid", tiny_grid, "--preset", "tiny",
                           "--epochs", "1", "--steps-per-epoch", "1", "--val-steps", "1", "--batch-size", "2",
                           "--storage", str(tmp_path / "runs"), "--run-name", "plain", "--eval-n", "2", "--eval-snr", "50"],
                          capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "registered models:/stellar-estimator/1" in proc.stdout


@pytest.mark.slow
def test_checkpoints_on_s3_and_resume(ray_cluster, tiny_grid, s3_bucket, tmp_path):
    """Checkpoints written to s3:// (moto), and a rerun under the same name resumes from them."""
    import boto3

    from survey_estimator.training import fit

    def cfg(epochs):
        c = _cfg(tiny_grid, f"s3://{s3_bucket}/runs", None, epochs)
        c.run_name = "s3-run"
        return c

    first = fit(cfg(1))
    assert first.state.starts == [0]
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket, Prefix="runs/s3-run/")["Contents"]]
    assert any(k.endswith("/state.pt") for k in keys), keys
    second = fit(cfg(2))
    assert second.state.starts == [0, 1] and second.state.epoch == 1


def test_local_training_without_ray_mlflow_or_astropy_resumes_and_writes_a_bundle(tiny_grid, tmp_path):
    """What a lent GPU node runs (infra/gpu-train.sh): `jobs/train.py --local --no-tracking` on a
    compact packed grid, in a process where Ray, MLflow and astropy cannot be imported; a rerun
    with more epochs resumes from the local checkpoint; the bundle loads and predicts."""
    from survey_estimator.models.bundle import ModelBundle
    from survey_estimator.synth.packed import pack_grid

    grid = tmp_path / "grid.npz"
    pack_grid(tiny_grid, grid, step=2.0**-11)
    repo = Path(__file__).resolve().parents[1]
    block = "import runpy, sys\nfor m in ('ray', 'mlflow', 'astropy'):\n    sys.modules[m] = None\n"

    def train(epochs: int) -> str:
        args = ["--local", "--no-tracking", "--grid", str(grid), "--preset", "tiny", "--epochs", str(epochs),
                "--steps-per-epoch", "2", "--val-steps", "1", "--batch-size", "2", "--storage", str(tmp_path / "runs"),
                "--run-name", "gpu-lease", "--eval-n", "4", "--eval-snr", "50", "--bundle-out", str(tmp_path / "out")]
        code = block + f"sys.argv = {['train.py', *args]!r}\nrunpy.run_path({str(repo / 'jobs' / 'train.py')!r}, run_name='__main__')\n"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    assert "epochs 1-2 of 2 (restarts at [0])" in train(2)
    assert "epochs 3-3 of 3 (restarts at [0, 2])" in train(3)
    bundle = ModelBundle.load(tmp_path / "out", device="cpu")
    assert bundle.manifest.metrics["training"]["epochs"] == 3
    assert bundle.manifest.label_range["teff"] == [5000.0, 6000.0]
    pred = bundle.predict(torch.zeros(2, 2, 8, 4096))
    assert np.all(np.isfinite(pred.mean)) and np.all(pred.sigma > 0)


def test_gpu_lease_script_prepares_a_carry_and_trains_to_its_time_budget(tiny_grid, tmp_path):
    """infra/gpu-train.sh: `prepare` packs the grid within the travel budget, `run` (here on the
    CPU, tiny nets) sizes its epochs from a measured rate, stops at its time limit and leaves the
    bundle and the log under $OUT."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "CARRY": str(tmp_path / "carry"), "OUT": str(tmp_path / "out"), "PY": sys.executable,
           "PRESET": "tiny", "MINUTES": "0.03", "BATCH": "4", "STEPS": "2", "EVAL_N": "4", "RUNS": str(tmp_path / "runs")}
    (tmp_path / "out").mkdir()
    prep = subprocess.run(["bash", str(repo / "infra" / "gpu-train.sh"), "prepare", tiny_grid], capture_output=True,
                          text=True, timeout=300, env=env)
    assert prep.returncode == 0, prep.stderr[-2000:]
    assert "step 0.00048828125" in prep.stdout and "ready: device run" in prep.stdout
    run = subprocess.run(["bash", str(repo / "infra" / "gpu-train.sh"), "run"], capture_output=True, text=True,
                         timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    log = (tmp_path / "out" / "train.log").read_text()
    planned = int(log.split(" epochs of 2 x 4")[0].split()[-1])
    done = int(log.split("run gpu-resnet-diag: epochs 1-")[1].split()[0])
    assert 1 <= done <= planned
    from survey_estimator.models.bundle import ModelBundle

    assert ModelBundle.load(tmp_path / "out" / "bundle", device="cpu").manifest.architecture == "resnet"

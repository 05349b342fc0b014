"""MLflow tracking and the model registry: where runs go, and model bundles in and out of the registry.

Default store (no server): a sqlite database ``<repo>/mlflow/mlflow.db`` with artifacts under
``<repo>/mlflow/artifacts/<experiment>``; ``$MLFLOW_TRACKING_URI`` (e.g. ``http://mlflow:5000`` or
another ``sqlite:///...``) overrides it. Experiments are always created with an explicit
``artifact_location`` because Ray Train workers run in a per-session temp directory, where a
relative default would scatter artifacts.

A trained model is one :class:`~survey_estimator.models.bundle.ModelBundle` directory, logged as the
run artifact ``bundle/`` and registered as a model version whose source is that artifact. This module
writes to the registry; reading a version back (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``) is
:mod:`survey_estimator.models.resolve`'s, like every other way of naming a model.
"""
from __future__ import annotations

import logging
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "survey-estimator"
DEFAULT_MODEL_NAME = "stellar-estimator"
BUNDLE_ARTIFACT = "bundle"
RUN_NAME_TAG = "survey_estimator.run_name"
"""Tag carrying the Ray Train run name, so a resumed training run reuses its MLflow run."""


# -- where things live ------------------------------------------------------------------------
def repo_root() -> Path:
    """The project checkout holding this package (with ``mlflow/``), else the current directory."""
    here = Path(__file__).resolve().parents[1]
    if (here / "pyproject.toml").exists() or (here / "mlflow").is_dir():
        return here
    return Path.cwd()


def default_store_dir() -> Path:
    """``<repo>/mlflow``: the local store's directory (gitignored data)."""
    return repo_root() / "mlflow"


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the local sqlite store ``sqlite:///<repo>/mlflow/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    store = default_store_dir()
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def artifact_root(uri: str | None = None) -> str | None:
    """Artifact root for new experiments under tracking ``uri``.

    ``$SURVEY_MLFLOW_ARTIFACT_ROOT`` wins (e.g. ``s3://bucket/mlflow``); a sqlite store keeps its
    artifacts in ``artifacts/`` beside the database file; a tracking server decides for itself (None).
    """
    env = os.environ.get("SURVEY_MLFLOW_ARTIFACT_ROOT")
    if env:
        return env
    uri = uri or tracking_uri()
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "artifacts").resolve().as_uri()
    return None


def configure(uri: str | None = None) -> str:
    """Point mlflow (tracking and registry) at ``uri`` (default :func:`tracking_uri`); returns it."""
    import mlflow

    uri = uri or tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def client(uri: str | None = None):
    """An ``MlflowClient`` on ``uri`` (default :func:`tracking_uri`) for tracking and registry."""
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def get_or_create_experiment(name: str = DEFAULT_EXPERIMENT, uri: str | None = None) -> str:
    """Experiment id of ``name``, creating it with an explicit artifact location when new."""
    uri = uri or tracking_uri()
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = artifact_root(uri)
    location = f"{root.rstrip('/')}/{name}" if root else None
    log.info("creating MLflow experiment %r (artifacts: %s)", name, location or "server default")
    return c.create_experiment(name, artifact_location=location)


def find_run(experiment_id: str, run_name: str, uri: str | None = None) -> str | None:
    """Id of the newest run in ``experiment_id`` tagged with Ray Train run name ``run_name``."""
    runs = client(uri).search_runs(
        [experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return runs[0].info.run_id if runs else None


def start_or_resume_run(experiment: str, run_name: str, uri: str | None = None) -> str:
    """The MLflow run id for Ray Train run ``run_name``: the existing one (a resumed run) or a new one."""
    uri = uri or tracking_uri()
    exp_id = get_or_create_experiment(experiment, uri)
    existing = find_run(exp_id, run_name, uri)
    c = client(uri)
    if existing:
        c.update_run(existing, status="RUNNING")
        log.info("resuming MLflow run %s (%s)", existing, run_name)
        return existing
    run = c.create_run(exp_id, run_name=run_name, tags={RUN_NAME_TAG: run_name})
    return run.info.run_id


# -- provenance -------------------------------------------------------------------------------
def git_commit(path: Path | None = None) -> str | None:
    """The checkout's HEAD commit (with ``-dirty`` when modified), or None outside git."""
    cwd = str(path or repo_root())
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def system_info(device: str | None = None, num_workers: int | None = None) -> dict[str, str]:
    """Versions and hardware, logged as MLflow params (all values strings)."""
    import numpy
    import ray
    import torch

    from . import __version__

    info = {
        "sys.python": platform.python_version(),
        "sys.platform": platform.platform(),
        "sys.torch": torch.__version__,
        "sys.ray": ray.__version__,
        "sys.numpy": numpy.__version__,
        "sys.survey_estimator": __version__,
        "sys.cuda_available": str(torch.cuda.is_available()),
        "sys.cpu_count": str(os.cpu_count()),
    }
    if torch.cuda.is_available():
        info["sys.gpu"] = torch.cuda.get_device_name(0)
    if device:
        info["sys.device"] = device
    if num_workers is not None:
        info["sys.num_workers"] = str(num_workers)
    commit = git_commit()
    if commit:
        info["sys.git_commit"] = commit
    return info


def log_params(run_id: str, params: dict[str, Any], uri: str | None = None) -> None:
    """Log a flat dict as params (values stringified and :func:`~survey_estimator.storage.redact`-ed,
    so a tracking or storage URI never brings its password along; truncated to MLflow's 6000-char limit)."""
    from mlflow.entities import Param

    from .storage import redact

    c = client(uri)
    items = [Param(str(k), redact(str(v))[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i:i + 100])


def log_metrics(run_id: str, metrics: dict[str, float], step: int, uri: str | None = None) -> None:
    """Log scalar metrics at ``step`` (non-finite values are skipped, with a warning)."""
    import math
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = []
    for k, v in metrics.items():
        v = float(v)
        if not math.isfinite(v):
            log.warning("metric %s=%s is not finite; not logged", k, v)
            continue
        items.append(Metric(k, v, now, int(step)))
    if items:
        client(uri).log_batch(run_id, metrics=items)


# -- the registry -----------------------------------------------------------------------------
def register_bundle(run_id: str, bundle_dir: str | os.PathLike, name: str = DEFAULT_MODEL_NAME,
                    alias: str | None = None, uri: str | None = None,
                    tags: dict[str, str] | None = None) -> "ModelVersion":
    """Log ``bundle_dir`` as artifact ``bundle/`` of ``run_id`` and register it as a version of ``name``.

    The version's source is the run artifact ``bundle/`` (``bundle-2/``, ... when the run already
    holds one, e.g. a resumed run registering again: a version's files are never overwritten);
    ``alias`` (e.g. "candidate") is moved to the new version. Returns the ``ModelVersion``.
    """
    from mlflow.exceptions import MlflowException

    c = client(uri)
    artifact_path = _free_artifact_path(c, run_id, BUNDLE_ARTIFACT)
    c.log_artifacts(run_id, str(bundle_dir), artifact_path=artifact_path)
    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(name, description="survey-estimator model bundles (DAE + estimator + manifest)")
    source = f"{c.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    mv = c.create_model_version(name, source=source, run_id=run_id, tags=tags or {})
    if alias:
        c.set_registered_model_alias(name, alias, mv.version)
    log.info("registered %s version %s%s", name, mv.version, f" (@{alias})" if alias else "")
    return mv


def _free_artifact_path(c, run_id: str, base: str) -> str:
    taken = {a.path for a in c.list_artifacts(run_id)}
    if base not in taken:
        return base
    k = 2
    while f"{base}-{k}" in taken:
        k += 1
    return f"{base}-{k}"


def register_bundle_dir(bundle: str | os.PathLike, name: str = DEFAULT_MODEL_NAME, alias: str | None = None,
                        experiment: str = DEFAULT_EXPERIMENT, uri: str | None = None) -> "ModelVersion":
    """Register a bundle not produced by a tracked run (a small run holds it) as a new version.

    ``bundle`` is any spec :func:`survey_estimator.models.resolve.resolve_model` takes: a folder,
    ``s3://...`` or another registry version. Only the bundle's own files are registered
    (:func:`~survey_estimator.models.resolve.fetch_model`), and a bundle that
    :meth:`ModelBundle.load` refuses never enters the registry.
    """
    import dataclasses

    from .models.resolve import fetch_model, load_bundle

    uri = uri or tracking_uri()
    with tempfile.TemporaryDirectory(prefix="se-register-") as tmp:
        folder = fetch_model(str(bundle), tmp)
        manifest = dataclasses.asdict(load_bundle(str(folder), device="cpu").manifest)
        exp_id = get_or_create_experiment(experiment, uri)
        c = client(uri)
        run = c.create_run(exp_id, run_name=f"register-{Path(str(bundle).rstrip('/')).name}",
                           tags={"survey_estimator.kind": "register"})
        log_params(run.info.run_id, {f"bundle.{k}": v for k, v in manifest.items() if isinstance(v, (str, int, float, bool))}, uri)
        mv = register_bundle(run.info.run_id, folder, name=name, alias=alias, uri=uri)
    c.set_terminated(run.info.run_id)
    return mv

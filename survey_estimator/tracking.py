"""MLflow tracking and the model registry: where runs go, and model bundles in and out of the registry.

Default store (no server): a sqlite database ``<repo>/mlflow/mlflow.db`` with artifacts under
``<repo>/mlflow/artifacts/<experiment>``; ``$MLFLOW_TRACKING_URI`` (e.g. ``http://mlflow:5000`` or
another ``sqlite:///...``) overrides it. Experiments are always created with an explicit
``artifact_location`` because Ray Train workers run in a per-session temp directory, where a
relative default would scatter artifacts.

A trained model is one :class:`~survey_estimator.models.bundle.ModelBundle` directory, logged as the
run artifact ``bundle/`` and registered as a model version whose source is that artifact. Loading a
version back downloads the directory and calls ``ModelBundle.load`` (safetensors + JSON manifest):
nothing is ever unpickled.
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

    from .models.bundle import ModelBundle

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "survey-estimator"
DEFAULT_MODEL_NAME = "stellar-estimator"
BUNDLE_ARTIFACT = "bundle"
RUN_NAME_TAG = "survey_estimator.run_name"
"""Tag carrying the Ray Train run name, so a resumed training run reuses its MLflow run."""


class TrackingError(RuntimeError):
    """The tracking store or registry refused an operation (bad URI, missing model version...)."""


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


def register_bundle_dir(bundle_dir: str | os.PathLike, name: str = DEFAULT_MODEL_NAME, alias: str | None = None,
                        experiment: str = DEFAULT_EXPERIMENT, uri: str | None = None) -> "ModelVersion":
    """Register a local bundle directory (not produced by a tracked run): a small run holds it."""
    from .models.bundle import ModelBundle

    bundle = ModelBundle.load(bundle_dir)  # refuse a broken bundle before it enters the registry
    uri = uri or tracking_uri()
    exp_id = get_or_create_experiment(experiment, uri)
    c = client(uri)
    run = c.create_run(exp_id, run_name=f"register-{Path(bundle_dir).resolve().name}", tags={"survey_estimator.kind": "register"})
    import dataclasses

    manifest = dataclasses.asdict(bundle.manifest)
    flat = {f"bundle.{k}": v for k, v in manifest.items() if isinstance(v, (str, int, float, bool))}
    log_params(run.info.run_id, flat, uri)
    mv = register_bundle(run.info.run_id, bundle_dir, name=name, alias=alias, uri=uri)
    c.set_terminated(run.info.run_id)
    return mv


def download_model(uri: str, dst: str | os.PathLike | None = None, tracking: str | None = None) -> Path:
    """A local directory holding the bundle at ``uri``.

    ``uri`` is ``models:/name@alias``, ``models:/name/N``, ``runs:/<id>/bundle`` or a local directory
    (returned as is). Registry URIs resolve through the version's source. Only the bundle's own
    files are downloaded, into ``dst`` itself (:func:`~survey_estimator.models.bundle.fetch_bundle`):
    whatever else the artifact folder holds is never written here.
    """
    import mlflow

    from .models.bundle import fetch_bundle

    if "://" not in uri and ":/" not in uri:
        path = Path(uri)
        if not path.is_dir():
            raise TrackingError(f"{uri} is not a bundle directory nor a models:/ or runs:/ URI")
        return path
    tracking = tracking or tracking_uri()
    dst = Path(dst) if dst else Path(tempfile.mkdtemp(prefix="bundle-"))
    source = uri
    if uri.startswith("models:/"):
        source = _version_source(uri, tracking)

    def fetch(name: str, target: Path) -> None:
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            local = mlflow.artifacts.download_artifacts(artifact_uri=f"{source.rstrip('/')}/{name}", dst_path=tmp,
                                                        tracking_uri=tracking)
            if not Path(local).is_file():
                raise TrackingError(f"{name} in {source} is not a file")
            os.replace(local, target)

    try:
        return fetch_bundle(fetch, dst)
    except Exception as exc:  # BundleError, TrackingError, and the several types mlflow raises for missing artifacts
        raise TrackingError(f"cannot download {uri} ({source}): {exc}") from None


def _version_source(uri: str, tracking: str) -> str:
    from mlflow.exceptions import MlflowException

    spec = uri[len("models:/"):].strip("/")
    c = client(tracking)
    try:
        if "@" in spec:
            name, alias = spec.split("@", 1)
            mv = c.get_model_version_by_alias(name, alias)
        else:
            name, version = spec.rsplit("/", 1)
            mv = c.get_model_version(name, version)
    except (MlflowException, ValueError) as exc:
        raise TrackingError(f"no model version for {uri}: {exc}") from None
    return mv.source


def load_registered_bundle(uri: str, dst: str | os.PathLike | None = None, tracking: str | None = None,
                           **load_kwargs) -> "ModelBundle":
    """Load a :class:`ModelBundle` from the registry (``models:/name@alias``, ``models:/name/N``), a
    run (``runs:/<id>/bundle``) or a local directory. Safetensors + JSON only: never unpickles."""
    from .models.bundle import ModelBundle

    return ModelBundle.load(download_model(uri, dst, tracking), **load_kwargs)

"""Driver side of training: configure and run Ray Train's ``TorchTrainer`` for a :class:`TrainConfig`.

Credentials (S3, MLflow) never go into Ray Train's ``worker_runtime_env`` (Ray logs it in clear):
the workers get them as the catalogue's workers do (:mod:`survey_estimator.ray_env`), from their
node's environment or in the training-loop arguments as a :class:`~survey_estimator.ray_env.WorkerEnv`.

Storage: ``cfg.storage`` (local directory or ``s3://bucket/prefix``, default ``<repo>/runs``) holds
``<run_name>/checkpoint_*``. Reusing a run name resumes from its latest checkpoint (Ray Train V2
restores its checkpoint manager from storage; the loop loads ``ray.train.get_checkpoint()``).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..ray_env import ensure_ray, worker_env
from ..storage import is_s3, resolve
from .checkpoint import META_FILE, TrainState, read_state, save_checkpoint
from .config import TrainConfig
from .loop import init_worker, run_epochs, train_loop_per_worker

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Ray Train reported a failed run."""


@dataclass
class FitResult:
    """What a finished ``TorchTrainer.fit`` left behind.

    Attributes:
        checkpoint_dir: a local copy of the last checkpoint (state.pt + train_state.json).
        state: its :class:`TrainState` (epoch, history, starts).
        run_path: where Ray Train stored the run (local path or URI).
        use_gpu: whether the workers used GPUs.
    """

    checkpoint_dir: Path
    state: TrainState
    run_path: str
    use_gpu: bool


def default_storage() -> str:
    from ..tracking import repo_root

    return str(repo_root() / "runs")


def resolve_use_gpu(cfg: TrainConfig) -> bool:
    """``cfg.use_gpu``, or (auto) whether the cluster has a GPU for every worker."""
    if cfg.use_gpu is not None:
        return bool(cfg.use_gpu)
    import ray

    return ray.cluster_resources().get("GPU", 0) >= cfg.num_workers


def fit(cfg: TrainConfig, mlflow_run_id: str | None = None, tracking_uri: str | None = None,
        local_dir: str | os.PathLike | None = None) -> FitResult:
    """Train with ``cfg.num_workers`` Ray Train workers; returns the last checkpoint, copied locally."""
    import ray.train
    from ray.train.torch import TorchTrainer

    ensure_ray()
    use_gpu = resolve_use_gpu(cfg)
    storage_uri = cfg.storage or default_storage()
    if is_s3(storage_uri):
        loc = resolve(storage_uri)
        storage_path, storage_fs = loc.path, loc.fs
    else:
        storage_path, storage_fs = str(Path(storage_uri).resolve()), None
        Path(storage_path).mkdir(parents=True, exist_ok=True)
    plain, secrets = worker_env(MLFLOW_TRACKING_URI=tracking_uri)
    # the loop config is part of Ray Train's run state: the workers read the tracking URI from
    # their environment (it may hold a password), never from the config
    loop_config = {"train": {**cfg.to_dict(), "tracking_uri": ""}, "mlflow_run_id": mlflow_run_id, "env": secrets}
    resources = {"CPU": cfg.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=cfg.run_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=max(1, cfg.keep_checkpoints)),
            worker_runtime_env={"env_vars": plain},
        ),
    )
    log.info("training %s: %d worker(s), %s, storage %s", cfg.run_name, cfg.num_workers,
             "GPU" if use_gpu else "CPU", storage_uri)
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise TrainingError(f"training run {cfg.run_name} failed: {exc}") from exc
    if result.error:
        raise TrainingError(f"training run {cfg.run_name} failed: {result.error}")
    if result.checkpoint is None:
        raise TrainingError(f"training run {cfg.run_name} produced no checkpoint")
    dst = Path(local_dir) if local_dir else Path(tempfile.mkdtemp(prefix=f"{cfg.run_name}-ckpt-"))
    with result.checkpoint.as_directory() as d:
        shutil.copytree(d, dst, dirs_exist_ok=True)
    return FitResult(checkpoint_dir=dst, state=read_state(dst), run_path=str(result.path), use_gpu=use_gpu)


LOCAL_CHECKPOINT = "local-checkpoint"
"""The folder under ``<storage>/<run_name>/`` where :func:`fit_local` keeps its checkpoint."""


def fit_local(cfg: TrainConfig, mlflow_run_id: str | None = None, tracking_uri: str | None = None,
              local_dir: str | os.PathLike | None = None) -> FitResult:
    """Train in this process on one device, without Ray (a machine without it, such as a lent GPU
    node): the same epochs as a one-worker :func:`fit`, the checkpoint rewritten after every epoch
    under ``<storage>/<run_name>/local-checkpoint`` (local storage only), and resumed from there
    when the run name is reused; epochs are logged to the MLflow run ``mlflow_run_id`` when given.
    The device is the GPU when there is one and ``cfg.use_gpu`` is not False, else the CPU."""
    import torch

    storage = cfg.storage or default_storage()
    if is_s3(storage):
        raise ValueError("local training keeps its checkpoint on local storage, not s3://")
    folder = Path(storage).resolve() / cfg.run_name / LOCAL_CHECKPOINT
    use_gpu = torch.cuda.is_available() and cfg.use_gpu is not False
    if cfg.use_gpu and not use_gpu:
        raise TrainingError("use_gpu is set but torch sees no GPU")
    device = torch.device("cuda" if use_gpu else "cpu")
    nets, optimisers, state = init_worker(cfg, device, 0, folder if (folder / META_FILE).is_file() else None)
    log.info("training %s in this process on %s, checkpoint %s", cfg.run_name, device, folder)

    def report(metrics: dict, state: TrainState) -> None:
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_checkpoint(tmp, state, nets, optimisers)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)  # the last complete checkpoint survives an interruption

    run_epochs(cfg, device, 0, nets, optimisers, state, report, mlflow_run_id, tracking_uri)
    if state.epoch < 0:
        raise TrainingError(f"training run {cfg.run_name} ran no epoch")
    dst = Path(local_dir) if local_dir else Path(tempfile.mkdtemp(prefix=f"{cfg.run_name}-ckpt-"))
    shutil.copytree(folder, dst, dirs_exist_ok=True)
    return FitResult(checkpoint_dir=dst, state=read_state(dst), run_path=str(folder.parent), use_gpu=use_gpu)

"""A whole training run, driver side: MLflow run -> Ray Train fit -> bundle -> evaluation -> registry.

1. open (or, for a reused run name, reopen) the MLflow run; log params, system info and the grid id;
2. ``trainer.fit`` (the workers log per-epoch metrics to that run), or ``trainer.fit_local`` in this
   process without Ray (``cfg.local``);
3. turn the last checkpoint into a :class:`ModelBundle` (estimator + DAE + scaler + versions);
4. evaluate on held-out test nodes at ``cfg.eval_snr`` (raw and calibrated with per-label scales fitted
   on validation nodes); metrics, tables and figures go to MLflow;
5. save the bundle with its calibration, log it and register it under ``cfg.register_name`` with
   ``cfg.alias``.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import tracking
from ..sampling import SamplerConfig
from ..storage import redact
from ..synth.store import grid_identity
from .checkpoint import load_model_weights
from .components import build_networks
from .config import TrainConfig
from .trainer import FitResult, fit, fit_local

log = logging.getLogger(__name__)


@dataclass
class TrainSummary:
    """Result of :func:`run_training`."""

    fit: FitResult
    mlflow_run_id: str | None
    bundle_dir: Path | None = None
    model_version: str | None = None
    report_markdown: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


def preprocessing_version() -> str:
    """``survey_estimator.preprocess.PREPROCESSING_VERSION`` when that module exists, else the
    normalisation version (what the synthetic training input went through)."""
    try:
        from ..preprocess import PREPROCESSING_VERSION

        return str(PREPROCESSING_VERSION)
    except ImportError:
        from ..normalise import NORMALISATION_VERSION

        return f"normalise:{NORMALISATION_VERSION}"


def _log_params_once(run_id: str, params: dict[str, str], uri: str) -> None:
    """Log params; on a resumed run, values that changed (e.g. more epochs) become tags
    ``resumed.<param>`` because MLflow refuses to overwrite a param. Values are redacted first
    (a tracking URI with a password is logged without it), as :func:`tracking.log_params` does."""
    from ..storage import redact

    params = {k: redact(str(v)) for k, v in params.items()}
    existing = tracking.client(uri).get_run(run_id).data.params
    new = {k: v for k, v in params.items() if k not in existing}
    tracking.log_params(run_id, new, uri)
    c = tracking.client(uri)
    for k, v in params.items():
        if k in existing and existing[k] != str(v)[:6000]:
            c.set_tag(run_id, f"resumed.{k}", str(v)[:5000])


def bundle_from_checkpoint(cfg: TrainConfig, checkpoint_dir: Path, grid_id: str):
    """A :class:`ModelBundle` holding the checkpoint's networks (the task must include an estimator)."""
    from ..models.bundle import ModelBundle

    nets = build_networks(cfg)
    for name, net in nets.items():
        net.load_state_dict(load_model_weights(checkpoint_dir, name))
        net.eval()
    commit = tracking.git_commit() or "unknown"
    span = {**grid_identity(cfg.grid)[1], "vsini": list(SamplerConfig.vsini_range)}
    return ModelBundle.create(
        nets["estimator"], name=cfg.register_name, preprocessing_version=preprocessing_version(),
        grid_id=grid_id, dae=nets.get("dae"), commit=commit, label_range=span, grid_uri=redact(str(cfg.grid)),
    )


def dae_from_checkpoint(checkpoint_dir: str | Path):
    """The DAE of a training checkpoint (a ``--task dae`` or ``both`` run), rebuilt from the run's
    config and in eval mode. Raises FileNotFoundError for a folder that is not a checkpoint and
    KeyError when the checkpoint has no DAE."""
    from .checkpoint import META_FILE, read_state

    if not (Path(checkpoint_dir) / META_FILE).is_file():
        raise FileNotFoundError(f"{checkpoint_dir} is not a training checkpoint folder (no {META_FILE})")
    cfg = TrainConfig.from_dict(read_state(checkpoint_dir).config)
    if not cfg.trains_dae:
        raise KeyError(f"checkpoint {checkpoint_dir} is of a {cfg.task!r} run: it has no DAE")
    dae = build_networks(TrainConfig.from_dict({**cfg.to_dict(), "task": "dae"}))["dae"]
    dae.load_state_dict(load_model_weights(checkpoint_dir, "dae"))
    return dae.eval()


def training_record(cfg: TrainConfig, summary: TrainSummary) -> dict:
    """What a bundle remembers of its training (the evaluation needs the node split)."""
    return {"run_name": cfg.run_name, "mlflow_run_id": summary.mlflow_run_id, "epochs": summary.fit.state.epoch + 1,
            "task": cfg.task, "snr_range": [cfg.snr_min, cfg.snr_max], "split_seed": cfg.split_seed}


def run_training(cfg: TrainConfig, track: bool = True) -> TrainSummary:
    """Run the whole pipeline above; ``track=False`` trains without MLflow (no registry either)."""
    grid_id = grid_identity(cfg.grid)[0]
    uri = tracking.configure(cfg.tracking_uri or None) if track else None
    run_id = tracking.start_or_resume_run(cfg.experiment, cfg.run_name, uri) if track else None
    if run_id:
        info = tracking.system_info(device="gpu" if cfg.use_gpu else ("cpu" if cfg.use_gpu is False else "auto"),
                                    num_workers=cfg.num_workers)
        _log_params_once(run_id, {**cfg.params(), **info, "grid_id": grid_id}, uri)
        tracking.client(uri).set_tag(run_id, "grid_id", grid_id)
    try:
        result = (fit_local if cfg.local else fit)(cfg, mlflow_run_id=run_id, tracking_uri=uri)
        summary = TrainSummary(fit=result, mlflow_run_id=run_id, metrics=dict(result.state.history[-1]) if result.state.history else {})
        if run_id:
            c = tracking.client(uri)
            c.set_tag(run_id, "sys.device_used", "gpu" if result.use_gpu else "cpu")
            c.set_tag(run_id, "ray.run_path", result.run_path)
            c.set_tag(run_id, "train.starts", ",".join(map(str, result.state.starts)))
        if cfg.trains_estimator:
            _finish_estimator(cfg, summary, grid_id, uri)
        elif run_id:
            tracking.client(uri).log_artifacts(run_id, str(result.checkpoint_dir), artifact_path="checkpoint")
        if run_id:
            tracking.client(uri).set_terminated(run_id, "FINISHED")
        return summary
    except BaseException:
        if run_id:
            tracking.client(uri).set_terminated(run_id, "FAILED")
        raise


def _finish_estimator(cfg: TrainConfig, summary: TrainSummary, grid_id: str, uri: str | None) -> None:
    from ..evaluation.evaluate import EvalConfig, evaluate_bundle

    bundle = bundle_from_checkpoint(cfg, summary.fit.checkpoint_dir, grid_id)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bundle.to(device)
    work = Path(tempfile.mkdtemp(prefix=f"{cfg.run_name}-final-"))
    if cfg.eval:
        ecfg = EvalConfig(snrs=cfg.eval_snr, n=cfg.eval_n, use_dae=bundle.dae is not None, seed=cfg.seed + 99991, batch_size=min(64, cfg.eval_n),
                          fit_calibration=True, calibration_snr=(cfg.snr_min, cfg.snr_max), split_seed=cfg.split_seed)
        report = evaluate_bundle(bundle, cfg.grid, ecfg, device=device)
        bundle.apply_calibration(report)
        bundle.manifest.metrics = {**report.flat_metrics(), "training": training_record(cfg, summary)}
        files = report.write(work / "evaluation")
        summary.report_markdown = report.markdown()
        summary.metrics.update(report.flat_metrics())
        if summary.mlflow_run_id:
            final_step = summary.fit.state.epoch
            tracking.log_metrics(summary.mlflow_run_id, report.flat_metrics(), step=final_step, uri=uri)
            tracking.client(uri).log_artifacts(summary.mlflow_run_id, str(work / "evaluation"), artifact_path="evaluation")
            log.info("logged %d evaluation files", len(files))
    if not cfg.eval:
        bundle.manifest.metrics = {"training": training_record(cfg, summary)}
    summary.bundle_dir = bundle.save(work / "bundle")
    if summary.mlflow_run_id and cfg.register:
        mv = tracking.register_bundle(summary.mlflow_run_id, summary.bundle_dir, name=cfg.register_name,
                                      alias=cfg.alias or None, uri=uri, tags={"grid_id": grid_id, "run_name": cfg.run_name})
        summary.model_version = str(mv.version)
    elif summary.mlflow_run_id:
        tracking.client(uri).log_artifacts(summary.mlflow_run_id, str(summary.bundle_dir), artifact_path=tracking.BUNDLE_ARTIFACT)

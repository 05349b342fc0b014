"""The per-worker training loop run by Ray Train's ``TorchTrainer`` (DDP over the workers).

Each worker draws its own batches with the sampler ON ITS DEVICE (its own seed, no DataLoader),
runs the DAE and/or estimator step under bf16 autocast on GPU, and at the end of every epoch:
validates on held-out validation nodes (same spectra every epoch), all-reduces the metrics, and
calls ``ray.train.report`` (every worker; rank 0 attaches the checkpoint and prints the progress
line and logs the epoch to MLflow). A run restarted under the same name resumes from
``ray.train.get_checkpoint()``.

With ``cfg.echo`` > 1 (data echoing, :mod:`.echo`) each fresh training batch is projected by the
estimator's fixed front end into a buffer, and ``echo`` optimiser steps are taken on batches drawn
from it; validation always draws fresh spectra through the whole network.

With ``task="both"`` the DAE is trained on (noisy -> clean) and the estimator on the DAE's
(detached) output of the same batch, so the estimator learns the input it will see at inference.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from typing import Any, Callable

import torch
import torch.distributed as dist

from ..labels import LABEL_NAMES, LABEL_UNITS, LabelScaler
from ..models import beta_nll_weights, dae_loss, gaussian_nll
from .checkpoint import TrainState, load_checkpoint, save_checkpoint
from .components import base_lr, build_networks, build_optimisers, fit_front_ends
from .config import TrainConfig
from .data import make_sampler
from .echo import FeatureBuffer
from .schedule import set_epoch_lr

log = logging.getLogger(__name__)

VALIDATION_SEED_OFFSET = 1_000_003


def bf16_autocast_helps(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively on ``device``: any CUDA device, or a CPU whose oneDNN
    has bf16 kernels (AVX512-BF16 or AMX). Elsewhere bf16 is emulated and slower than float32."""
    if device.type == "cuda":
        return True
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _autocast(device: torch.device, enabled: bool):
    if enabled:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on any DDP rank (itself without DDP)."""
    return bool(_all_reduce(torch.tensor([float(flag)], device=device)).item() > 0)


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class EpochRunner:
    """One worker's networks, optimisers and samplers; :meth:`train_epoch` and :meth:`validate`."""

    def __init__(self, cfg: TrainConfig, device: torch.device, rank: int, nets: dict, optimisers: dict):
        self.cfg, self.device, self.rank = cfg, device, rank
        self.nets, self.optimisers = nets, optimisers
        self.scaler = LabelScaler()
        self.sampler = make_sampler(cfg, device, seed=cfg.seed * 7919 + rank)
        fit_front_ends(nets, self.sampler.sampler, seed=cfg.split_seed)
        self.amp = cfg.amp and bf16_autocast_helps(device)
        if self.amp and rank == 0:
            log.info("bf16 autocast on %s (--no-amp: float32)", device.type)
        self.buffer = FeatureBuffer(cfg.echo_buffer, seed=cfg.seed * 7919 + rank) if cfg.echo > 1 else None
        if self.buffer is not None and rank == 0:
            log.info("data echoing: %d optimiser steps per fresh batch of %d, from a buffer of %d samples per worker",
                     cfg.echo, cfg.batch_size, cfg.echo_buffer)

    def _estimator_losses(self, labels: torch.Tensor, train: bool, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """NLL and summed absolute errors (denormalised) of the estimator on ``inputs`` (x= model
        input or features= of a fixed front end); with ``train`` also the optimiser step."""
        target = self.scaler.normalise(labels.to(torch.float32))
        with _autocast(self.device, self.amp):
            g = self.nets["estimator"](**inputs)
        nll = gaussian_nll(g, target, reduction="none")
        if train:
            self._update("estimator", (nll * beta_nll_weights(g, self.cfg.nll_beta)).mean())
        return {"nll": nll.detach().mean(), "abs_err": (self.scaler.denormalise(g.mean.detach().float()) - labels).abs().sum(0)}

    def _echo_steps(self, x: torch.Tensor, labels: torch.Tensor):
        """Add the fresh batch's features to the buffer, then yield the losses of ``cfg.echo``
        optimiser steps on batches drawn from it."""
        estimator = getattr(self.nets["estimator"], "module", self.nets["estimator"])  # DDP-wrapped or not
        with torch.no_grad():
            self.buffer.add(estimator.features(x), labels)
        for _ in range(self.cfg.echo):
            features, echoed = self.buffer.sample(self.cfg.batch_size)
            yield self._estimator_losses(echoed, True, features=features)

    def _step(self, x: torch.Tensor, clean: torch.Tensor, labels: torch.Tensor, train: bool) -> dict[str, torch.Tensor]:
        """Losses of one batch (B, 2, 8, 4096); with ``train`` also the optimiser steps."""
        out: dict[str, torch.Tensor] = {}
        est_input = x
        if "dae" in self.nets:
            with _autocast(self.device, self.amp):
                denoised = self.nets["dae"](x)
            loss = dae_loss(denoised, clean[:, 0:1], x[:, 1:2])
            if train:
                self._update("dae", loss)
            out["dae_mse"] = loss.detach()
            est_input = torch.cat([denoised.detach().to(x.dtype), x[:, 1:2]], dim=1)
        if "estimator" in self.nets:
            out.update(self._estimator_losses(labels, train, x=est_input))
        return out

    def train_batch(self, batch) -> list[dict[str, torch.Tensor]]:
        """The optimiser steps of one fresh training :class:`~survey_estimator.sampling.Batch`: one
        on the batch itself, or with data echoing ``cfg.echo`` on batches from the buffer. Returns
        the losses of each step."""
        if self.buffer is not None:
            return list(self._echo_steps(batch.x, batch.labels))
        return [self._step(batch.x, batch.clean, batch.labels, train=True)]

    def _update(self, name: str, loss: torch.Tensor) -> None:
        opt = self.optimisers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.nets[name].parameters(), self.cfg.grad_clip)
        opt.step()

    def _run(self, split: str, steps: int, train: bool) -> dict[str, float]:
        for net in self.nets.values():
            net.train(train)
        sums = torch.zeros(3 + len(LABEL_NAMES), dtype=torch.float64, device=self.device)  # nll, mse, n, abs_err
        grad = contextlib.nullcontext() if train else torch.no_grad()
        with grad:
            for _ in range(steps):
                batch = self.sampler.sample(self.cfg.batch_size, split=split)
                steps_parts = self.train_batch(batch) if train else [self._step(batch.x, batch.clean, batch.labels, False)]
                for parts in steps_parts:
                    if "nll" in parts:
                        sums[0] += parts["nll"].double()
                        sums[3:] += parts["abs_err"].double()
                    if "dae_mse" in parts:
                        sums[1] += parts["dae_mse"].double()
                    sums[2] += 1
        _all_reduce(sums)
        steps_total = sums[2].item()
        n_samples = steps_total * self.cfg.batch_size
        prefix = "train" if train else "val"
        m: dict[str, float] = {}
        if "estimator" in self.nets:
            m[f"{prefix}/loss"] = sums[0].item() / steps_total
            for i, name in enumerate(LABEL_NAMES):
                m[f"{prefix}/mae_{name}"] = sums[3 + i].item() / n_samples
        if "dae" in self.nets:
            m[f"{prefix}/dae_mse"] = sums[1].item() / steps_total
        return m

    def train_epoch(self) -> dict[str, float]:
        return self._run("train", self.cfg.steps_per_epoch, train=True)

    def validate(self) -> dict[str, float]:
        """Validation on the same spectra every epoch (the sampler is re-seeded), no gradients."""
        with self.sampler.fixed_seed(self.cfg.seed * 7919 + VALIDATION_SEED_OFFSET + self.rank):
            return self._run("validation", max(1, self.cfg.val_steps), train=False)


def progress_line(epoch: int, epochs: int, m: dict[str, float]) -> str:
    """One console line per epoch."""
    parts = [f"epoch {epoch + 1}/{epochs}"]
    for key in ("train/loss", "val/loss", "train/dae_mse", "val/dae_mse"):
        if key in m:
            parts.append(f"{key} {m[key]:.4g}")
    if "val/mae_teff" in m:
        parts.append("val MAE " + " ".join(f"{n} {m[f'val/mae_{n}']:.3g}{LABEL_UNITS[n] if n == 'teff' else ''}" for n in LABEL_NAMES))
    parts.append(f"lr {m['lr']:.2g}")
    parts.append(f"{m['samples_per_s_per_worker']:.0f} samples/s/worker")
    if m.get("spectra_per_s_per_worker", m["samples_per_s_per_worker"]) != m["samples_per_s_per_worker"]:
        parts.append(f"{m['spectra_per_s_per_worker']:.0f} fresh spectra/s/worker")
    parts.append(f"{m['epoch_s']:.1f} s")
    return " | ".join(parts)


def init_worker(cfg: TrainConfig, device: torch.device, rank: int, checkpoint_dir: str | os.PathLike | None = None):
    """The networks (on ``device``), optimisers and :class:`TrainState` of one worker: fresh, or
    restored from ``checkpoint_dir`` (a :func:`save_checkpoint` folder). Seeds torch for the rank."""
    torch.manual_seed(cfg.seed * 7919 + rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    nets = {k: m.to(device) for k, m in build_networks(cfg).items()}
    optimisers = build_optimisers(cfg, nets)
    state = TrainState(epoch=-1, config=cfg.to_dict())
    if checkpoint_dir is not None:
        state = load_checkpoint(checkpoint_dir, nets, optimisers, map_location=device)
        state.config = cfg.to_dict()
        if rank == 0:
            log.info("[%s] resuming from the checkpoint of epoch %d", cfg.run_name, state.epoch + 1)
    state.starts.append(state.epoch + 1)
    return nets, optimisers, state


def run_epochs(cfg: TrainConfig, device: torch.device, rank: int, nets: dict, optimisers: dict, state: TrainState,
               report: Callable[[dict[str, float], TrainState], None], run_id: str | None = None, uri: str | None = None) -> None:
    """Epochs ``state.epoch + 1`` .. ``cfg.epochs - 1`` of one worker (fewer when ``cfg.max_minutes``
    runs out): train, validate, then ``report(metrics, state)`` (every rank; it saves the
    checkpoint), rank 0 also printing the progress line and logging the epoch to the MLflow run
    ``run_id``. The ranks stop together: at the first epoch past the limit on any of them."""
    runner = EpochRunner(cfg, device, rank, nets, optimisers)
    started = time.perf_counter()
    for epoch in range(state.epoch + 1, cfg.epochs):
        t0 = time.perf_counter()
        lrs = {k: set_epoch_lr(o, base_lr(cfg, k), epoch, cfg.epochs, cfg.lr_decay_epochs, cfg.lr_decay_factor)
               for k, o in optimisers.items()}
        metrics = runner.train_epoch()
        t_train = time.perf_counter() - t0
        metrics.update(runner.validate())
        metrics.update(
            epoch=epoch,
            lr=lrs.get("estimator", lrs.get("dae")),
            epoch_s=time.perf_counter() - t0,
            samples_per_s_per_worker=cfg.steps_per_epoch * cfg.batch_size * cfg.echo / t_train,
            spectra_per_s_per_worker=cfg.steps_per_epoch * cfg.batch_size / t_train,
        )
        state.epoch = epoch
        state.history.append(metrics)
        if rank == 0:
            log.info("[%s] %s", cfg.run_name, progress_line(epoch, cfg.epochs, metrics))
            if run_id:
                from ..tracking import log_metrics

                try:
                    log_metrics(run_id, {k: v for k, v in metrics.items() if k != "epoch"}, step=epoch, uri=uri)
                except Exception as exc:  # tracking must never kill a training run
                    log.warning("MLflow logging failed at epoch %d: %s", epoch, exc)
        report(metrics, state)
        if cfg.max_minutes > 0 and _any_rank(time.perf_counter() - started > 60 * cfg.max_minutes, device):
            if rank == 0:
                log.info("[%s] stopping after epoch %d: past --max-minutes %g", cfg.run_name, epoch + 1, cfg.max_minutes)
            break


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point. ``loop_config``: {"train": TrainConfig.to_dict(), "mlflow_run_id": str|None,
    "env": WorkerEnv|None}. The worker applies ``env`` (credentials) first; metrics go to the MLflow
    store named by ``$MLFLOW_TRACKING_URI`` (set by the driver, see :func:`.trainer.fit`)."""
    import ray.train
    import ray.train.torch

    if loop_config.get("env") is not None:
        loop_config["env"].apply()
    cfg = TrainConfig.from_dict(loop_config["train"])
    run_id = loop_config.get("mlflow_run_id")
    uri = os.environ.get("MLFLOW_TRACKING_URI") if run_id else None
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            nets, optimisers, state = init_worker(cfg, device, rank, d)
    else:
        nets, optimisers, state = init_worker(cfg, device, rank)
    nets = {k: ray.train.torch.prepare_model(m, move_to_device=False) for k, m in nets.items()}

    def report(metrics: dict[str, float], state: TrainState) -> None:
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(tmp, state, nets, optimisers)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)

    run_epochs(cfg, device, rank, nets, optimisers, state, report, run_id, uri)

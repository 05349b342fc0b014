"""Typed configuration of a training run: every hyper-parameter of ``survey-estimator train``.

Defaults are the seed's: Adam with learning rate 1e-4 for the estimators, AdamW 3e-4 for the DAE,
learning rate times 0.1 for the last 50 epochs. ``preset`` picks the network sizes ("seed" = full
size, "tiny" = a few thousand parameters for tests and demos).
"""
from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field

TASKS = ("estimator", "dae", "both")
MODELS = ("resnet", "attention", "patch", "pca")
HEADS = {"diag": "diagonal", "diagonal": "diagonal", "full": "full"}
PRESETS = ("seed", "tiny")
ECHO_MODELS = ("pca",)
"""Estimators with a fixed front end, whose features a data echoing buffer can hold (``echo``)."""


@dataclass
class TrainConfig:
    """One training run. All fields are JSON-serialisable (they travel to the Ray workers and MLflow)."""

    grid: str = ""
    """Grid store URI (local directory or s3://)."""
    task: str = "estimator"
    """'estimator' (labels), 'dae' (denoiser only) or 'both' (DAE and an estimator trained on its output)."""
    model: str = "resnet"
    head: str = "diagonal"
    preset: str = "seed"
    model_overrides: dict = field(default_factory=dict)
    """Fields of the estimator's config to override (e.g. {"dropout": 0.2})."""
    dae_overrides: dict = field(default_factory=dict)

    epochs: int = 200
    steps_per_epoch: int = 500
    val_steps: int = 20
    batch_size: int = 64
    """Per worker: the global batch is ``batch_size * num_workers``."""
    snr_min: float = 10.0
    snr_max: float = 200.0
    lr: float = 1e-4
    """Estimator learning rate (Adam)."""
    dae_lr: float = 3e-4
    """DAE learning rate (AdamW)."""
    weight_decay: float = 0.0
    """Estimator weight decay (Adam)."""
    dae_weight_decay: float = 1e-2
    lr_decay_epochs: int = 50
    """The learning rate is multiplied by ``lr_decay_factor`` for the last N epochs (0 = never)."""
    lr_decay_factor: float = 0.1
    grad_clip: float = 10.0
    nll_beta: float = 0.0
    """Train the estimator on the beta-NLL (``models.heads.beta_nll_weights``; 0 = the seed's
    plain NLL, 0.5 is the paper's choice); the reported losses stay the plain NLL."""
    echo: int = 1
    """Data echoing: optimiser steps per freshly drawn batch, on batches drawn from a buffer of
    the front end's features (1 = none; ``training.echo``). Only for the estimators of
    ``ECHO_MODELS`` and the 'estimator' task."""
    echo_buffer: int = 65536
    """Samples the echoing buffer holds per worker."""
    max_minutes: float = 0.0
    """Stop after the first epoch that ends past this many minutes of this start (0 = no limit):
    a fixed lease (a lent GPU for 10 minutes) ends with a finished epoch and its checkpoint."""
    amp: bool = True
    """bf16 autocast where it is native: GPUs, and CPUs with AVX512-BF16 or AMX (elsewhere float32)."""
    seed: int = 0
    """Seeds the networks' initialisation and each worker's sample stream (worker r: seed * 7919 + r)."""
    split_seed: int = 0
    """Seeds the train / validation / test split of the grid nodes (keep it fixed across runs)."""

    num_workers: int = 1
    local: bool = False
    """Train in this process without Ray (:func:`.trainer.fit_local`; one device, ``num_workers`` 1)."""
    use_gpu: bool | None = None
    """None = use GPUs when the cluster has them."""
    cpus_per_worker: float = 1.0
    storage: str = ""
    """Where Ray Train writes checkpoints (local directory or s3://); default ``<repo>/runs``."""
    run_name: str = ""
    """Ray Train run name; reusing it resumes from the last checkpoint."""
    keep_checkpoints: int = 2

    experiment: str = "survey-estimator"
    tracking_uri: str = ""
    """MLflow tracking URI; default ``$MLFLOW_TRACKING_URI`` or the local sqlite store."""
    register_name: str = "stellar-estimator"
    alias: str = "candidate"
    register: bool = True

    eval_snr: tuple[float, ...] = (20.0, 100.0)
    eval_n: int = 2000
    """Test spectra per S/N in the final evaluation (and validation spectra for calibration)."""
    eval: bool = True

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} not in {TASKS}")
        if self.model not in MODELS:
            raise ValueError(f"model {self.model!r} not in {MODELS}")
        if self.head not in HEADS:
            raise ValueError(f"head {self.head!r} not in {tuple(HEADS)}")
        self.head = HEADS[self.head]
        if self.preset not in PRESETS:
            raise ValueError(f"preset {self.preset!r} not in {PRESETS}")
        if not (0 < self.snr_min <= self.snr_max):
            raise ValueError(f"need 0 < snr_min <= snr_max, got {self.snr_min}, {self.snr_max}")
        for name in ("epochs", "steps_per_epoch", "batch_size", "num_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0.0 <= self.nll_beta <= 1.0:
            raise ValueError(f"nll_beta must lie in [0, 1], got {self.nll_beta}")
        if self.echo < 1 or self.echo_buffer < self.batch_size:
            raise ValueError(f"need echo >= 1 and echo_buffer >= batch_size, got {self.echo}, {self.echo_buffer}")
        if self.echo > 1 and (self.task != "estimator" or self.model not in ECHO_MODELS):
            raise ValueError(f"data echoing (echo {self.echo}) needs the estimator task and a model with a fixed "
                             f"front end {ECHO_MODELS}, got task {self.task!r}, model {self.model!r}")
        if self.local and self.num_workers != 1:
            raise ValueError("local training runs one worker (num_workers 1)")
        self.eval_snr = tuple(float(s) for s in self.eval_snr)
        if not self.run_name:
            self.run_name = f"{self.task}-{self.model}-{time.strftime('%Y%m%d-%H%M%S')}"
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.run_name):
            raise ValueError(f"run name {self.run_name!r}: use letters, digits, '.', '_' and '-'")

    @property
    def trains_estimator(self) -> bool:
        return self.task in ("estimator", "both")

    @property
    def trains_dae(self) -> bool:
        return self.task in ("dae", "both")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["eval_snr"] = list(self.eval_snr)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def params(self) -> dict[str, str]:
        """Flat string params for MLflow."""
        return {k: (",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)) for k, v in self.to_dict().items()}

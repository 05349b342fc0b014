"""Training checkpoints: one directory per epoch, written by rank 0 and handed to ``ray.train.report``.

Contents::

    state.pt          torch.save of plain state dicts (models, optimisers); loaded with
                      ``weights_only=True`` (tensors and primitive containers only, no pickled code)
    train_state.json  epoch (last finished, 0-based), metric history, the run's TrainConfig, and the
                      epoch at which each (re)start of the run began

A checkpoint holds the unwrapped models (no ``module.`` prefix from DDP).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

STATE_FILE = "state.pt"
META_FILE = "train_state.json"


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside DDP / ``torch.compile`` wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


@dataclass
class TrainState:
    """What a checkpoint remembers besides the weights."""

    epoch: int
    """Last finished epoch, 0-based."""
    config: dict
    history: list[dict] = field(default_factory=list)
    """One dict of metrics per finished epoch."""
    starts: list[int] = field(default_factory=list)
    """First epoch of every (re)start of the run: [0] for an uninterrupted run, [0, 1] after a resume."""


def save_checkpoint(directory: str | os.PathLike, state: TrainState, models: dict[str, nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer]) -> Path:
    """Write ``state``, the models' and optimisers' state dicts into ``directory`` (created)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    blob = {f"model.{k}": unwrap(m).state_dict() for k, m in models.items()}
    blob.update({f"optim.{k}": o.state_dict() for k, o in optimizers.items()})
    torch.save(blob, directory / STATE_FILE)
    (directory / META_FILE).write_text(json.dumps(state.__dict__, indent=1, default=str))
    return directory


def read_state(directory: str | os.PathLike) -> TrainState:
    """The :class:`TrainState` of a checkpoint directory."""
    return TrainState(**json.loads((Path(directory) / META_FILE).read_text()))


def load_checkpoint(directory: str | os.PathLike, models: dict[str, nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer] | None = None,
                    map_location: str | torch.device = "cpu") -> TrainState:
    """Restore models (and optimisers) in place from ``directory``; returns its :class:`TrainState`.

    Raises KeyError when the checkpoint lacks one of the requested models (e.g. resuming an
    estimator run as a DAE run), RuntimeError on shape mismatches (torch's strict loading).
    """
    blob = torch.load(Path(directory) / STATE_FILE, map_location=map_location, weights_only=True)
    for k, m in models.items():
        if f"model.{k}" not in blob:
            raise KeyError(f"checkpoint {directory} has no model {k!r} (has {sorted(blob)})")
        unwrap(m).load_state_dict(blob[f"model.{k}"])
    for k, o in (optimizers or {}).items():
        if f"optim.{k}" in blob:
            o.load_state_dict(blob[f"optim.{k}"])
    return read_state(directory)


def load_model_weights(directory: str | os.PathLike, name: str) -> dict[str, torch.Tensor]:
    """The state dict of model ``name`` ('estimator' or 'dae') in a checkpoint."""
    blob = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    return blob[f"model.{name}"]

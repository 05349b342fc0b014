"""Build what a training worker needs from a :class:`TrainConfig`: networks, optimisers, samplers.

Shared by the Ray Train loop and by the driver that turns the final checkpoint into a bundle, so
both build exactly the same networks.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models import build_model
from .config import TrainConfig


def estimator_config(cfg: TrainConfig) -> dict:
    """The estimator's config dict (overrides on top of the preset, head from the run config)."""
    return {**cfg.model_overrides, "head": cfg.head}


def build_networks(cfg: TrainConfig) -> dict[str, nn.Module]:
    """Freshly initialised networks of the run: {"estimator": ..., "dae": ...} as the task needs."""
    preset = "tiny" if cfg.preset == "tiny" else None
    nets: dict[str, nn.Module] = {}
    if cfg.trains_dae:
        nets["dae"] = build_model("dae", dict(cfg.dae_overrides), preset=preset)
    if cfg.trains_estimator:
        nets["estimator"] = build_model(cfg.model, estimator_config(cfg), preset=preset)
    return nets


def build_optimisers(cfg: TrainConfig, nets: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
    """The seed's optimisers: Adam for the estimator, AdamW for the DAE."""
    opts: dict[str, torch.optim.Optimizer] = {}
    if "estimator" in nets:
        opts["estimator"] = torch.optim.Adam(nets["estimator"].parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if "dae" in nets:
        opts["dae"] = torch.optim.AdamW(nets["dae"].parameters(), lr=cfg.dae_lr, weight_decay=cfg.dae_weight_decay)
    return opts


def base_lr(cfg: TrainConfig, name: str) -> float:
    return cfg.dae_lr if name == "dae" else cfg.lr

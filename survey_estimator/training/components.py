"""Build what a training worker needs from a :class:`TrainConfig`: networks, optimisers, samplers.

Shared by the Ray Train loop and by the driver that turns the final checkpoint into a bundle, so
both build exactly the same networks.
"""
from __future__ import annotations

import logging
import time

import torch
from torch import nn

from ..models import build_model
from .config import TrainConfig

log = logging.getLogger(__name__)


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


def fit_front_ends(nets: dict[str, nn.Module], sampler, seed: int) -> None:
    """Compute the fixed front end of every network that has one and has not got it yet (a fresh
    ``pca`` estimator; a restored one keeps its own), from its ``config.fit_spectra`` noiseless
    training spectra of ``sampler`` (a :class:`~survey_estimator.sampling.Sampler`) drawn with
    ``seed``: the same spectra, hence the same front end, on every rank."""
    for net in nets.values():
        module = getattr(net, "module", net)  # DDP-wrapped or not
        if not hasattr(module, "fit_front_end") or bool(module.fitted):
            continue
        n = module.config.fit_spectra
        t0 = time.perf_counter()
        noiseless = sampler.with_config(noiseless=True)
        g = torch.Generator(device=sampler.device).manual_seed(int(seed))
        flux = torch.cat([noiseless.sample(min(256, n - i), "train", generator=g, clean=False).x[:, :1]
                          for i in range(0, n, 256)])
        module.fit_front_end(flux)
        log.info("%s front end computed from %d noiseless training spectra in %.1f s", module.architecture, n,
                 time.perf_counter() - t0)


def base_lr(cfg: TrainConfig, name: str) -> float:
    return cfg.dae_lr if name == "dae" else cfg.lr

"""Training data for one worker: the grid sampler on the worker's device with the worker's own
random stream (the node split is the same on every worker: it depends on ``split_seed`` only)."""
from __future__ import annotations

import contextlib

import torch

from ..sampling import Batch, Sampler, SamplerConfig
from .config import TrainConfig

SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "test": "test"}


def sampler_config(cfg: TrainConfig, device: torch.device | str = "cpu") -> SamplerConfig:
    """The sampler settings of a training run (S/N range, node split seed, device)."""
    return SamplerConfig(snr_range=(cfg.snr_min, cfg.snr_max), seed=cfg.split_seed, device=str(device))


class WorkerSampler:
    """A :class:`Sampler` with this worker's generator; ``split`` accepts 'validation' for 'val'.
    ``clean``: draw the DAE target too (only a run with a DAE needs it; it doubles the
    normalisation's cost)."""

    def __init__(self, sampler: Sampler, seed: int, clean: bool = True):
        self.sampler = sampler
        self.clean = clean
        self.generator = torch.Generator(device=sampler.device).manual_seed(int(seed))

    def sample(self, batch_size: int, split: str = "train") -> Batch:
        return self.sampler.sample(batch_size, split=SPLIT_NAMES[split], generator=self.generator, clean=self.clean)

    @contextlib.contextmanager
    def fixed_seed(self, seed: int):
        """Draw from a generator seeded with ``seed`` inside the block (the same batches every time)."""
        saved = self.generator
        self.generator = torch.Generator(device=self.sampler.device).manual_seed(int(seed))
        try:
            yield self
        finally:
            self.generator = saved


def make_sampler(cfg: TrainConfig, device: torch.device, seed: int) -> WorkerSampler:
    """Load the grid onto ``device`` and wrap it with a generator seeded by ``seed``."""
    return WorkerSampler(Sampler(cfg.grid, sampler_config(cfg, device)), seed, clean=cfg.trains_dae)

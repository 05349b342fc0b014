"""Data echoing (Choi et al. 2019, arXiv:1907.05550) for estimators with a fixed front end.

On the 2-core CPU the sampler draws ~165-200 spectra/s per worker while the ``pca`` estimator's
trainable part (an MLP on its front end's O x K coefficients) steps at 8,000-16,000 samples/s
(docs/benchmarks.md; docs/training.md): each
freshly drawn batch is projected once (:meth:`PCAEstimator.features`) into a replay buffer of
``capacity`` samples, and each training step then takes ``echo`` optimiser steps on batches drawn
at random from the buffer. A sample stays in the buffer for ``capacity / batch_size`` fresh batches
and so is seen ~``echo`` times, each time in another batch. Validation and evaluation never use
the buffer: they see fresh spectra through the whole network.

The buffer lives in the worker's memory (capacity x (O x K + 4) floats: 65,536 x 516 x 4 bytes =
135 MB at the defaults) and is not checkpointed: a resumed run refills it from fresh batches.
"""
from __future__ import annotations

import torch


class FeatureBuffer:
    """A ring buffer of (features (N, F), labels (N, L)) pairs on one device."""

    def __init__(self, capacity: int, seed: int):
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.seed = int(seed)
        self.features: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.size = 0
        self._next = 0
        self.generator: torch.Generator | None = None

    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Append a batch (B, F) and (B, L), overwriting the oldest samples once full."""
        if self.features is None:
            dev = features.device
            self.features = torch.empty(self.capacity, features.shape[1], dtype=features.dtype, device=dev)
            self.labels = torch.empty(self.capacity, labels.shape[1], dtype=labels.dtype, device=dev)
            self.generator = torch.Generator(device=dev).manual_seed(self.seed)
        n = min(features.shape[0], self.capacity)
        idx = (self._next + torch.arange(n, device=features.device)) % self.capacity
        self.features[idx] = features[-n:].detach()
        self.labels[idx] = labels[-n:].detach()
        self._next = (self._next + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` pairs drawn uniformly (with replacement) from what the buffer holds."""
        if self.size == 0:
            raise RuntimeError("the feature buffer is empty: add a batch first")
        idx = torch.randint(self.size, (batch_size,), generator=self.generator, device=self.features.device)
        return self.features[idx], self.labels[idx]

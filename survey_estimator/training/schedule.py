"""The seed's learning-rate schedule: constant, then times ``factor`` for the last N epochs."""
from __future__ import annotations

import torch


def lr_factor(epoch: int, epochs: int, last_n: int, factor: float) -> float:
    """Multiplier of the base learning rate at 0-based ``epoch`` of ``epochs``.

    ``factor`` applies to the last ``last_n`` epochs (``last_n`` = 0 disables it), but never to more
    than the second half of the run, so a short run (a test, a demo) still trains at the base rate.
    """
    if last_n <= 0:
        return 1.0
    start = max(epochs - last_n, (epochs + 1) // 2)
    return factor if epoch >= start else 1.0


def set_epoch_lr(optimizer: torch.optim.Optimizer, base_lr: float, epoch: int, epochs: int, last_n: int, factor: float) -> float:
    """Set every param group's learning rate for ``epoch``; returns it. Stateless, so a resumed run
    (even one with more epochs than first planned) gets the right rate."""
    lr = base_lr * lr_factor(epoch, epochs, last_n, factor)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr

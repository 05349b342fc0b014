"""Train / validation / test splits by grid NODE, so the test set holds spectra never seen.

Design (deterministic, documented in the README of the sampler):

* Each valid node gets a rank from a seeded hash of its key (``sha256(seed:key)``), so a node's
  fate does not depend on the order nodes were built in.
* In rank order, a node is HELD OUT (to test first, then validation, until each reaches its
  fraction of the valid nodes) when (a) on at least one axis both neighbours have spectra, and
  (b) no other held-out node lies in its 3x3x3 neighbourhood. Held-out nodes are therefore
  isolated: every training cell has at most one held-out corner.
* Training never sees a held-out spectrum: in the training view of the grid each held-out node's
  row is replaced by a FILL, the mean over the qualifying axes of the linear interpolation between
  its two neighbours on that axis (i.e. the grid locally coarsened to twice the step). Training
  labels are drawn uniformly over all sampleable cells of that view, so coverage is not lost.
* Validation and test samples are drawn AT their held-out nodes, with the exact synthetic
  spectrum, continuous v sin i, noise, RV and blaze: labels the network has only seen through
  interpolated neighbours.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..synth.store import node_key

SPLITS = ("train", "val", "test")
TRAIN, VAL, TEST, MISSING = 0, 1, 2, -1


@dataclass(frozen=True)
class NodeSplit:
    """Split of the grid's nodes.

    Attributes:
        assignment: int8 (nT, nG, nM): -1 no spectrum, 0 train, 1 validation, 2 test.
        seed: the hash seed.
    """

    assignment: np.ndarray
    seed: int

    def nodes(self, split: str) -> np.ndarray:
        """(n, 3) int64 node indices of ``split`` ('train', 'val' or 'test')."""
        return np.argwhere(self.assignment == SPLITS.index(split))

    @property
    def held_out(self) -> np.ndarray:
        """(n, 3) indices of the validation and test nodes."""
        return np.argwhere((self.assignment == VAL) | (self.assignment == TEST))

    def records(self, axes) -> list[dict]:
        """One dict (teff, logg, mh, split) per node with a spectrum."""
        return [dict(teff=float(axes[0][i]), logg=float(axes[1][j]), mh=float(axes[2][k]), split=SPLITS[int(a)])
                for (i, j, k), a in np.ndenumerate(self.assignment) if a >= 0]

    def counts(self) -> dict[str, int]:
        return {s: int((self.assignment == i).sum()) for i, s in enumerate(SPLITS)}


def _rank(axes, idx: tuple[int, int, int], seed: int) -> str:
    key = node_key(axes[0][idx[0]], axes[1][idx[1]], axes[2][idx[2]])
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def fill_axes(valid: np.ndarray, idx: tuple[int, int, int]) -> list[int]:
    """Axes along which both neighbours of node ``idx`` are valid (so it can be filled)."""
    out = []
    for a in range(3):
        lo, hi = list(idx), list(idx)
        lo[a] -= 1
        hi[a] += 1
        if lo[a] >= 0 and hi[a] < valid.shape[a] and valid[tuple(lo)] and valid[tuple(hi)]:
            out.append(a)
    return out


def split_nodes(valid: np.ndarray, axes, val_fraction: float = 0.05, test_fraction: float = 0.05, seed: int = 0) -> NodeSplit:
    """Assign the valid nodes to train / validation / test (see the module docstring).

    Args:
        valid: bool (nT, nG, nM), True where the node has a spectrum.
        axes: the node values of the three axes (for the node keys that seed the hash).
        val_fraction, test_fraction: wanted fractions of the valid nodes (at least one node each
            when > 0 and an eligible node exists; fewer when isolation allows no more).
    """
    valid = np.asarray(valid, dtype=bool)
    n_valid = int(valid.sum())
    want = {TEST: _target(test_fraction, n_valid), VAL: _target(val_fraction, n_valid)}
    assignment = np.where(valid, TRAIN, MISSING).astype(np.int8)
    order = sorted((tuple(int(i) for i in idx) for idx in np.argwhere(valid)), key=lambda i: _rank(axes, i, seed))
    got = {TEST: 0, VAL: 0}
    for idx in order:
        todo = [s for s in (TEST, VAL) if got[s] < want[s]]
        if not todo:
            break
        if not fill_axes(valid, idx):
            continue
        box = tuple(slice(max(0, i - 1), i + 2) for i in idx)
        if ((assignment[box] == VAL) | (assignment[box] == TEST)).any():
            continue
        assignment[idx] = todo[0]
        got[todo[0]] += 1
    return NodeSplit(assignment, seed)


def _target(fraction: float, n: int) -> int:
    return 0 if fraction <= 0 else max(1, int(round(fraction * n)))


def training_fills(flux_of, valid: np.ndarray, split: NodeSplit) -> tuple[np.ndarray, np.ndarray]:
    """Replacement spectra for the held-out nodes in the training view.

    Args:
        flux_of: callable (i, j, k) -> (L,) float32 spectrum of a valid node.
        valid: bool (nT, nG, nM).
    Returns:
        (node indices (E, 3) int64, fills (E, L) float32): the mean over :func:`fill_axes` of the
        average of the node's two neighbours on each axis. Held-out nodes are isolated, so no
        fill uses another held-out node.
    """
    held = split.held_out
    fills = []
    for idx in map(tuple, held):
        parts = []
        for a in fill_axes(valid, idx):
            lo, hi = list(idx), list(idx)
            lo[a] -= 1
            hi[a] += 1
            if split.assignment[tuple(lo)] != TRAIN or split.assignment[tuple(hi)] != TRAIN:
                raise AssertionError(f"held-out node {idx} has a held-out neighbour")
            parts.append(0.5 * (flux_of(*lo).astype(np.float64) + flux_of(*hi)))
        fills.append(np.mean(parts, axis=0).astype(np.float32))
    L = 0 if not fills else fills[0].size
    return held.astype(np.int64), np.asarray(fills, dtype=np.float32).reshape(len(fills), L)


"""A grid store packed into one compressed file: the fit's grid, shippable with the package.

``pack_grid`` writes the 'ok' nodes of a store as float16 flux (continuum-normalised values in
[0, 1.1] keep ~3e-4 absolute precision: the packed grid reproduces the store to ~1.4e-4 rms,
checked by :func:`pack_grid` itself) with the wavelengths, node labels and the store's manifest,
into an ``.npz`` (numpy's zip, deflated). ``load_packed`` gives the same :class:`DenseGrid` as
:meth:`GridStore.load_dense`, so the forward model is built identically from either.

    python -m survey_estimator.synth.packed STORE_URI OUT.npz
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

from ..labels import GRID_AXES
from .store import DenseGrid, GridStore

log = logging.getLogger(__name__)

PACKED_FORMAT = "survey-estimator-packed-grid/1"
MAX_PACKING_RMS = 1e-3
"""The packed flux must reproduce the store to this rms (relative to the continuum)."""


def pack_grid(store_uri: str, out: str | Path) -> dict:
    """Pack the 'ok' nodes of the store at ``store_uri`` into ``out`` (.npz); returns a summary
    with the packing error. Raises ValueError if that error exceeds :data:`MAX_PACKING_RMS`."""
    store = GridStore(store_uri)
    dense = store.load_dense()
    idx = np.argwhere(dense.valid)
    flux = dense.flux[dense.valid]  # (N, L) float32
    packed = flux.astype(np.float16)
    rms = float(np.sqrt(np.mean((packed.astype(np.float32) - flux) ** 2)))
    if rms > MAX_PACKING_RMS:
        raise ValueError(f"float16 packing error {rms:.2e} rms exceeds {MAX_PACKING_RMS:g}")
    labels = np.column_stack([dense.axes[a][idx[:, a]] for a in range(3)])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, flux=packed, wave=dense.wave, labels=labels,
                        manifest=np.array(json.dumps({**store.manifest, "packed_format": PACKED_FORMAT})))
    summary = {"grid_id": dense.grid_id, "nodes": int(len(flux)), "rms": rms, "bytes": out.stat().st_size}
    log.info("packed grid %s: %d nodes, %.2e rms, %.1f MB", dense.grid_id, len(flux), rms, summary["bytes"] / 1e6)
    return summary


def packed_manifest(path: str | Path) -> dict:
    """The store manifest saved in a packed grid (reads only that member)."""
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["manifest"]))


def load_packed(path: str | Path) -> DenseGrid:
    """The :class:`DenseGrid` of a packed grid (flux back to float32)."""
    with np.load(path, allow_pickle=False) as z:
        manifest = json.loads(str(z["manifest"]))
        if manifest.get("packed_format") != PACKED_FORMAT:
            raise ValueError(f"{path} is not a {PACKED_FORMAT} file")
        flux16, wave, labels = z["flux"], z["wave"], z["labels"]
    axes = []
    for a, ax in enumerate(GRID_AXES):
        vals = ax.values
        axes.append(vals[(vals >= labels[:, a].min() - 1e-9) & (vals <= labels[:, a].max() + 1e-9)])
    flux = np.full((*(len(a) for a in axes), wave.size), np.nan, dtype=np.float32)
    valid = np.zeros(flux.shape[:3], dtype=bool)
    for row, lab in zip(flux16, labels):
        i = tuple(int(np.argmin(np.abs(axes[a] - lab[a]))) for a in range(3))
        flux[i] = row
        valid[i] = True
    from .store import grid_id

    return DenseGrid(flux, valid, tuple(axes), wave, grid_id(manifest))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(pack_grid(sys.argv[1], sys.argv[2]))

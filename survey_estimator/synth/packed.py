"""A grid store packed into one compressed file: the fit's grid, shippable with the package, and a
denser one to carry to a machine without the store (a lent GPU node).

``pack_grid`` writes the 'ok' nodes of a store with the wavelengths, node labels and the store's
manifest into an ``.npz``, in one of two encodings of the continuum-normalised flux:

- ``survey-estimator-packed-grid/1`` (default): float16 (values in [0, 1.1] keep ~3e-4 absolute
  precision: ~1.4e-4 rms against the store), numpy's deflate. 44.7 kB per node of 44,023 px.
- ``survey-estimator-packed-grid/2`` (``step``): fixed point (flux rounded to multiples of
  ``step``, e.g. 2^-11 for float16's precision near the continuum; rms error step / sqrt(12)),
  differenced along wavelength, byte-planes split, lzma: ~22 kB per node at 2^-11.

:func:`pack_grid` checks the error against the store itself. ``load_packed`` gives the same
:class:`DenseGrid` as :meth:`GridStore.load_dense` from either, so the forward model is built
identically from a store or a packed file.

    python -m survey_estimator.synth.packed STORE_URI OUT.npz [STEP]
"""
from __future__ import annotations

import json
import logging
import lzma
import sys
from pathlib import Path

import numpy as np

from ..labels import GRID_AXES
from .store import DenseGrid, GridStore

log = logging.getLogger(__name__)

PACKED_FORMAT = "survey-estimator-packed-grid/1"
COMPACT_FORMAT = "survey-estimator-packed-grid/2"
MAX_PACKING_RMS = 1e-3
"""The packed flux must reproduce the store to this rms (relative to the continuum)."""


def pack_grid(store_uri: str, out: str | Path, step: float | None = None) -> dict:
    """Pack the 'ok' nodes of the store at ``store_uri`` into ``out`` (.npz): float16 (format 1),
    or with ``step`` fixed point and lzma (format 2, see the module doc). Returns a summary
    with the packing error. Raises ValueError if that error exceeds :data:`MAX_PACKING_RMS`."""
    store = GridStore(store_uri)
    dense = store.load_dense()
    idx = np.argwhere(dense.valid)
    flux = dense.flux[dense.valid]  # (N, L) float32
    if step is None:
        members, fmt = {"flux": flux.astype(np.float16)}, PACKED_FORMAT
    else:
        members, fmt = {"flux_lzma": _encode(flux, step), "flux_shape": np.array(flux.shape), "flux_step": np.array(step)}, COMPACT_FORMAT
    decoded = _decode(members)
    rms = float(np.sqrt(np.mean((decoded - flux) ** 2)))
    if rms > MAX_PACKING_RMS:
        raise ValueError(f"packing error {rms:.2e} rms exceeds {MAX_PACKING_RMS:g}")
    labels = np.column_stack([dense.axes[a][idx[:, a]] for a in range(3)])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save = np.savez_compressed if fmt == PACKED_FORMAT else np.savez  # format 2 is lzma already
    save(out, wave=dense.wave, labels=labels, manifest=np.array(json.dumps({**store.manifest, "packed_format": fmt})), **members)
    summary = {"grid_id": dense.grid_id, "format": fmt, "nodes": int(len(flux)), "rms": rms, "bytes": out.stat().st_size}
    log.info("packed grid %s (%s): %d nodes, %.2e rms, %.1f MB", dense.grid_id, fmt, len(flux), rms, summary["bytes"] / 1e6)
    return summary


def _encode(flux: np.ndarray, step: float) -> np.ndarray:
    """(N, L) float flux -> lzma bytes (uint8) of its fixed-point values differenced along L, as
    two byte planes (low bytes, then high bytes: the high ones are nearly all 0 or 255)."""
    q = np.round(flux / step).astype(np.int64)
    if q.min() < -(2**15) or q.max() >= 2**15:
        raise ValueError(f"flux {flux.min():.3g}..{flux.max():.3g} does not fit 16 bits at step {step:g}")
    delta = np.diff(q, axis=1, prepend=0).astype(np.int16)
    planes = delta.view(np.uint8).reshape(-1, 2).T.copy()
    return np.frombuffer(lzma.compress(planes.tobytes(), preset=6), dtype=np.uint8)


def _decode(members) -> np.ndarray:
    """The (N, L) float32 flux of either format's members (a dict or an open npz)."""
    if "flux" in members:
        return np.asarray(members["flux"]).astype(np.float32)
    shape = tuple(int(v) for v in members["flux_shape"])
    planes = np.frombuffer(lzma.decompress(np.asarray(members["flux_lzma"]).tobytes()), dtype=np.uint8).reshape(2, -1)
    delta = planes.T.copy().view(np.int16).reshape(shape)
    return (np.cumsum(delta, axis=1, dtype=np.int64) * float(members["flux_step"])).astype(np.float32)


def packed_manifest(path: str | Path) -> dict:
    """The store manifest saved in a packed grid (reads only that member)."""
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["manifest"]))


def packed_labels(path: str | Path) -> np.ndarray:
    """(N, 3) Teff, log g, [M/H] of the nodes in a packed grid (reads only that member)."""
    with np.load(path, allow_pickle=False) as z:
        return z["labels"]


def load_packed(path: str | Path) -> DenseGrid:
    """The :class:`DenseGrid` of a packed grid (flux back to float32)."""
    with np.load(path, allow_pickle=False) as z:
        manifest = json.loads(str(z["manifest"]))
        if manifest.get("packed_format") not in (PACKED_FORMAT, COMPACT_FORMAT):
            raise ValueError(f"{path} is not a {PACKED_FORMAT} or {COMPACT_FORMAT} file")
        rows, wave, labels = _decode(z), z["wave"], z["labels"]
    axes = []
    for a, ax in enumerate(GRID_AXES):
        vals = ax.values
        axes.append(vals[(vals >= labels[:, a].min() - 1e-9) & (vals <= labels[:, a].max() + 1e-9)])
    flux = np.full((*(len(a) for a in axes), wave.size), np.nan, dtype=np.float32)
    valid = np.zeros(flux.shape[:3], dtype=bool)
    for row, lab in zip(rows, labels):
        i = tuple(int(np.argmin(np.abs(axes[a] - lab[a]))) for a in range(3))
        flux[i] = row
        valid[i] = True
    from .store import grid_id

    return DenseGrid(flux, valid, tuple(axes), wave, grid_id(manifest))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(pack_grid(sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else None))

"""The grid store: synthetic spectra at v sin i = 0 on (Teff, log g, [M/H]) nodes.

Layout under a root URI (a local directory or ``s3://bucket/prefix``)::

    manifest.json     physics settings and provenance (see :class:`GridStore`), the grid id
    wave.npy          float64 (L,) air wavelengths in Angstrom, uniform in log(lambda)
    nodes/<key>.npy   float32 (L,) continuum-normalised flux of one node (key: :func:`node_key`)
    nodes/<key>.json  per-node record: labels, status, seconds, reason
    nodes.parquet     the node table, written by :meth:`GridStore.finalise`:
                      teff, logg, mh, key, status ('ok' | 'missing' | 'failed'), reason, seconds

A node is finished when its ``.json`` record exists (written after the spectrum), which is what
makes a rebuild resumable. 'missing' marks nodes without a model atmosphere (never faked).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..labels import GRID_AXES
from ..layout import C_KMS
from ..storage import Location, StorageError, resolve

FORMAT = "survey-estimator-grid/1"
PHYSICS_KEYS = ("backend", "wave", "resolution", "vmic_kms", "molecules", "line_lists", "atmospheres")
"""Manifest entries that define the physics of a grid; the grid id is their hash. The numerical
accuracy settings (``synthesis_settings``, also in every node record) are deliberately not among
them: settings are only changed after they reproduce the reference to <= 0.2 % rms (docs/grid.md)."""
UNRECORDED_SETTINGS = "unrecorded: SME defaults (accrt 1e-4, accwi 3e-3, 7 mu, adaptive grid)"
"""What a store or node without a ``synthesis_settings`` entry was built with (before 2026-12-03)."""


def node_key(teff: float, logg: float, mh: float) -> str:
    """File-name key of a node, e.g. ``t05750_g+4.5_m-0.5``."""
    return f"t{teff:05.0f}_g{logg:+.1f}_m{mh:+.1f}"


def log_wave_grid(start: float, stop: float, velocity_step_kms: float) -> np.ndarray:
    """Wavelengths (A) uniform in log(lambda) with the given velocity step, covering [start, stop]."""
    dlog = velocity_step_kms / C_KMS
    n = int(np.ceil(np.log(stop / start) / dlog)) + 1
    return start * np.exp(dlog * np.arange(n))


def grid_id(manifest: dict) -> str:
    """Stable 12-hex id of a grid's physics (same settings -> same id, whatever the node ranges)."""
    blob = json.dumps({k: manifest.get(k) for k in PHYSICS_KEYS}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class DenseGrid:
    """The grid as one array for interpolation.

    Attributes:
        flux: float32 (nT, nG, nM, L); NaN at nodes that are not 'ok'.
        valid: bool (nT, nG, nM), True where the node has a spectrum.
        axes: the three node-value arrays (Teff K, log g dex, [M/H] dex), float64.
        wave: float64 (L,) Angstrom, air, log-uniform.
        grid_id: the store's grid id.
    """

    flux: np.ndarray
    valid: np.ndarray
    axes: tuple[np.ndarray, np.ndarray, np.ndarray]
    wave: np.ndarray
    grid_id: str

    def label_range(self) -> dict[str, list[float]]:
        """{"teff": [lo, hi], "logg": [...], "mh": [...]}: the span of the nodes with a spectrum."""
        idx = np.argwhere(self.valid)
        return {n: [float(ax[idx[:, a]].min()), float(ax[idx[:, a]].max())]
                for a, (n, ax) in enumerate(zip(("teff", "logg", "mh"), self.axes))}


class GridStore:
    """Read and write a grid store at ``uri`` (local directory or s3://)."""

    def __init__(self, uri: str):
        self.uri = str(uri)
        self.root: Location = resolve(uri)

    # -- creation ---------------------------------------------------------------------------
    @classmethod
    def create(cls, uri: str, manifest: dict, wave: np.ndarray) -> "GridStore":
        """Create a store, or reopen one with the same physics (a resumed build).

        Raises StorageError when ``uri`` holds a grid with other physics settings.
        """
        store = cls(uri)
        manifest = dict(manifest, format=FORMAT, grid_id=grid_id(manifest))
        mloc = store.root.join("manifest.json")
        if mloc.exists():
            old = mloc.read_json()
            if old.get("grid_id") != manifest["grid_id"]:
                raise StorageError(
                    f"{uri} already holds grid {old.get('grid_id')} with other settings; "
                    f"choose another --out or the same options (this build is {manifest['grid_id']})"
                )
            new_settings = manifest.get("synthesis_settings")
            if new_settings is not None and old.get("synthesis_settings") != new_settings:
                # same physics and grid id, other accuracy settings (verified to <= 0.2 % rms, see
                # docs/grid.md): the manifest names the current ones, the history the earlier ones;
                # every node record says which settings made it
                history = list(old.get("synthesis_settings_history", []))
                history.append({"synthesis_settings": old.get("synthesis_settings", UNRECORDED_SETTINGS),
                                "until": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
                mloc.write_json(dict(old, synthesis_settings=new_settings, synthesis_settings_history=history))
            return store
        store.root.join("wave.npy").write_npy(np.asarray(wave, dtype=np.float64))
        mloc.write_json(dict(manifest, created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
        return store

    # -- reading ----------------------------------------------------------------------------
    @property
    def manifest(self) -> dict:
        loc = self.root.join("manifest.json")
        if not loc.exists():
            raise StorageError(f"no grid at {self.uri} (manifest.json missing): build it with `survey-estimator build-grid`")
        return loc.read_json()

    @property
    def grid_id(self) -> str:
        return self.manifest["grid_id"]

    def wave(self) -> np.ndarray:
        return self.root.join("wave.npy").read_npy()

    def finished_keys(self) -> set[str]:
        """Keys of nodes with a record (ok, missing or failed)."""
        files = self.root.join("nodes").list_files(recursive=False)
        return {f.base_name[:-5] for f in files if f.base_name.endswith(".json")}

    def read_record(self, key: str) -> dict:
        return self.root.join("nodes", f"{key}.json").read_json()

    def read_node(self, key: str) -> np.ndarray:
        return self.root.join("nodes", f"{key}.npy").read_npy()

    # -- writing ----------------------------------------------------------------------------
    def write_node(self, teff: float, logg: float, mh: float, flux: np.ndarray | None, status: str = "ok",
                   reason: str = "", seconds: float = 0.0, **extra) -> str:
        """Store one node: the spectrum first (when given), then its record (``extra`` entries,
        e.g. ``cpu_seconds``, ``synthesis_settings``, are added to it). Returns the key."""
        key = node_key(teff, logg, mh)
        if flux is not None:
            flux = np.asarray(flux, dtype=np.float32)
            if flux.shape != self.wave().shape:
                raise ValueError(f"node {key}: flux shape {flux.shape} != wave {self.wave().shape}")
            self.root.join("nodes", f"{key}.npy").write_npy(flux)
        record = dict(teff=float(teff), logg=float(logg), mh=float(mh), key=key, status=status,
                      reason=reason, seconds=float(seconds), **extra)
        self.root.join("nodes", f"{key}.json").write_json(record)
        return key

    def finalise(self) -> pa.Table:
        """Collect the per-node records into ``nodes.parquet`` (sorted by Teff, log g, [M/H])."""
        records = [self.read_record(k) for k in sorted(self.finished_keys())]
        records.sort(key=lambda r: (r["teff"], r["logg"], r["mh"]))
        cols = ("teff", "logg", "mh", "key", "status", "reason", "seconds")
        table = pa.table({c: [r[c] for r in records] for c in cols})
        import io

        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.root.join("nodes.parquet").write_bytes(buf.getvalue())
        return table

    def node_table(self) -> pa.Table:
        loc = self.root.join("nodes.parquet")
        if not loc.exists():
            raise StorageError(f"grid at {self.uri} is unfinished (nodes.parquet missing): rerun build-grid to finish it")
        import io

        return pq.read_table(io.BytesIO(loc.read_bytes()))

    def label_range(self) -> dict[str, list[float]]:
        """{"teff": [lo, hi], "logg": [...], "mh": [...]}: the span of the finished ('ok') nodes."""
        ok = [r for r in self.node_table().to_pylist() if r["status"] == "ok"]
        if not ok:
            raise StorageError(f"grid at {self.uri} holds no finished spectra")
        return {n: [min(r[n] for r in ok), max(r[n] for r in ok)] for n in ("teff", "logg", "mh")}

    def load_dense(self) -> DenseGrid:
        """All 'ok' nodes as a dense (nT, nG, nM, L) array on the axes the nodes span."""
        table = self.node_table().to_pylist()
        ok = [r for r in table if r["status"] == "ok"]
        if not ok:
            raise StorageError(f"grid at {self.uri} holds no finished spectra")
        axes = []
        for ax, name in zip(GRID_AXES, ("teff", "logg", "mh")):
            lo, hi = min(r[name] for r in table), max(r[name] for r in table)
            vals = ax.values
            axes.append(vals[(vals >= lo - 1e-9) & (vals <= hi + 1e-9)])
        wave = self.wave()
        flux = np.full((len(axes[0]), len(axes[1]), len(axes[2]), wave.size), np.nan, dtype=np.float32)
        valid = np.zeros(flux.shape[:3], dtype=bool)
        for r in ok:
            i = tuple(int(np.argmin(np.abs(a - r[n]))) for a, n in zip(axes, ("teff", "logg", "mh")))
            flux[i] = self.read_node(r["key"])
            valid[i] = True
        return DenseGrid(flux, valid, tuple(axes), wave, self.grid_id)


def is_packed(uri) -> bool:
    """True for a packed grid file (:mod:`.packed`, ``.npz``), False for a store URI."""
    return str(uri).endswith(".npz")


def open_grid(grid: "DenseGrid | GridStore | str | os.PathLike") -> DenseGrid:
    """The :class:`DenseGrid` of a store URI (local or s3://), a packed ``.npz``, a
    :class:`GridStore`, or a DenseGrid (returned as is): the one way every consumer loads a grid."""
    if isinstance(grid, DenseGrid):
        return grid
    if isinstance(grid, GridStore):
        return grid.load_dense()
    if is_packed(grid):
        from .packed import load_packed

        return load_packed(grid)
    return GridStore(str(grid)).load_dense()


def grid_identity(uri: str) -> tuple[str, dict[str, list[float]]]:
    """(grid id, label range of its nodes) of a store URI or packed ``.npz``, without loading spectra."""
    if is_packed(uri):
        from .packed import packed_labels, packed_manifest

        labels = packed_labels(uri)
        return grid_id(packed_manifest(uri)), {n: [float(labels[:, a].min()), float(labels[:, a].max())]
                                               for a, n in enumerate(("teff", "logg", "mh"))}
    store = GridStore(uri)
    return store.grid_id, store.label_range()

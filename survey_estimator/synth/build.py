"""The grid-build job: synthesise every (Teff, log g, [M/H]) node of a sub-grid into a GridStore.

Flow (:func:`build_grid`):

1. the backend's physics plus provenance (code versions, line lists with sha256, vmic,
   molecules, resolution, wave grid) become the manifest; :meth:`GridStore.create` refuses a
   store that holds a grid with other physics;
2. nodes of the requested ranges are enumerated; those already finished ('ok' or 'missing') are
   skipped, so a rerun resumes an interrupted build ('failed' nodes are tried again);
3. the rest are cut into shards of a few nodes, each shard one Ray task (each worker process
   builds its backend, i.e. loads atmospheres and line lists, once and reuses it);
4. as shards finish (tqdm progress bar) the driver writes their nodes to the store: spectra for
   'ok', a record with the reason for 'missing' (no model atmosphere) and 'failed';
5. :meth:`GridStore.finalise` writes the node table.

``use_ray=False`` runs the same shards in-process (tiny test grids, debugging).
"""
from __future__ import annotations

import logging
import platform
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..labels import GRID_AXES, LOGG, MH, TEFF, Axis
from ..layout import LAYOUT_VERSION
from ..ray_env import ensure_ray  # one Ray start-up policy for every job
from .backend import Backend, BackendConfig, MissingAtmosphere, make_backend
from .store import GridStore, node_key

log = logging.getLogger(__name__)

Node = tuple[float, float, float]
"""(Teff K, log g dex, [M/H] dex)."""


@dataclass(frozen=True)
class GridRanges:
    """Inclusive label ranges selecting a sub-grid of the Table-1 axes."""

    teff: tuple[float, float] = (TEFF.start, TEFF.stop)
    logg: tuple[float, float] = (LOGG.start, LOGG.stop)
    mh: tuple[float, float] = (MH.start, MH.stop)

    def nodes(self) -> list[Node]:
        """The grid nodes inside the ranges, ordered by Teff, log g, [M/H]."""
        vals = [_axis_values(ax, rng) for ax, rng in zip(GRID_AXES, (self.teff, self.logg, self.mh))]
        return [(float(t), float(g), float(m)) for t in vals[0] for g in vals[1] for m in vals[2]]


def _axis_values(axis: Axis, rng: tuple[float, float]) -> np.ndarray:
    lo, hi = float(min(rng)), float(max(rng))
    v = axis.values[(axis.values >= lo - 1e-6) & (axis.values <= hi + 1e-6)]
    if v.size == 0:
        raise ValueError(f"{axis.name} range {lo:g}..{hi:g} holds no node of {axis.start:g}..{axis.stop:g} step {axis.step:g}")
    return v


@dataclass
class BuildConfig:
    """A grid build.

    Attributes:
        out: store URI (local directory or s3://bucket/prefix).
        backend: which synthesis code and physics settings.
        ranges: the sub-grid to build.
        nodes_per_task: nodes per Ray task (a shard).
        num_cpus: at most this many tasks run at once; also the CPUs of a local Ray cluster when
            this build starts one. None: all the cluster's CPUs.
        use_ray: False runs the shards in this process.
        retry_failed: rerun nodes recorded as 'failed' (default) instead of skipping them.
        progress: show a tqdm progress bar.
    """

    out: str
    backend: BackendConfig
    ranges: GridRanges = field(default_factory=GridRanges)
    nodes_per_task: int = 3
    num_cpus: int | None = None
    use_ray: bool = True
    retry_failed: bool = True
    progress: bool = True


@dataclass
class NodeResult:
    """The outcome of one node: flux float32 (L,) when status is 'ok', else None."""

    teff: float
    logg: float
    mh: float
    status: str  # 'ok' | 'missing' | 'failed'
    flux: np.ndarray | None = None
    reason: str = ""
    seconds: float = 0.0  # wall-clock seconds in the worker
    cpu_seconds: float = 0.0  # CPU seconds of the worker process (contention-free cost)

    @property
    def key(self) -> str:
        return node_key(self.teff, self.logg, self.mh)


@dataclass
class BuildReport:
    """What a build did. ``synthesised`` lists the node keys computed by this run."""

    uri: str
    grid_id: str
    n_nodes: int
    skipped: int
    ok: int = 0
    missing: int = 0
    failed: int = 0
    synthesised: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    node_seconds: list[float] = field(default_factory=list)
    node_cpu_seconds: list[float] = field(default_factory=list)

    @property
    def seconds_per_node(self) -> float:
        """Mean wall time of one 'ok' node in its worker (s; includes CPU contention)."""
        return float(np.mean(self.node_seconds)) if self.node_seconds else float("nan")

    @property
    def cpu_seconds_per_node(self) -> float:
        """Mean CPU time of one 'ok' node (s): the cost per node per core on an idle core."""
        return float(np.mean(self.node_cpu_seconds)) if self.node_cpu_seconds else float("nan")

    def summary(self) -> str:
        return (
            f"grid {self.grid_id} at {self.uri}: {self.n_nodes} nodes, {self.skipped} already done, "
            f"{self.ok} ok, {self.missing} missing, {self.failed} failed in {self.wall_seconds:.1f} s "
            f"(per node: {self.seconds_per_node:.2f} s wall, {self.cpu_seconds_per_node:.2f} s CPU on one core)"
        )


def code_versions() -> dict:
    """Versions of the code that shapes the spectra."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("survey-estimator", "numpy", "scipy", "pysme-astro", "roland", "ray"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def make_manifest(backend: Backend) -> dict:
    """Physics (hashed into the grid id) plus provenance (not hashed)."""
    return dict(
        backend.physics(),
        synthesis_settings=backend.config.synthesis.describe(),  # not hashed into the grid id
        code_versions=code_versions(),
        layout_version=LAYOUT_VERSION,
        vsini_kms=0.0,
        normalisation="continuum-normalised by the synthesis code",
        built_by=f"survey-estimator build-grid ({platform.node()}, {sys.platform})",
    )


# -- worker side ---------------------------------------------------------------------------------
@lru_cache(maxsize=2)
def _backend(config: BackendConfig) -> Backend:
    """One backend per worker process and config: sources are loaded once, reused by all shards."""
    return make_backend(config)


def synthesize_nodes(config: BackendConfig, nodes: list[Node], blobs: list | None = None) -> list[NodeResult]:
    """Synthesise a shard of nodes (runs in a Ray task or in-process); never raises per node.

    ``blobs`` is ``[{sha256: ObjectRef(bytes)}]`` (wrapped in a list so Ray does not fetch it)
    for sources that may be absent on a worker's machine; see :func:`.sources.materialise`.
    """
    if blobs:
        from .sources import materialise

        config = materialise(config, blobs[0])
    try:
        backend = _backend(config)
    except Exception as exc:  # sources unreadable etc.: every node of the shard fails with the reason
        reason = f"backend setup failed: {type(exc).__name__}: {exc}"
        log.error(reason)
        return [NodeResult(*n, status="failed", reason=reason) for n in nodes]
    out = []
    for teff, logg, mh in nodes:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            flux = backend.synthesize(teff, logg, mh)
            if not np.all(np.isfinite(flux)):
                raise ValueError(f"{int(np.sum(~np.isfinite(flux)))} non-finite flux values")
            out.append(NodeResult(teff, logg, mh, "ok", flux, seconds=time.perf_counter() - t0,
                                  cpu_seconds=time.process_time() - c0))
        except MissingAtmosphere as exc:
            out.append(NodeResult(teff, logg, mh, "missing", reason=str(exc)))
        except Exception as exc:  # noqa: BLE001 - recorded as the node's reason
            out.append(NodeResult(teff, logg, mh, "failed", reason=f"{type(exc).__name__}: {exc}",
                                  seconds=time.perf_counter() - t0))
    return out


# -- driver side ---------------------------------------------------------------------------------
def pending_nodes(store: GridStore, nodes: list[Node], retry_failed: bool = True) -> list[Node]:
    """Nodes without a final record in ``store`` ('failed' ones count as pending when retrying)."""
    done = store.finished_keys()
    if retry_failed:
        wanted = {node_key(*n) for n in nodes}
        done = {k for k in done if k not in wanted or store.read_record(k)["status"] != "failed"}
    return [n for n in nodes if node_key(*n) not in done]


def shards(nodes: list[Node], size: int) -> list[list[Node]]:
    """Cut nodes into shards of ``size`` (the last may be shorter)."""
    size = max(1, int(size))
    return [nodes[i : i + size] for i in range(0, len(nodes), size)]


def build_grid(config: BuildConfig) -> BuildReport:
    """Build (or resume) the grid described by ``config``; returns what this run did."""
    t_start = time.perf_counter()
    backend = make_backend(config.backend)  # validates the config and sources on the driver
    store = GridStore.create(config.out, make_manifest(backend), backend.wave)
    nodes = config.ranges.nodes()
    todo = pending_nodes(store, nodes, config.retry_failed)
    report = BuildReport(store.uri, store.grid_id, len(nodes), skipped=len(nodes) - len(todo))
    log.info("grid %s at %s: %d nodes, %d to synthesise with %s", store.grid_id, store.uri, len(nodes),
             len(todo), config.backend.name)
    if todo:
        work = shards(todo, config.nodes_per_task)
        results = _run_ray(config, work) if config.use_ray else (synthesize_nodes(config.backend, s) for s in work)
        bar = _progress(config, len(todo))
        settings = config.backend.synthesis.describe()
        for shard_results in results:
            for r in shard_results:
                extra = {}
                if r.status == "ok":
                    extra = dict(cpu_seconds=float(r.cpu_seconds), synthesis_settings=settings)
                store.write_node(r.teff, r.logg, r.mh, r.flux, status=r.status, reason=r.reason, seconds=r.seconds,
                                 **extra)
                report.synthesised.append(r.key)
                setattr(report, r.status, getattr(report, r.status) + 1)
                if r.status == "ok":
                    report.node_seconds.append(r.seconds)
                    report.node_cpu_seconds.append(r.cpu_seconds)
                    log.debug("node %s: %.1f s wall, %.1f s CPU", r.key, r.seconds, r.cpu_seconds)
                elif r.status == "failed":
                    log.warning("node %s failed: %s", r.key, r.reason)
            bar.update(len(shard_results))
            if report.node_cpu_seconds:
                log.info("%d/%d nodes done; mean per node %.1f s wall, %.1f s CPU", len(report.synthesised), len(todo),
                         report.seconds_per_node, report.cpu_seconds_per_node)
            bar.set_postfix(ok=report.ok, missing=report.missing, failed=report.failed)
        bar.close()
    store.finalise()
    report.wall_seconds = time.perf_counter() - t_start
    log.info(report.summary())
    return report


def _progress(config: BuildConfig, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="node", desc="build-grid", disable=not config.progress, smoothing=0.1, mininterval=5.0)


def _run_ray(config: BuildConfig, work: list[list[Node]]):
    """Yield shard results as Ray tasks finish, keeping at most ``num_cpus`` tasks in flight."""
    ray = ensure_ray(config.num_cpus)
    from .sources import blobs_for

    blobs = blobs_for(config.backend, ray)
    task = ray.remote(num_cpus=1, max_retries=1)(synthesize_nodes)
    limit = config.num_cpus or max(1, int(ray.cluster_resources().get("CPU", 1)))
    queue = list(work)
    inflight: dict = {}

    def submit():
        while queue and len(inflight) < limit:
            shard = queue.pop(0)
            inflight[task.remote(config.backend, shard, blobs)] = shard

    submit()
    while inflight:
        ready, _ = ray.wait(list(inflight), num_returns=1)
        ref = ready[0]
        shard = inflight.pop(ref)
        try:
            yield ray.get(ref)
        except Exception as exc:  # worker died, OOM, ...: the shard's nodes fail with the reason
            reason = f"task failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            yield [NodeResult(*n, status="failed", reason=reason) for n in shard]
        submit()

"""The nightly cataloguing run on Ray Data: list -> skip known -> read (CPU) -> estimate (actors) -> Parquet.

Order of work in :func:`run_catalogue`:

1. fail fast: resolve the model (registry or folder), list the archive (ETag and size), check
   the catalogue root is reachable; nothing is computed before all three succeed;
2. skip every (source_uri, etag) the catalogue already holds for this model version;
3. ``map_batches(read_batch)`` on CPU tasks: fetch with retries, read, preprocess; one bad file
   becomes an error row, never a failed block;
4. ``map_batches(Predictor, compute=ActorPoolStrategy(size=actors), num_gpus=..., num_cpus=
   fractional)``: the model is loaded once per actor; ``DataContext.wait_for_min_actors_s`` turns
   a GPU that never appears into an error instead of a hang;
5. the driver streams the (pixel-free, ~1 kB/row) result blocks and writes them Hive-partitioned
   by night into NEW files ``night=YYYY-MM-DD/run-<run id>-<n>.parquet``
   (:class:`~survey_estimator.catalogue.write.NightWriter`: one file per night and run): old files
   are never rewritten, so readers are safe during a run, and a rerun over the same inputs writes
   nothing at all.

Throughput on small machines (bench/catalogue.py): the read stage is the CPU-heavy one, so read
tasks reserve a fraction of a CPU chosen to let as many of them run as the cluster has CPUs next
to the model actors (a whole CPU each left only one read task running on 2 CPUs beside a 0.5-CPU
actor), files per read task grow with the work list, and no Ray write tasks compete for CPUs.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
import time
import uuid
from dataclasses import asdict, dataclass, field

import pyarrow.compute as pc

from ..ray_env import worker_env
from ..storage import StorageError, redact, resolve
from .inventory import check_writable, done_keys, list_archive, new_work, open_catalogue, select_nights
from ..models.resolve import ModelRef, resolve_model
from .read import ReadOptions, read_batch
from .schema import STATUS_OK
from .write import NightWriter

log = logging.getLogger(__name__)


class CatalogueError(RuntimeError):
    """The run cannot proceed (bad arguments, no GPU node in time, ...); the message says why."""


@dataclass(frozen=True)
class CatalogueConfig:
    """Everything one run needs. URIs are s3://bucket/prefix or local folders."""

    archive: str
    out: str
    model: str | None = None
    night: str | None = None
    since: str | None = None
    num_gpus: float = 0.0
    """GPUs per model actor (0: CPU actors)."""
    batch_size: int = 16
    """Spectra per model call."""
    actors: int = 1
    actor_cpus: float = 0.5
    """CPUs reserved per model actor (fractional so small machines keep CPUs for reading)."""
    read_batch_size: int | None = None
    """Files per read task (None: derived, see :func:`read_plan`)."""
    read_cpus: float | None = None
    """CPUs reserved per read task (None: derived, see :func:`read_plan`)."""
    rows_per_file: int = 10000
    """Catalogue rows per Parquet file and night (a run writes one file per night below this)."""
    actor_start_timeout_s: int = 600
    """How long to wait for the actor pool (e.g. a GPU node from the autoscaler) before failing."""
    use_dae: bool = True
    retries: int = 5
    fit: bool = True
    """Refine the network's estimate by the likelihood fit when a grid is reachable."""
    grid: str | None = None
    """Grid URI for the fit (default: the bundle's grid, else the shipped packed grid)."""


@dataclass
class RunSummary:
    """What a run did. ``written`` counts rows; ``files`` the Parquet files it created."""

    run_id: str
    model_name: str
    model_version: str
    listed: int = 0
    selected: int = 0
    skipped: int = 0
    processed: int = 0
    written: int = 0
    ok: int = 0
    errors: int = 0
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _check_date(name: str, value: str | None) -> None:
    if value is None:
        return
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        raise CatalogueError(f"--{name} must be YYYY-MM-DD, got {value!r}") from None


def ensure_ray() -> None:
    """Connect to Ray: the cluster of ``ray job submit`` / RAY_ADDRESS, else start a local one."""
    import ray

    if ray.is_initialized():
        return
    ray.init(runtime_env={"env_vars": worker_env()[0]}, log_to_driver=True)  # local workers inherit the rest


def read_plan(n_files: int, cluster_cpus: float, config: CatalogueConfig) -> tuple[int, float]:
    """(files per read task, CPUs reserved per read task) for ``n_files`` on ``cluster_cpus``.

    Files per task: ``config.read_batch_size``, else ceil(n_files / (8 x CPUs)) clamped to 4..16:
    at least eight tasks per CPU (a short tail when the last tasks finish) without a task per
    file or two (overhead). Each read task handles one input block of at most this many files.
    CPUs per task: ``config.read_cpus``, else what lets one read task per CPU run beside the model
    actors' reservations: (CPUs - actors x actor_cpus) / CPUs, at least 0.25 (on 2 CPUs with one
    0.5-CPU actor: 0.75, two read tasks; on large clusters close to 1).
    """
    cpus = max(1.0, float(cluster_cpus))
    batch = config.read_batch_size or min(16, max(4, math.ceil(n_files / (8 * cpus))))
    if config.read_cpus is not None:
        read_cpus = float(config.read_cpus)
    else:
        read_cpus = max(0.25, (cpus - config.actors * config.actor_cpus) / cpus)
    return int(batch), math.floor(read_cpus * 1000) / 1000  # rounded down: the last task must still fit


def prepare(config: CatalogueConfig) -> tuple[ModelRef, list, dict, RunSummary]:
    """Fail-fast checks and the work list: (model, files to process, blaze index, summary so far)."""
    _check_date("night", config.night)
    _check_date("since", config.since)
    if config.batch_size < 1 or config.actors < 1:
        raise CatalogueError("--batch-size and --actors must be at least 1")
    if (config.read_batch_size is not None and config.read_batch_size < 1) or config.rows_per_file < 1:
        raise CatalogueError("--read-batch-size and rows per file must be at least 1")
    if config.read_cpus is not None and not config.read_cpus > 0:
        raise CatalogueError("--read-cpus must be positive")
    ref = resolve_model(config.model)
    listing = list_archive(config.archive)
    check_writable(config.out)
    summary = RunSummary(run_id=dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8],
                         model_name=ref.name, model_version=ref.version)
    summary.listed = len(listing.files)
    selected = select_nights(listing.files, config.night, config.since)
    summary.selected = len(selected)
    todo = new_work(selected, done_keys(config.out, ref.version))
    summary.skipped = len(selected) - len(todo)
    log.info("model %s version %s; %d files listed, %d selected, %d already catalogued, %d to process",
             ref.name, ref.version, summary.listed, summary.selected, summary.skipped, len(todo))
    return ref, todo, listing.blaze, summary


def run_catalogue(config: CatalogueConfig) -> RunSummary:
    """Catalogue new files of ``config.archive`` into ``config.out``; returns a :class:`RunSummary`.

    Raises:
        StorageError: archive or catalogue storage unreachable (before any work).
        ModelNotFoundError: the model cannot be resolved (before any work).
        CatalogueError: bad arguments, or the actor pool did not start in time.
    """
    t0 = time.time()
    ref, todo, blaze, summary = prepare(config)
    if not todo:
        summary.seconds = time.time() - t0
        log.info("nothing new to catalogue")
        return summary

    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from .predict import FitOptions, Predictor

    ensure_ray()
    ctx = DataContext.get_current()
    ctx.wait_for_min_actors_s = _actor_wait_s(config, ray.cluster_resources())
    plain, secrets = worker_env()
    env = _op_runtime_env(plain)
    opts = ReadOptions(night=config.night, since=config.since, blaze=blaze, retries=config.retries, env=secrets)
    files_per_task, read_cpus = read_plan(len(todo), ray.cluster_resources().get("CPU", 1.0), config)
    n_blocks = max(1, math.ceil(len(todo) / files_per_task))
    log.info("read stage: %d tasks of <= %d files, %.3g CPU each; model: %d actor(s) x %.3g CPU, %.3g GPU",
             n_blocks, files_per_task, read_cpus, config.actors, config.actor_cpus, config.num_gpus)
    ds = ray.data.from_items([f.as_dict() for f in todo], override_num_blocks=n_blocks)
    # batch_size None: one task per input block (a batch size would merge blocks one file short of it)
    ds = ds.map_batches(read_batch, fn_kwargs={"opts": opts}, batch_size=None,
                        batch_format="numpy", num_cpus=read_cpus, **env)
    ds = ds.map_batches(Predictor, fn_constructor_kwargs={"ref": ref, "use_dae": config.use_dae, "env": secrets,
                                                              "fit": FitOptions(config.fit, config.grid)},
                        compute=ActorPoolStrategy(size=config.actors), batch_size=int(config.batch_size),
                        batch_format="numpy", num_gpus=config.num_gpus or None, num_cpus=config.actor_cpus, **env)
    writer = NightWriter(resolve(config.out), summary.run_id, config.rows_per_file)
    try:
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            writer.add(block)
        writer.close()
    except StorageError:
        raise
    except Exception as exc:
        _save_finished(writer)
        if isinstance(exc, ray.exceptions.GetTimeoutError) or "Timed out while starting actors" in str(exc):
            raise CatalogueError(
                f"the model actor pool ({config.actors} x {config.num_gpus or 0} GPU, {config.actor_cpus} CPU) "
                f"did not start within {config.actor_start_timeout_s} s: no node with those resources appeared"
            ) from None
        raise CatalogueError(f"catalogue run failed: {redact(str(exc))}") from None
    if log.isEnabledFor(logging.DEBUG):
        log.debug("Ray Data stats:\n%s", ds.stats())
    summary.processed = len(todo)
    _count_written(config.out, summary)
    summary.seconds = time.time() - t0
    log.info("run %s: wrote %d rows (%d ok, %d error) in %d files, %.1f s", summary.run_id, summary.written,
             summary.ok, summary.errors, len(summary.files), summary.seconds)
    return summary


def _actor_wait_s(config: CatalogueConfig, resources: dict) -> int:
    """``DataContext.wait_for_min_actors_s`` for this run.

    Ray Data blocks the whole pipeline (no read task starts) until the actor pool is up when this
    is positive, and fails after that many seconds: the fail-fast guard for GPU actors (or CPU
    actors larger than the cluster) that may never get a node. CPU actors that fit the cluster as
    it is now always start, so for them it is 0 (actors start while the first files are read,
    saving the actors' start-up time, seconds on small machines).
    """
    fits_now = not config.num_gpus and config.actors * config.actor_cpus <= float(resources.get("CPU", 0.0))
    return 0 if fits_now else max(1, int(config.actor_start_timeout_s))


def _op_runtime_env(plain: dict[str, str]) -> dict:
    """``runtime_env`` keyword for the stages: none when the job's runtime env already sets these
    (non-secret) variables, e.g. after :func:`ensure_ray`; a stage runtime env differing from the
    job's makes Ray start a separate set of worker processes (seconds of start-up on small machines)."""
    import ray

    job_vars = (ray.get_runtime_context().runtime_env or {}).get("env_vars") or {}
    if all(job_vars.get(k) == v for k, v in plain.items()):
        return {}
    return {"runtime_env": {"env_vars": plain}}


def _save_finished(writer: NightWriter) -> None:
    """After a failed run, write the rows already estimated (the next run skips them)."""
    try:
        writer.close()
    except Exception as exc:  # the run's own error is the one to report
        log.warning("could not save the rows finished before the failure: %s", redact(str(exc)))


def _count_written(out_uri: str, summary: RunSummary) -> None:
    """Fill ``written``/``ok``/``errors``/``files`` from the files this run created."""
    ds = open_catalogue(out_uri, name_prefix=f"run-{summary.run_id}-")
    if ds is None:
        return
    summary.files = [redact(f) for f in ds.files]
    status = ds.to_table(columns=["status"])["status"]
    summary.written = len(status)
    summary.ok = int(pc.sum(pc.equal(status, STATUS_OK)).as_py() or 0)
    summary.errors = summary.written - summary.ok


__all__ = ["CatalogueConfig", "CatalogueError", "RunSummary", "run_catalogue", "prepare", "read_plan", "worker_env",
           "StorageError"]

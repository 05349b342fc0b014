"""The nightly cataloguing run on Ray Data: list -> skip known -> read (CPU) -> estimate (actors) -> Parquet.

Order of work in :func:`run_catalogue`:

1. fail fast: resolve the model (registry or folder), list the archive (ETag and size), check
   the catalogue root is reachable; nothing is computed before all three succeed;
2. take the catalogue's lock (:mod:`~survey_estimator.catalogue.lock`: one run at a time), move
   damaged Parquet files aside, record the archive listing and the model's promotion
   (:mod:`~survey_estimator.catalogue.state`);
3. skip every (source_uri, etag) the catalogue already settles for this model version
   (:func:`~survey_estimator.catalogue.status.is_done`: transient errors are redone);
4. ``map_batches(read_batch)`` on CPU tasks (``max_retries`` bounded): fetch through the one
   retry layer, read, preprocess, each file inside its guard and deadline; one bad file becomes
   an error row with its retry class, never a failed block (Ray Data's per-operator resource
   reservation is off during the run: on a small node it kept one read task at a time);
5. the model (:attr:`CatalogueConfig.model_stage`): on CPU clusters inside the read tasks
   (:func:`~survey_estimator.catalogue.predict.read_and_estimate`, one model per worker process,
   the pixels never cross the object store); with GPUs ``map_batches(Predictor,
   compute=ActorPoolStrategy(size=actors), num_gpus=..., num_cpus=fractional)``, the model loaded
   once per actor, and ``DataContext.wait_for_min_actors_s`` turns a GPU that never appears into
   an error instead of a hang;
6. the driver streams the (pixel-free, ~1 kB/row) result blocks and writes them Hive-partitioned
   by night into NEW files ``night=YYYY-MM-DD/run-<run id>-<n>.parquet``
   (:class:`~survey_estimator.catalogue.write.NightWriter`), every ``flush_rows`` rows or
   ``flush_s`` seconds and when SIGTERM/SIGINT stops the run: old files are never rewritten, so
   readers are safe during a run, and a rerun over the same inputs writes nothing at all;
7. files of blocks that Ray lost (a worker died, e.g. killed for memory, past ``max_retries``)
   are counted and written as transient error rows; once transient errors pass
   ``transient_abort_count`` / ``transient_abort_rate`` (an outage) the run stops, saves what it
   has and raises :class:`CatalogueAborted` (exit status 3).

Throughput on small machines (bench/catalogue.py): the read stage is the CPU-heavy one, so read
tasks reserve a fraction of a CPU chosen to let as many of them run as the cluster has CPUs next
to any model actors (a whole CPU each left only one read task running on 2 CPUs beside a 0.5-CPU
actor), files per read task grow with the work list, and no Ray write tasks compete for CPUs.
On 2 CPUs the pipeline reaches 0.97 of the read stage's own rate with the model in the tasks,
0.76 with a CPU actor pool (its start and the pixels' trip through the object store).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import signal
import threading
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..models.resolve import ModelRef, resolve_model
from ..ray_env import ensure_ray, worker_env
from ..storage import StorageError, redact, resolve
from . import state
from .inventory import ArchiveObject, check_writable, done_keys, list_archive, new_work, open_catalogue, select_nights
from .lock import CatalogueLock, CatalogueLocked
from .read import STATUS_FILTERED, ReadOptions, error_fields, read_batch
from .retry import RetryPolicy
from .schema import STATUS_OK, night_now
from .status import ERROR_CLASSES, TRANSIENT, TransientError, code_version
from .write import NightWriter

log = logging.getLogger(__name__)


class CatalogueError(RuntimeError):
    """The run cannot proceed (bad arguments, no GPU node in time, ...); the message says why."""


class CatalogueAborted(CatalogueError):
    """The run stopped early (an outage: transient errors past the threshold; or its lock was
    lost) after saving what it had; ``summary`` says what was done."""

    def __init__(self, message: str, summary: "RunSummary"):
        super().__init__(message)
        self.summary = summary


class RunInterrupted(BaseException):
    """SIGTERM or SIGINT stopped the run (after it saved what it had); ``signum`` names the signal."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signal.Signals(signum).name}")
        self.signum = signum


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
    model_stage: str = "auto"
    """Where the model runs: "tasks" inside the read tasks (one model per worker process; the
    pixels never go through the object store), "actors" in an actor pool (``actors`` x
    ``actor_cpus``, ``num_gpus``); "auto": actors with GPUs, else tasks."""
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
    """Catalogue rows per Parquet file and night at most."""
    flush_rows: int = 1000
    """Save every buffered night once the run holds this many unsaved rows."""
    flush_s: float = 300.0
    """... or once this many seconds passed since the last save."""
    actor_start_timeout_s: int = 600
    """How long to wait for the actor pool (e.g. a GPU node from the autoscaler) before failing."""
    use_dae: bool = True
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    """The one retry layer of storage reads (attempts, backoff with jitter, total budget)."""
    file_deadline_s: float | None = 120.0
    """Per-file deadline for all its steps (stat, fetch, blaze, read, preprocess)."""
    max_file_bytes: int = 512 << 20
    max_decompressed_bytes: int = 512 << 20
    max_task_retries: int = 2
    """Ray retries of a read task / restarts of a model actor (Ray Data's default is infinite)."""
    transient_abort_count: int = 20
    transient_abort_rate: float = 0.5
    """Stop the run (outage) once transient errors reach min(count, rate x files to do) and are
    at least this fraction of the rows received so far."""
    lock_ttl_s: float = 900.0
    """Expiry of the catalogue lock, pushed forward every ttl/3 while the run lives."""
    break_lock: bool = False
    """Remove another run's unexpired lock (an operator who made sure that run is gone)."""
    code: str | None = None
    """Code version written into rows (default :func:`~survey_estimator.catalogue.status.code_version`)."""
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
    permanent: int = 0
    transient: int = 0
    unexpected: int = 0
    lost: int = 0
    """Files of blocks Ray lost (written as transient error rows)."""
    filtered: int = 0
    """Files read but outside the night filters (nothing written)."""
    aborted: str | None = None
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


def model_in_tasks(config: CatalogueConfig) -> bool:
    """Whether the model runs inside the read tasks (:attr:`CatalogueConfig.model_stage`)."""
    return config.model_stage == "tasks" or (config.model_stage == "auto" and not config.num_gpus)


def read_plan(n_files: int, cluster_cpus: float, config: CatalogueConfig) -> tuple[int, float]:
    """(files per read task, CPUs reserved per read task) for ``n_files`` on ``cluster_cpus``.

    Files per task: ``config.read_batch_size``, else ceil(n_files / (8 x CPUs)) clamped to 4..16:
    at least eight tasks per CPU (a short tail when the last tasks finish) without a task per
    file or two (overhead). Each read task handles one input block of at most this many files.
    CPUs per task: ``config.read_cpus``, else what lets one read task per CPU run beside the model
    actors' reservations: (CPUs - actors x actor_cpus) / CPUs, at least 0.25 (on 2 CPUs with one
    0.5-CPU actor: 0.75, two read tasks; on large clusters close to 1); 1 when the model runs in
    the read tasks (:func:`model_in_tasks`).
    """
    cpus = max(1.0, float(cluster_cpus))
    batch = config.read_batch_size or min(16, max(4, math.ceil(n_files / (8 * cpus))))
    if config.read_cpus is not None:
        read_cpus = float(config.read_cpus)
    else:
        actors = 0 if model_in_tasks(config) else config.actors
        read_cpus = max(0.25, (cpus - actors * config.actor_cpus) / cpus)
    return int(batch), math.floor(read_cpus * 1000) / 1000  # rounded down: the last task must still fit


def _check_config(config: CatalogueConfig) -> None:
    _check_date("night", config.night)
    _check_date("since", config.since)
    if config.batch_size < 1 or config.actors < 1:
        raise CatalogueError("--batch-size and --actors must be at least 1")
    if (config.read_batch_size is not None and config.read_batch_size < 1) or config.rows_per_file < 1 or config.flush_rows < 1:
        raise CatalogueError("--read-batch-size, rows per file and --flush-rows must be at least 1")
    if config.read_cpus is not None and not config.read_cpus > 0:
        raise CatalogueError("--read-cpus must be positive")
    if config.model_stage not in ("auto", "tasks", "actors"):
        raise CatalogueError(f"--model-stage must be auto, tasks or actors (got {config.model_stage!r})")
    if config.model_stage == "tasks" and config.num_gpus:
        raise CatalogueError("--model-stage tasks runs the model on the read tasks' CPUs: it takes no --num-gpus")


def _fail_fast(config: CatalogueConfig):
    """(model, listing, summary) after the checks that must pass before any work."""
    _check_config(config)
    ref = resolve_model(config.model)
    listing = list_archive(config.archive)
    check_writable(config.out)
    summary = RunSummary(run_id=dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8],
                         model_name=ref.name, model_version=ref.version, listed=len(listing.files))
    return ref, listing, summary


def _plan(config: CatalogueConfig, ref: ModelRef, listing, summary: RunSummary, repair: bool) -> list[ArchiveObject]:
    selected = select_nights(listing.files, config.night, config.since)
    summary.selected = len(selected)
    todo = new_work(selected, done_keys(config.out, ref.version, code=config.code or code_version(), repair=repair))
    summary.skipped = len(selected) - len(todo)
    log.info("model %s version %s; %d files listed, %d selected, %d already catalogued, %d to process",
             ref.name, ref.version, summary.listed, summary.selected, summary.skipped, len(todo))
    return todo


def prepare(config: CatalogueConfig) -> tuple[ModelRef, list, dict, RunSummary]:
    """Fail-fast checks and the work list, without the lock (a dry run): (model, files to
    process, blaze index, summary so far)."""
    ref, listing, summary = _fail_fast(config)
    return ref, _plan(config, ref, listing, summary, repair=False), listing.blaze, summary


def run_catalogue(config: CatalogueConfig) -> RunSummary:
    """Catalogue new files of ``config.archive`` into ``config.out``; returns a :class:`RunSummary`.

    Raises:
        StorageError: archive or catalogue storage unreachable (before any work), or rows that
            could not be saved (the others were).
        ModelNotFoundError: the model cannot be resolved (before any work).
        CatalogueLocked: another run holds the catalogue's lock (before any work).
        CatalogueAborted: an outage stopped the run (what it had is saved).
        RunInterrupted: SIGTERM/SIGINT stopped the run (what it had is saved).
        CatalogueError: bad arguments, or the actor pool did not start in time.
    """
    t0 = time.time()
    ref, listing, summary = _fail_fast(config)
    lock = CatalogueLock(config.out, summary.run_id, config.lock_ttl_s).acquire(break_lock=config.break_lock)
    try:
        todo = _plan(config, ref, listing, summary, repair=True)
        state.record_listing(config.out, listing.files)
        state.record_model(config.out, ref.name, ref.version, summary.run_id)
        if todo:
            ensure_ray()  # before our signal handlers: ray.init installs its own SIGTERM handler
            with _stop_on_signals():
                _execute(config, ref, todo, listing.blaze, summary, lock)
        else:
            log.info("nothing new to catalogue")
    finally:
        lock.release()
        summary.seconds = time.time() - t0
    return summary


@contextlib.contextmanager
def _stop_on_signals():
    """Turn the first SIGTERM/SIGINT into :class:`RunInterrupted` (so the run saves what it has);
    a second one acts as usual. Only in the main thread (where Python delivers signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signums = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.getsignal(s) for s in signums}

    def handler(signum, frame):
        for s, h in previous.items():
            signal.signal(s, h)
        raise RunInterrupted(signum)

    for s in signums:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _outage(transient: int, received: int, n_todo: int, config: CatalogueConfig) -> bool:
    """Whether transient errors have passed the threshold that stops the run."""
    need = min(config.transient_abort_count, max(1, math.ceil(config.transient_abort_rate * n_todo)))
    return transient >= need and transient >= config.transient_abort_rate * max(1, received)


def _execute(config: CatalogueConfig, ref: ModelRef, todo: list[ArchiveObject], blaze: dict, summary: RunSummary,
             lock: CatalogueLock) -> None:
    """Run the Ray Data pipeline over ``todo`` and save its rows (see the module docstring)."""
    from ray.data import ActorPoolStrategy, DataContext

    from .predict import FitOptions, Predictor, read_and_estimate

    ray = ensure_ray()
    in_tasks = model_in_tasks(config)
    ctx = DataContext.get_current()
    saved_ctx = (ctx.wait_for_min_actors_s, ctx.max_errored_blocks, ctx.op_resource_reservation_enabled)
    ctx.wait_for_min_actors_s = 0 if in_tasks else _actor_wait_s(config, ray.cluster_resources())
    ctx.max_errored_blocks = -1  # errored blocks are not dropped silently: their files are counted below
    # Ray Data's per-operator resource reservation kept one read task running at a time on a small
    # node (measured on 2 CPUs, 1000 files: read stage 50 -> 67 files/s without it; Ray's own
    # scheduler still runs only what the CPUs allow, and the output backpressure stays on)
    ctx.op_resource_reservation_enabled = False
    plain, secrets = worker_env()
    env = _op_runtime_env(plain)
    opts = ReadOptions(night=config.night, since=config.since, blaze=blaze, retry=config.retry, deadline_s=config.file_deadline_s,
                       max_file_bytes=config.max_file_bytes, max_decompressed_bytes=config.max_decompressed_bytes,
                       code=config.code or code_version(), env=secrets)
    files_per_task, read_cpus = read_plan(len(todo), ray.cluster_resources().get("CPU", 1.0), config)
    n_blocks = max(1, math.ceil(len(todo) / files_per_task))
    if in_tasks:
        log.info("read stage: %d tasks of <= %d files, %.3g CPU each, with the model in each worker process",
                 n_blocks, files_per_task, read_cpus)
    else:
        log.info("read stage: %d tasks of <= %d files, %.3g CPU each; model: %d actor(s) x %.3g CPU, %.3g GPU",
                 n_blocks, files_per_task, read_cpus, config.actors, config.actor_cpus, config.num_gpus)
    retries = int(config.max_task_retries)
    model = {"ref": ref, "use_dae": config.use_dae, "env": secrets, "fit": FitOptions(config.fit, config.grid)}
    ds = ray.data.from_items([f.as_dict() for f in todo], override_num_blocks=n_blocks)
    with warnings.catch_warnings():
        # Ray 2.60 has no named parameter for max_retries / max_restarts yet (deprecation of **ray_remote_args)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        # batch_size None: one task per input block (a batch size would merge blocks one file short of it)
        if in_tasks:
            ds = ds.map_batches(read_and_estimate, fn_kwargs={"opts": opts, "model": model, "batch_size": int(config.batch_size)},
                                batch_size=None, batch_format="numpy", num_cpus=read_cpus, max_retries=retries, **env)
        else:
            ds = ds.map_batches(read_batch, fn_kwargs={"opts": opts}, batch_size=None, batch_format="numpy", num_cpus=read_cpus,
                                max_retries=retries, **env)
            ds = ds.map_batches(Predictor, fn_constructor_kwargs=model,
                                compute=ActorPoolStrategy(size=config.actors), batch_size=int(config.batch_size),
                                batch_format="numpy", num_gpus=config.num_gpus or None, num_cpus=config.actor_cpus,
                                max_restarts=retries, max_task_retries=retries, **env)
    writer = NightWriter(resolve(config.out), summary.run_id, config.rows_per_file, config.flush_rows, config.flush_s)
    seen: set[str] = set()
    transient = received = 0
    finished = False
    try:
        try:
            for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                seen.update(block["source_uri"].to_pylist())
                status = block["status"]
                summary.filtered += int(pc.sum(pc.equal(status, STATUS_FILTERED)).as_py() or 0)
                block = block.filter(pc.not_equal(status, STATUS_FILTERED))
                writer.add(block)
                received += block.num_rows
                transient += int(pc.sum(pc.equal(block["error_class"], TRANSIENT)).as_py() or 0)
                if lock.lost:
                    summary.aborted = "the catalogue lock was lost (expired and taken over by another run)"
                    break
                if _outage(transient, received, len(todo), config):
                    summary.aborted = (f"storage outage: {transient} of {received} files failed transiently "
                                       f"(threshold {config.transient_abort_count} / {config.transient_abort_rate:.0%})")
                    break
            else:
                finished = True
        except (StorageError, RunInterrupted):
            raise
        except Exception as exc:
            if isinstance(exc, ray.exceptions.GetTimeoutError) or "Timed out while starting actors" in str(exc):
                raise CatalogueError(
                    f"the model actor pool ({config.actors} x {config.num_gpus or 0} GPU, {config.actor_cpus} CPU) "
                    f"did not start within {config.actor_start_timeout_s} s: no node with those resources appeared"
                ) from None
            raise CatalogueError(f"catalogue run failed: {redact(str(exc))}") from None
        if finished:
            lost = [f for f in todo if f.uri not in seen]
            summary.lost = len(lost)
            if lost:
                log.error("%d file(s) were in blocks that Ray lost (a read task or model actor died past %d retries, "
                          "e.g. killed for memory): recorded as transient error rows", len(lost), retries)
                writer.add(lost_rows(lost, ref, opts.code))
                transient += len(lost)
                received += len(lost)
            if summary.aborted is None and transient and _outage(transient, received, len(todo), config):
                summary.aborted = f"storage outage: {transient} of {received} files failed transiently"
    finally:
        ctx.wait_for_min_actors_s, ctx.max_errored_blocks, ctx.op_resource_reservation_enabled = saved_ctx
        summary.processed = len(seen) + summary.lost
        _save(writer, summary, config.out)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("Ray Data stats:\n%s", ds.stats())
    log.info("run %s: wrote %d rows (%d ok, %d permanent, %d transient, %d unexpected; %d lost) in %d files",
             summary.run_id, summary.written, summary.ok, summary.permanent, summary.transient, summary.unexpected,
             summary.lost, len(summary.files))
    if summary.aborted:
        raise CatalogueAborted(f"run {summary.run_id} stopped: {summary.aborted}; saved {summary.written} rows, "
                               "the transient ones are redone by the next run", summary)


def lost_rows(files: list[ArchiveObject], ref: ModelRef, code: str) -> pa.Table:
    """Transient error rows (catalogue schema) for files whose block Ray lost."""
    from .predict import Estimates, build_table
    from .read import blank_row
    from .rows import to_batch

    rows = []
    for f in files:
        row = blank_row(f.night_hint or night_now(), code)
        name = f.uri.rsplit("/", 1)[-1]
        row.update(error_fields(TransientError("its read task or model actor was lost (worker died, e.g. out of memory)"),
                                name, "ray"), source_uri=f.uri, etag=f.etag, size_bytes=int(f.size))
        rows.append(row)
    batch = to_batch(rows)
    return build_table(batch, np.zeros(len(rows), bool), Estimates.empty(len(rows), batch["flags"]), ref)


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


def _save(writer: NightWriter, summary: RunSummary, out_uri: str) -> None:
    """Write what the run has (also after a failure or a signal), then count it."""
    try:
        writer.close()
    finally:
        try:
            _count_written(out_uri, summary)
        except Exception as exc:  # counting is a report, never the run's own error
            log.warning("could not count the rows written: %s", redact(str(exc)))


def _count_written(out_uri: str, summary: RunSummary) -> None:
    """Fill ``written``/``ok``/``errors``/``files`` from the files this run created."""
    ds = open_catalogue(out_uri, name_prefix=f"run-{summary.run_id}-")
    if ds is None:
        return
    summary.files = [redact(f) for f in ds.files]
    table = ds.to_table(columns=["status", "error_class"])
    summary.written = table.num_rows
    summary.ok = int(pc.sum(pc.equal(table["status"], STATUS_OK)).as_py() or 0)
    summary.errors = summary.written - summary.ok
    for cls in ERROR_CLASSES:
        setattr(summary, cls, int(pc.sum(pc.equal(table["error_class"], cls)).as_py() or 0))


__all__ = ["CatalogueConfig", "CatalogueError", "CatalogueAborted", "CatalogueLocked", "RunInterrupted", "RunSummary",
           "run_catalogue", "prepare", "read_plan", "ensure_ray", "worker_env", "StorageError"]

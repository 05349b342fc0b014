"""The CPU stage: fetch, read and preprocess archive files into model inputs and row metadata.

:func:`read_batch` is mapped over batches of listed objects by Ray Data. Every file is handled by
:func:`read_one` inside one guard: each step (the listing's stat, the fetch with its size caps,
the blaze fetch, the reader, the preprocessing) either succeeds or becomes an error row with a
retry class (:mod:`survey_estimator.catalogue.status`) and a reason; the rest of the batch goes
on. Each file has a deadline (:class:`~survey_estimator.catalogue.retry.Deadline`); fetches are
retried by the one retry layer (:mod:`survey_estimator.catalogue.retry`).
"""
from __future__ import annotations

import logging
import contextlib
import math
import os
import stat
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import datetime

import numpy as np

from ..instruments.blaze import find_blaze
from ..observation import Overrides
from ..ray_env import WorkerEnv  # also imported from here by predict.py
from ..storage import S3_ENV_VARS, Location, StorageError, is_s3, redact, resolve, s3_filesystem
from . import retry, rows
from .inventory import night_selected, unsafe_key_reason
from .schema import STATUS_ERROR, STATUS_OK, CatalogueFlag, night_from_mjd, night_now, night_of
from .status import TRANSIENT, FileRejected, classify, code_version

log = logging.getLogger(__name__)

STATUS_FILTERED = "filtered"
"""Internal status of rows whose night fails the run's night filters (never written)."""
GZIP_MAGIC = b"\x1f\x8b"
MiB = 1 << 20


@dataclass(frozen=True)
class ReadOptions:
    """Options of the read stage.

    Attributes:
        night, since: night filters (rows whose night fails them are not catalogued).
        blaze: blaze index (base name -> URI) of the archive.
        blaze_file: one blaze file for every old-DRS e2ds, whatever its header names (``estimate --blaze``).
        resolution: resolving power for every file, whatever its header says (``estimate --resolution``).
        overrides: what the user says about every file (``estimate --instrument/--medium/--frame/--rv/--normalised``).
        retry: the storage retry policy; ``retries`` (when set) overrides its number of attempts.
        deadline_s: per-file deadline (seconds) for all its steps; None: none.
        max_file_bytes: larger objects are refused (permanent error) before they are fetched.
        max_decompressed_bytes: gzip content that unpacks to more is refused (permanent error).
        code: the code version written into every row (default :func:`~survey_estimator.catalogue.status.code_version`).
        env: credentials to set in the worker (see :class:`~survey_estimator.ray_env.WorkerEnv`).
    """

    night: str | None = None
    since: str | None = None
    blaze: dict | None = None
    blaze_file: str | None = None
    resolution: float | None = None
    overrides: Overrides | None = None
    retry: retry.RetryPolicy = field(default_factory=retry.RetryPolicy)
    retries: int | None = None
    deadline_s: float | None = 120.0
    max_file_bytes: int = 512 * MiB
    max_decompressed_bytes: int = 512 * MiB
    code: str | None = None
    env: WorkerEnv = field(default_factory=WorkerEnv)

    def policy(self) -> retry.RetryPolicy:
        return self.retry if self.retries is None else replace(self.retry, attempts=self.retries)


_FS_CACHE: dict = {}


def _location(uri: str, request_timeout_s: float | None = None) -> Location:
    """A Location for ``uri`` reusing one S3 filesystem per worker process, made afresh when the
    S3 variables (endpoint, credentials: see :meth:`WorkerEnv.apply`) or the timeout change. The
    filesystem makes one attempt per request: :func:`retry.call` is the only retry layer."""
    if not is_s3(uri):
        return resolve(uri)
    key = (tuple(os.environ.get(k) for k in S3_ENV_VARS), request_timeout_s)
    fs = _FS_CACHE.get(key)
    if fs is None:
        _FS_CACHE.clear()
        fs = _FS_CACHE[key] = s3_filesystem(retries=1, request_timeout_s=request_timeout_s, connect_timeout_s=5)
    return Location(fs, uri[len("s3://") :], uri)


def _read_local(path: str | bytes, shown: str, max_bytes: int) -> bytes:
    """Bytes of a local regular file, at most ``max_bytes``; FIFOs, devices and folders are
    refused without blocking (opened non-blocking, checked with fstat)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise StorageError(f"cannot read {shown}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRejected(f"{shown}: not a regular file")
        if st.st_size > max_bytes:
            raise FileRejected(f"{shown}: {st.st_size} bytes, over the {max_bytes}-byte limit per file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise StorageError(f"cannot read {shown}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise FileRejected(f"{shown}: over the {max_bytes}-byte limit per file")
    return data


def _read_s3(uri: str, max_bytes: int, timeout_s: float | None) -> bytes:
    reason = unsafe_key_reason(uri[len("s3://"):].split("/", 1)[1] if "/" in uri[len("s3://"):] else "")
    if reason:
        raise FileRejected(f"{uri}: {reason}")
    loc = _location(uri, timeout_s)
    try:
        with loc.fs.open_input_stream(loc.path) as f:
            data = f.read(max_bytes + 1)
    except (OSError, FileNotFoundError) as exc:
        raise StorageError(f"cannot read {uri}: {redact(str(exc))}") from None
    if len(data) > max_bytes:
        raise FileRejected(f"{uri}: over the {max_bytes}-byte limit per file")
    return data


def gunzip_capped(data: bytes, name: str, max_bytes: int) -> bytes:
    """``data`` unpacked when it is gzip (all members), refusing content over ``max_bytes``
    without ever holding more than that; other data unchanged.

    Raises:
        FileRejected: it unpacks to more than ``max_bytes``.
        ValueError: corrupt gzip data.
    """
    if data[:2] != GZIP_MAGIC:
        return data
    out, total, rest = [], 0, data
    try:
        while rest[:2] == GZIP_MAGIC:
            d = zlib.decompressobj(wbits=31)
            chunk = d.decompress(rest, max_bytes - total + 1)
            while True:
                total += len(chunk)
                out.append(chunk)
                if total > max_bytes:
                    raise FileRejected(f"{name}: gzip content over the {max_bytes}-byte limit once unpacked")
                if d.eof or not d.unconsumed_tail:
                    break
                chunk = d.decompress(d.unconsumed_tail, max_bytes - total + 1)
            if not d.eof:
                raise ValueError(f"{name}: corrupt or truncated gzip data")
            rest = d.unused_data
    except zlib.error as exc:
        raise ValueError(f"{name}: corrupt or truncated gzip data ({exc})") from None
    return b"".join(out)


def fetch(uri: str, retries: int | None = None, backoff_s: float | None = None, *, opts: ReadOptions | None = None,
          deadline: retry.Deadline | None = None, local_path: str | None = None) -> bytes:
    """Bytes of ``uri`` (unpacked when gzip), within the size caps, through the retry layer.

    Args:
        retries, backoff_s: shorthand overrides of ``opts.retry`` (attempts, base backoff).
        local_path: hex of the local path's bytes for names that are not valid UTF-8.

    Raises:
        StorageError: still failing after the retries (transient).
        FileRejected: over a size cap, not a regular file, an unsafe key (permanent).
    """
    opts = opts or ReadOptions()
    policy = opts.policy()
    if retries is not None:
        policy = replace(policy, attempts=retries)
    if backoff_s is not None:
        policy = replace(policy, base_s=backoff_s)
    deadline = deadline or retry.Deadline(opts.deadline_s)
    if is_s3(uri):
        timeout = None if deadline.end is None else max(1.0, deadline.remaining())
        read = lambda: _read_s3(uri, opts.max_file_bytes, timeout)  # noqa: E731
    else:
        path = bytes.fromhex(local_path) if local_path else os.path.abspath(uri)
        read = lambda: _read_local(path, uri, opts.max_file_bytes)  # noqa: E731
    data = retry.call(read, f"fetch {uri}", policy, deadline)
    return gunzip_capped(data, uri.rsplit("/", 1)[-1], opts.max_decompressed_bytes)


def _get(obs, name: str):
    """Metadata ``name`` from an Observation: attribute, or entry of ``obs.meta``/``obs.metadata``."""
    if hasattr(obs, name):
        return getattr(obs, name)
    for holder in ("meta", "metadata", "header_meta"):
        h = getattr(obs, holder, None)
        if isinstance(h, dict) and name in h:
            return h[name]
        if h is not None and hasattr(h, name):
            return getattr(h, name)
    return None


def _night(obs, meta: dict, hint: str | None) -> str | None:
    night = night_from_mjd(meta["mjd_obs"], meta["instrument"])
    if night is None:
        date_obs = _get(obs, "date_obs")
        if date_obs:
            try:
                night = night_of(datetime.fromisoformat(str(date_obs).replace("Z", "")), meta["instrument"])
            except ValueError:
                night = None
    return night or hint


BLAZE_CACHE_SIZE = 8
"""Blaze files a read worker keeps (~1.1 MB each for HARPS-N): the exposures of a night share one."""
_BLAZE_CACHE: OrderedDict[str, bytes] = OrderedDict()


def _blaze_source(name: str, header, opts: ReadOptions, fetch_blaze):
    """(name, bytes) of ``opts.blaze_file`` when given, else of the blaze file the old-DRS e2ds
    primary ``header`` names when the blaze index ``opts.blaze`` holds it (the one lookup,
    :func:`~survey_estimator.instruments.blaze.find_blaze`), else None; ``fetch_blaze(uri)``
    fetches it, once per process for the last :data:`BLAZE_CACHE_SIZE` blaze files (a failed
    fetch is not kept; a local file is fetched again once its size or modification time
    changed; archive objects are taken as immutable). The reader calls it with the header it has
    parsed (one parse per file)."""
    uri = opts.blaze_file or (find_blaze(name, header, opts.blaze) if opts.blaze else None)
    if uri is None:
        return None
    key = uri
    if not is_s3(uri):
        with contextlib.suppress(OSError):
            st = os.stat(uri)
            key = f"{uri}\0{st.st_size}\0{st.st_mtime_ns}"
    if key in _BLAZE_CACHE:
        _BLAZE_CACHE.move_to_end(key)
    else:
        _BLAZE_CACHE[key] = fetch_blaze(uri)
        while len(_BLAZE_CACHE) > BLAZE_CACHE_SIZE:
            _BLAZE_CACHE.popitem(last=False)
    return (uri.rsplit("/", 1)[-1], _BLAZE_CACHE[key])


def _snr(mi, obs) -> float:
    snr = getattr(mi, "snr", None)
    if snr is None:
        snr = _get(obs, "snr")
    if snr is None:
        return math.nan
    arr = np.asarray(snr, dtype=np.float64).ravel()
    arr = arr[np.isfinite(arr)]
    return float(np.median(arr)) if arr.size else math.nan


def blank_row(night: str | None, code: str | None = None) -> dict:
    """An error row (:func:`~survey_estimator.catalogue.rows.new_row`) of ``night`` with this
    process's preprocessing version and the code version ``code`` (default :func:`code_version`)."""
    from .. import preprocess as pp

    return rows.new_row(night=night, preprocessing_version=str(getattr(pp, "PREPROCESSING_VERSION", "")),
                        code_version=code or code_version())


def error_fields(exc: BaseException, name: str, step: str) -> dict:
    """``status``/``error_class``/``error``/``flags`` of an error row for ``exc`` raised in ``step``.

    The reason names the file (once), the step and the cause, redacted."""
    text = redact(str(exc)) or type(exc).__name__
    cls = classify(exc)
    if cls != "permanent" or not isinstance(exc, ValueError):
        text = f"{step}: {type(exc).__name__}: {text}"
    if name not in text:
        text = f"{name}: {text}"
    return dict(status=STATUS_ERROR, error_class=cls, error=text, flags=int(CatalogueFlag.READ_ERROR))


def read_one(source, opts: ReadOptions, hint: str | None = None, policy: retry.RetryPolicy | None = None) -> dict:
    """Read and preprocess one archive file into its read row, never raising.

    Args:
        source: the URI, or a listing entry (:class:`~survey_estimator.catalogue.inventory.ArchiveObject`
            or its dict) carrying its ETag, size, ``night_hint``, ``problem`` and ``local_path``.
        hint: the night for an error row when the entry has no ``night_hint``.
        policy: the retry policy for this file (default ``opts.policy()``).

    Returns:
        A row of the contract (:data:`~survey_estimator.catalogue.rows.FIELDS`; stack rows with
        :func:`~survey_estimator.catalogue.rows.to_batch`): status 'ok' with ``x`` (float32
        (2, 8, 4096)), ``ivar`` (float32 (8, 4096) inverse variance of the normalised flux, 0
        where masked: the fit's noise) and ``resolution`` (NaN unknown); or an error row (zero
        ``x``/``ivar``); or status ``filtered`` when its night fails ``opts.night``/``opts.since``.
        ``night`` is never null (the file name's night, else the current night for error rows).
    """
    from .. import preprocess as pp
    from ..instruments import read_observation

    entry = source if isinstance(source, dict) else getattr(source, "__dict__", None) or {"uri": source}
    uri = str(entry["uri"])
    hint = entry.get("night_hint", hint) or hint
    row = blank_row(hint, opts.code)
    row.update(source_uri=uri, etag=_optional_str(entry.get("etag")), size_bytes=int(entry.get("size") or 0))
    name = uri.rsplit("/", 1)[-1]
    policy = policy or opts.policy()
    deadline = retry.Deadline(opts.deadline_s)
    step = "stat"
    try:
        with deadline.alarm():
            if entry.get("problem"):
                raise FileRejected(f"{name}: {entry['problem']}")
            size = entry.get("size")
            if size is not None and int(size) > opts.max_file_bytes:
                raise FileRejected(f"{name}: {int(size)} bytes, over the {opts.max_file_bytes}-byte limit per file")
            step = "fetch"
            data = fetch(uri, opts=opts, deadline=deadline, local_path=entry.get("local_path"))
            step = "read"
            blaze_failed: list[BaseException] = []

            def blaze_for(header):
                """The e2ds reader's blaze lookup; a failed fetch fails this file as step "blaze fetch"."""
                try:
                    return _blaze_source(name, header, opts, lambda u: fetch(u, opts=replace(opts, retries=policy.attempts), deadline=deadline))
                except Exception as exc:
                    blaze_failed.append(exc)
                    return None

            try:
                obs = read_observation((name, data), blaze=blaze_for, resolution=opts.resolution, overrides=opts.overrides,
                                       band_only=True)
            except Exception:
                if not blaze_failed:
                    raise
            if blaze_failed:
                step = "blaze fetch"
                raise blaze_failed[0]
            for f in rows.HEADER_FIELDS:
                row[f.name] = f.coerce(_get(obs, f.name))
            deadline.check("read")
            step = "preprocess"
            mi = pp.preprocess(obs)
            # what preprocessing applied wins over the header; the stellar RV is null when none was
            # applied (e.g. an unreliable CCF measurement, flag RV_UNRELIABLE), whatever the header says
            row["rv_kms"] = rows.as_float(getattr(mi, "rv_kms", None))
            berv = rows.as_float(getattr(mi, "berv_kms", None))
            if np.isfinite(berv):
                row["berv_kms"] = berv
            x = np.asarray(mi.x, dtype=np.float32).reshape(rows.X_SHAPE)
            with np.errstate(divide="ignore"):
                ivar = np.where(mi.mask, 1.0 / mi.variance, 0.0).astype(np.float32)
            deadline.check("preprocess")
        row.update(x=x, ivar=ivar, resolution=rows.as_float(mi.resolution), snr=_snr(mi, obs), flags=int(getattr(mi, "flags", 0) or 0),
                   status=STATUS_OK, night=_night(obs, row, hint))
    except Exception as exc:  # every failure of this file becomes its error row (MemoryError included)
        fields = error_fields(exc, name, step)
        if fields["error_class"] == "unexpected":
            log.exception("unexpected failure on %s (%s)", redact(uri), step)
        else:
            log.info("%s error on %s: %s", fields["error_class"], redact(uri), fields["error"])
        row.update(fields)
    if not night_selected(row["night"], opts.night, opts.since):
        row["status"] = STATUS_FILTERED
    row["night"] = row["night"] or night_now()  # the partition value is never null
    return row


def _optional_str(v) -> str | None:
    """``v`` when a string, else None (Ray hands all-null columns over as NaN floats)."""
    return v if isinstance(v, str) else None


def read_batch(batch: dict[str, np.ndarray], opts: ReadOptions) -> dict[str, np.ndarray]:
    """Ray Data batch function: listed objects in (uri, etag, size, night_hint[, problem,
    local_path]), a read batch (:func:`~survey_estimator.catalogue.rows.to_batch` of
    :func:`read_one` rows) out. Rows whose night (known after reading) fails the night filters
    come out with status ``filtered`` (the driver drops them), so every input file has an output row.

    Once one file's fetch has failed all its retries, the following files of this batch are
    tried once each until one succeeds (an outage costs one attempt per file).
    """
    opts.env.apply()
    out = []
    policy = opts.policy()
    keys = [k for k in ("uri", "etag", "size", "night_hint", "problem", "local_path") if k in batch]
    for values in zip(*(batch[k] for k in keys)):
        entry = dict(zip(keys, values))
        for k in ("night_hint", "problem", "local_path"):
            entry[k] = _optional_str(entry.get(k))
        row = read_one(entry, opts, policy=policy)
        if row["error_class"] == TRANSIENT and "fetch" in (row["error"] or ""):
            policy = opts.policy().after_failure()
        elif row["status"] == STATUS_OK:
            policy = opts.policy()
        out.append(row)
    return rows.to_batch(out)

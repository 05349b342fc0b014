"""The CPU stage: fetch, read and preprocess archive files into model inputs and row metadata.

:func:`read_batch` is mapped over batches of listed objects by Ray Data. Every file is handled in
its own try/except, so a corrupt, truncated or foreign file becomes an error row naming the reason
and the rest of its batch goes on. Fetches retry with exponential backoff and jitter; a fetch that
still fails is recorded as a *transient* error (retried on the next run).
"""
from __future__ import annotations

import io
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from ..layout import N_ORDERS, N_PIXELS
from ..ray_env import WorkerEnv  # also imported from here by predict.py
from ..storage import S3_ENV_VARS, Location, StorageError, is_s3, redact, resolve, s3_filesystem
from .inventory import TRANSIENT_PREFIX, blaze_key, night_selected
from .schema import STATUS_ERROR, STATUS_OK, CatalogueFlag, night_from_mjd, night_now, night_of

log = logging.getLogger(__name__)

X_SHAPE = (2, N_ORDERS, N_PIXELS)
META_STR = ("object", "instrument", "drs_version")
META_FLOAT = ("ra_deg", "dec_deg", "mjd_obs", "bjd", "exptime_s", "berv_kms", "rv_kms")


@dataclass(frozen=True)
class ReadOptions:
    """Options of the read stage: night filters, blaze index (base name -> URI), fetch retries."""

    night: str | None = None
    since: str | None = None
    blaze: dict | None = None
    blaze_file: str | None = None
    """One blaze file for every old-DRS e2ds, whatever its header names (``estimate --blaze``)."""
    resolution: float | None = None
    """Resolving power for every file, whatever its header says (``estimate --resolution``)."""
    retries: int = 5
    backoff_s: float = 0.5
    env: WorkerEnv = field(default_factory=WorkerEnv)


_FS_CACHE: dict = {}


def _location(uri: str) -> Location:
    """A Location for ``uri`` reusing one S3 filesystem per worker process, made afresh when the
    S3 variables (endpoint, credentials: see :meth:`WorkerEnv.apply`) change."""
    if not is_s3(uri):
        return resolve(uri)
    key = tuple(os.environ.get(k) for k in S3_ENV_VARS)
    fs = _FS_CACHE.get(key)
    if fs is None:
        _FS_CACHE.clear()
        fs = _FS_CACHE[key] = s3_filesystem()
    return Location(fs, uri[len("s3://") :], uri)


def fetch(uri: str, retries: int = 5, backoff_s: float = 0.5) -> bytes:
    """Bytes of ``uri``, retrying storage errors with exponential backoff (0.5, 1, 2, ... s + jitter).

    Raises:
        StorageError: still failing after ``retries`` attempts (message redacted).
    """
    for attempt in range(retries):
        try:
            return _location(uri).read_bytes()
        except StorageError as exc:
            if attempt == retries - 1:
                raise
            delay = backoff_s * 2**attempt * (1 + 0.25 * random.random())
            log.warning("fetch %s failed (%s); retry %d/%d in %.1f s", uri, exc, attempt + 1, retries - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


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


def _float(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def _str(v) -> str | None:
    return None if v is None else str(v)


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


def _blaze_source(name: str, data: bytes, opts: ReadOptions):
    """(name, bytes) of ``opts.blaze_file`` when given, else of the blaze file an old-DRS e2ds
    header names when the blaze index ``opts.blaze`` holds it."""
    if opts.blaze_file:
        return (opts.blaze_file.rsplit("/", 1)[-1], fetch(opts.blaze_file, opts.retries, opts.backoff_s))
    blaze_index = opts.blaze
    if not blaze_index:
        return None
    from astropy.io import fits

    try:
        with fits.open(io.BytesIO(data), lazy_load_hdus=True) as hdul:
            header = hdul[0].header
            value = next((header[k] for k in header.keys() if k.endswith("DRS BLAZE FILE")), None)
    except Exception:  # the reader proper will report what is wrong with the file
        return None
    if not value:
        return None
    uri = blaze_index.get(blaze_key(str(value)))
    if uri is None:
        return None
    return (uri.rsplit("/", 1)[-1], fetch(uri, opts.retries, opts.backoff_s))


def _snr(mi, obs) -> float:
    snr = getattr(mi, "snr", None)
    if snr is None:
        snr = _get(obs, "snr")
    if snr is None:
        return math.nan
    arr = np.asarray(snr, dtype=np.float64).ravel()
    arr = arr[np.isfinite(arr)]
    return float(np.median(arr)) if arr.size else math.nan


def read_one(uri: str, opts: ReadOptions, hint: str | None = None) -> dict:
    """Read and preprocess one archive file into a row dict (with ``x``), never raising.

    Returns a dict with the metadata columns, ``night``, ``snr``, ``flags``, ``status``,
    ``error``, ``preprocessing_version``, ``x`` (float32 (2, 8, 4096); zeros for error rows),
    ``ivar`` (float32 (8, 4096) inverse variance of the normalised flux, 0 where masked: the
    fit's noise) and ``resolution`` (the spectrum's resolving power; NaN unknown).
    """
    from .. import preprocess as pp
    from ..instruments import read_observation

    row: dict = {k: None for k in META_STR}
    row.update({k: math.nan for k in META_FLOAT})
    row.update(night=hint, snr=math.nan, flags=0, status=STATUS_ERROR, error=None,
               preprocessing_version=str(getattr(pp, "PREPROCESSING_VERSION", "")), x=np.zeros(X_SHAPE, np.float32),
               ivar=np.zeros(X_SHAPE[1:], np.float32), resolution=math.nan)
    name = uri.rsplit("/", 1)[-1]
    try:
        data = fetch(uri, opts.retries, opts.backoff_s)
    except StorageError as exc:
        row.update(error=f"{TRANSIENT_PREFIX} {redact(str(exc))}", flags=int(CatalogueFlag.READ_ERROR))
        return row
    try:
        blaze = _blaze_source(name, data, opts)
        obs = read_observation((name, data), blaze=blaze, resolution=opts.resolution)
        for k in META_STR:
            row[k] = _str(_get(obs, k))
        for k in META_FLOAT:
            row[k] = _float(_get(obs, k))
        mi = pp.preprocess(obs)
        # what preprocessing applied wins over the header; the stellar RV is null when none was
        # applied (e.g. an unreliable CCF measurement, flag RV_UNRELIABLE), whatever the header says
        row["rv_kms"] = _float(getattr(mi, "rv_kms", None))
        v = getattr(mi, "berv_kms", None)
        if v is not None and np.isfinite(_float(v)):
            row["berv_kms"] = _float(v)
        x = np.asarray(mi.x, dtype=np.float32).reshape(X_SHAPE)
        with np.errstate(divide="ignore"):
            ivar = np.where(mi.mask, 1.0 / mi.variance, 0.0).astype(np.float32)
        row.update(x=x, ivar=ivar, resolution=_float(mi.resolution), snr=_snr(mi, obs), flags=int(getattr(mi, "flags", 0) or 0), status=STATUS_OK,
                   night=_night(obs, row, hint))
    except ValueError as exc:  # the readers' typed error (and preprocessing refusals)
        row.update(error=redact(str(exc)) or type(exc).__name__, flags=int(CatalogueFlag.READ_ERROR))
    except Exception as exc:  # a bug or an unforeseen file: record it, keep the batch
        log.exception("unexpected failure on %s", redact(uri))
        row.update(error=redact(f"{name}: unexpected {type(exc).__name__}: {exc}"), flags=int(CatalogueFlag.READ_ERROR))
    return row


def read_batch(batch: dict[str, np.ndarray], opts: ReadOptions) -> dict[str, np.ndarray]:
    """Ray Data batch function: listed objects in (uri, etag, size, night_hint), rows out.

    Rows whose night (known after reading) fails the night filters are dropped.
    """
    opts.env.apply()
    rows = []
    for uri, etag, size, hint in zip(batch["uri"], batch["etag"], batch["size"], batch["night_hint"]):
        row = read_one(str(uri), opts, None if hint is None else str(hint))
        if not night_selected(row["night"], opts.night, opts.since):
            continue
        row["night"] = row["night"] or night_now()  # the partition value is never null
        row.update(source_uri=str(uri), etag=str(etag), size_bytes=int(size))
        rows.append(row)
    return rows_to_batch(rows)


def rows_to_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    """Column arrays from row dicts; ``x`` stacked to (n, 2, 8, 4096), ``ivar`` to (n, 8, 4096)."""
    keys = ["source_uri", "etag", "size_bytes", "night", *META_STR, *META_FLOAT, "snr", "resolution", "flags", "status", "error",
            "preprocessing_version"]
    out: dict[str, np.ndarray] = {}
    for k in keys:
        vals = [r[k] for r in rows]
        if k in META_FLOAT or k in ("snr", "resolution"):
            out[k] = np.asarray(vals, dtype=np.float64)
        elif k in ("size_bytes", "flags"):
            out[k] = np.asarray(vals, dtype=np.int64)
        else:
            arr = np.empty(len(vals), dtype=object)
            arr[:] = vals
            out[k] = arr
    out["x"] = np.stack([r["x"] for r in rows]) if rows else np.zeros((0, *X_SHAPE), np.float32)
    out["ivar"] = np.stack([r["ivar"] for r in rows]) if rows else np.zeros((0, *X_SHAPE[1:]), np.float32)
    return out

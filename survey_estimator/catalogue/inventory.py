"""What is in the archive, what the catalogue already holds, and so what is new.

An archive object is identified by ``(source_uri, etag)``; with the model version that makes the
key a catalogue row answers to. S3 listings come from boto3 (``list_objects_v2`` returns ETag and
size; pyarrow's filesystem listing has no ETag), with botocore's standard retry mode and
exponential backoff on throttling and transient errors. Local folders are walked recursively and
get a pseudo-ETag ``local-<size>-<mtime_ns>``.

Auxiliary pipeline products (blaze, wavelength, CCF, bisector, ...) are not catalogued; blaze
files are indexed by their key (:func:`survey_estimator.instruments.blaze.blaze_index`) so an
e2ds is read with its blaze, found by the one lookup
(:func:`survey_estimator.instruments.blaze.find_blaze`).
"""
from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import asdict, dataclass, replace
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from ..instruments.blaze import blaze_index
from ..storage import StorageError, is_s3, redact, resolve
from .schema import PARTITION_COLUMN, night_from_key
from .status import LEGACY_TRANSIENT_PREFIX

log = logging.getLogger(__name__)

FITS_SUFFIXES = (".fits", ".fits.gz", ".fit", ".fit.gz", ".fts")
AUXILIARY = re.compile(r"_(blaze|wave|ccf|bis|order_profile|loc|flat|ff|lamp|drift|bkg)_[A-Z]\.fits(\.gz)?$", re.I)
"""Pipeline products that are not science spectra (skipped; blaze files are indexed)."""
TRANSIENT_PREFIX = LEGACY_TRANSIENT_PREFIX
DAMAGED_DIR = ".damaged"
"""Damaged Parquet files are moved under ``<catalogue>/.damaged/`` (ignored by every reader)."""


@dataclass(frozen=True)
class ArchiveObject:
    """One listed file: full URI, ETag, size (bytes) and the night its name suggests (or None).

    ``problem``: why the entry cannot be read at all (an unstat-able local entry, an unsafe S3
    key); it becomes a permanent error row without any read. ``local_path``: the hex of the
    file system path's bytes when the name is not valid UTF-8 (``uri`` then shows the bad bytes
    as ``\\xNN``, and the file is opened by these bytes).
    """

    uri: str
    etag: str
    size: int
    night_hint: str | None = None
    problem: str | None = None
    local_path: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Listing:
    """An archive listing: science files to catalogue and blaze files by base name -> URI."""

    files: tuple[ArchiveObject, ...]
    blaze: dict[str, str]


def is_fits_name(name: str) -> bool:
    return name.lower().endswith(FITS_SUFFIXES)


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def boto3_client(max_attempts: int = 4):
    """An S3 client from the standard AWS environment, with standard-mode retries and backoff
    (used for listings and the catalogue's small state objects: one retry layer, bounded)."""
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    cfg = Config(retries={"max_attempts": max_attempts, "mode": "standard"}, connect_timeout=5, read_timeout=30)
    return boto3.client("s3", endpoint_url=endpoint, config=cfg)


def unsafe_key_reason(key: str) -> str | None:
    """Why an S3 key cannot be read as a path (empty or ``.``/``..`` components), else None."""
    parts = key.split("/")
    if any(p == "" for p in parts):
        return "unsafe S3 key: empty path component ('//', or a leading or trailing '/')"
    if any(p in (".", "..") for p in parts):
        return "unsafe S3 key: '.' or '..' path component"
    return None


def _list_s3(uri: str) -> list[ArchiveObject]:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = _split_s3(uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    client = boto3_client()
    out = []
    try:
        client.head_bucket(Bucket=bucket)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                out.append(ArchiveObject(f"s3://{bucket}/{key}", item["ETag"].strip('"'), int(item["Size"]),
                                         problem=unsafe_key_reason(key)))
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"cannot list archive {uri}: {redact(str(exc))}") from None
    return out


def display_path(path: str) -> str:
    """``path`` as valid UTF-8 text: bytes that are not UTF-8 shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _local_entry(path: str) -> ArchiveObject | None:
    """The listing entry of one local name: a regular file, an error entry when it cannot be
    stat'ed (dangling link, link loop, permissions), None (logged) when it is not a regular file."""
    shown = display_path(path)
    raw = None if shown == path else os.fsencode(path).hex()
    try:
        st = os.stat(path)
    except OSError as exc:
        log.warning("cannot stat %s (%s): recorded as an error row", shown, exc.strerror or exc)
        return ArchiveObject(shown, f"unstatable-{exc.errno}", -1, problem=f"cannot stat: {exc.strerror or exc}",
                             local_path=raw)
    if not stat.S_ISREG(st.st_mode):
        log.warning("skipping %s: not a regular file (mode %o)", shown, st.st_mode)
        return None
    return ArchiveObject(shown, f"local-{st.st_size}-{st.st_mtime_ns}", int(st.st_size), local_path=raw)


def _list_local(path: str) -> list[ArchiveObject]:
    root = os.path.abspath(path)
    if not os.path.isdir(root):
        raise StorageError(f"archive folder {root} does not exist")

    def _walk_error(exc: OSError) -> None:
        log.warning("cannot list %s (%s): skipped", display_path(exc.filename or ""), exc.strerror or exc)

    out = []
    for dirpath, _dirs, names in os.walk(root, onerror=_walk_error):  # symlinked folders are not followed
        for name in names:
            if is_fits_name(name):
                entry = _local_entry(os.path.join(dirpath, name))
                if entry is not None:
                    out.append(entry)
    return out


def stat_local(path: str) -> tuple[str, str, int]:
    """(absolute path, pseudo-ETag ``local-<size>-<mtime_ns>``, size in bytes) of a local file.

    Raises:
        OSError: the file cannot be stat'ed.
    """
    full = os.path.abspath(path)
    st = os.stat(full)
    return full, f"local-{st.st_size}-{st.st_mtime_ns}", int(st.st_size)


def list_archive(uri: str) -> Listing:
    """List FITS files under ``uri`` (s3://bucket/prefix or a local folder), recursively.

    Odd entries never stop the listing: local names that are not regular files are skipped (with
    a log line), entries that cannot be stat'ed and S3 keys with empty or ``..`` parts are listed
    with a ``problem`` (they become permanent error rows).

    Raises:
        StorageError: the bucket or folder cannot be reached (message without credentials).
    """
    raw = _list_s3(uri) if is_s3(uri) else _list_local(resolve(uri).path)
    raw = sorted(raw, key=lambda o: o.uri)
    blaze = blaze_index(o.uri for o in raw if is_fits_name(o.uri) and o.problem is None and o.local_path is None)
    files = []
    for obj in raw:
        base = obj.uri.rsplit("/", 1)[-1]
        if not is_fits_name(base):
            continue
        if AUXILIARY.search(base):
            continue
        files.append(replace(obj, night_hint=night_from_key(base)))
    log.info("archive %s: %d science files, %d blaze files", uri, len(files), len(set(blaze.values())))
    return Listing(tuple(files), blaze)


def select_nights(files: tuple[ArchiveObject, ...] | list[ArchiveObject], night: str | None = None, since: str | None = None) -> list[ArchiveObject]:
    """Keep files whose name-derived night matches ``night`` / is on or after ``since``.

    Files whose names hold no date are kept (their night is known only after reading; the
    pipeline filters them again then).
    """
    out = []
    for f in files:
        if f.night_hint is not None:
            if night and f.night_hint != night:
                continue
            if since and f.night_hint < since:
                continue
        out.append(f)
    return out


def night_selected(value: str | None, night: str | None, since: str | None) -> bool:
    """Whether a row's night passes the filters (rows with an unknown night always pass)."""
    if value is None:
        return True
    return (not night or value == night) and (not since or value >= since)


def catalogue_files(out_uri: str) -> list[str]:
    """Parquet files under a catalogue root (paths inside its filesystem); [] when absent.

    Paths with a component starting with ``.`` or ``_`` (the lock, the run state, damaged files
    moved aside) are not catalogue files, as for pyarrow's and Spark's dataset discovery.
    """
    loc = resolve(out_uri)
    base = loc.path.rstrip("/")
    out = []
    for info in loc.list_files(recursive=True):
        rel = info.path[len(base):].lstrip("/")
        if info.path.endswith(".parquet") and not any(p[:1] in "._" for p in rel.split("/")):
            out.append(info.path)
    return sorted(out)


def damaged_files(fs, files: list[str]) -> list[str]:
    """Those of ``files`` whose Parquet footer cannot be read (truncated, overwritten, not Parquet)."""
    bad = []
    for f in files:
        try:
            with fs.open_input_file(f) as handle:
                pq.ParquetFile(handle).metadata
        except Exception:  # any failure to open it makes it unusable
            bad.append(f)
    return bad


def open_catalogue(out_uri: str, columns_schema: pa.Schema | None = None, name_prefix: str | None = None,
                   repair: bool = False) -> pads.Dataset | None:
    """The catalogue as a pyarrow dataset (Hive partitioning on ``night``), or None when empty.

    ``name_prefix`` keeps only files whose base name starts with it (e.g. one run's files).
    Damaged files (unreadable footer) are left out with a warning; with ``repair`` (a run holding
    the catalogue's lock) they are moved to ``.damaged/`` under the root, so the files they held
    are catalogued again.
    """
    from .schema import SCHEMA

    loc = resolve(out_uri)
    files = catalogue_files(out_uri)
    if name_prefix:
        files = [f for f in files if f.rsplit("/", 1)[-1].startswith(name_prefix)]
    if not files:
        return None
    part = pads.partitioning(pa.schema([pa.field(PARTITION_COLUMN, pa.string())]), flavor="hive")

    def dataset(paths):
        return pads.dataset(paths, schema=columns_schema or SCHEMA, filesystem=loc.fs, format="parquet",
                            partitioning=part, partition_base_dir=loc.path)

    ds = dataset(files)
    try:
        ds.count_rows()  # reads every footer
        return ds
    except Exception:
        pass
    bad = damaged_files(loc.fs, files)
    base = loc.path.rstrip("/")
    for f in bad:
        rel = f[len(base):].lstrip("/")
        if repair:
            target = f"{base}/{DAMAGED_DIR}/{rel}.damaged"
            try:
                loc.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
                loc.fs.move(f, target)
                log.warning("damaged catalogue file %s moved to %s: the files it held will be catalogued again",
                            redact(rel), redact(f"{DAMAGED_DIR}/{rel}.damaged"))
                continue
            except OSError as exc:
                log.warning("could not move damaged file %s aside: %s", redact(rel), redact(str(exc)))
        log.warning("damaged catalogue file %s left out (unreadable Parquet footer)", redact(rel))
    good = [f for f in files if f not in bad]
    return dataset(good) if good else None


def done_keys(out_uri: str, model_version: str, code: str | None = None, preprocessing: str | None = None,
              repair: bool = False) -> set[tuple[str, str]]:
    """(source_uri, etag) pairs the catalogue already settles for ``model_version``.

    A key is settled by any of its rows that :func:`survey_estimator.catalogue.status.is_done`
    accepts: ok and permanent rows; unexpected rows written by this ``code`` version and
    ``preprocessing`` version (defaults: the running ones); transient rows never.
    """
    from .status import code_version, is_done

    if code is None:
        code = code_version()
    if preprocessing is None:
        from ..preprocess import PREPROCESSING_VERSION as preprocessing
    ds = open_catalogue(out_uri, repair=repair)
    if ds is None:
        return set()
    flt = pc.field("model_version") == model_version
    cols = ["source_uri", "etag", "status", "error_class", "error", "code_version", "preprocessing_version"]
    rows = ds.to_table(columns=cols, filter=flt).to_pylist()
    return {(r["source_uri"], r["etag"]) for r in rows
            if is_done(r["status"], r["error_class"], r["error"], r["code_version"], r["preprocessing_version"], code, preprocessing)}


def new_work(files: list[ArchiveObject], done: set[tuple[str, str]]) -> list[ArchiveObject]:
    """Files whose (uri, etag) the catalogue does not hold yet."""
    return [f for f in files if (f.uri, f.etag) not in done]


def check_writable(out_uri: str) -> None:
    """Fail fast when the catalogue root's bucket cannot be reached."""
    if is_s3(out_uri):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, _ = _split_s3(out_uri)
        try:
            boto3_client(max_attempts=3).head_bucket(Bucket=bucket)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot reach catalogue bucket of {out_uri}: {redact(str(exc))}") from None
    else:
        loc = resolve(out_uri)
        try:
            loc.fs.create_dir(loc.path, recursive=True)
        except OSError as exc:
            raise StorageError(f"cannot create catalogue folder {out_uri}: {exc}") from None


"""What is in the archive, what the catalogue already holds, and so what is new.

An archive object is identified by ``(source_uri, etag)``; with the model version that makes the
key a catalogue row answers to. S3 listings come from boto3 (``list_objects_v2`` returns ETag and
size; pyarrow's filesystem listing has no ETag), with botocore's standard retry mode and
exponential backoff on throttling and transient errors. Local folders are walked recursively and
get a pseudo-ETag ``local-<size>-<mtime_ns>``.

Auxiliary pipeline products (blaze, wavelength, CCF, bisector, ...) are not catalogued; blaze
files are indexed by base name so an e2ds can be read with its blaze.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from ..storage import StorageError, is_s3, redact, resolve
from .schema import PARTITION_COLUMN, STATUS_ERROR, night_from_key

log = logging.getLogger(__name__)

FITS_SUFFIXES = (".fits", ".fits.gz", ".fit", ".fit.gz", ".fts")
AUXILIARY = re.compile(r"_(blaze|wave|ccf|bis|order_profile|loc|flat|ff|lamp|drift|bkg)_[A-Z]\.fits(\.gz)?$", re.I)
"""Pipeline products that are not science spectra (skipped; blaze files are indexed)."""
BLAZE = re.compile(r"_blaze_[A-Z]\.fits(\.gz)?$", re.I)
TRANSIENT_PREFIX = "transient:"
"""Error reasons starting with this are storage hiccups, retried on the next run."""


@dataclass(frozen=True)
class ArchiveObject:
    """One listed file: full URI, ETag, size (bytes) and the night its name suggests (or None)."""

    uri: str
    etag: str
    size: int
    night_hint: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Listing:
    """An archive listing: science files to catalogue and blaze files by base name -> URI."""

    files: tuple[ArchiveObject, ...]
    blaze: dict[str, str]


def blaze_key(name: str) -> str:
    """Lookup key of a blaze file name: base name, ':' as '-', without '.gz' (archives rename
    ``HARPS.2003-12-12T21:42:45.093_blaze_A.fits`` as in ``DRS BLAZE FILE`` to hyphens)."""
    return re.sub(r"\.gz$", "", name.rsplit("/", 1)[-1].strip()).replace(":", "-")


def is_fits_name(name: str) -> bool:
    return name.lower().endswith(FITS_SUFFIXES)


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def boto3_client(max_attempts: int = 8):
    """An S3 client from the standard AWS environment, with standard-mode retries and backoff."""
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    cfg = Config(retries={"max_attempts": max_attempts, "mode": "standard"}, connect_timeout=5, read_timeout=60)
    return boto3.client("s3", endpoint_url=endpoint, config=cfg)


def _list_s3(uri: str) -> list[tuple[str, str, int]]:
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
                out.append((f"s3://{bucket}/{item['Key']}", item["ETag"].strip('"'), int(item["Size"])))
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"cannot list archive {uri}: {redact(str(exc))}") from None
    return out


def _list_local(path: str) -> list[tuple[str, str, int]]:
    root = os.path.abspath(path)
    if not os.path.isdir(root):
        raise StorageError(f"archive folder {root} does not exist")
    return [stat_local(os.path.join(dirpath, name)) for dirpath, _dirs, names in os.walk(root) for name in names]


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

    Raises:
        StorageError: the bucket or folder cannot be reached (message without credentials).
    """
    raw = _list_s3(uri) if is_s3(uri) else _list_local(resolve(uri).path)
    files, blaze = [], {}
    for full, etag, size in sorted(raw):
        base = full.rsplit("/", 1)[-1]
        if not is_fits_name(base):
            continue
        if BLAZE.search(base):
            blaze[blaze_key(base)] = full
        if AUXILIARY.search(base):
            continue
        files.append(ArchiveObject(full, etag, size, night_from_key(base)))
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
    """Parquet files under a catalogue root (paths inside its filesystem); [] when absent."""
    loc = resolve(out_uri)
    return sorted(i.path for i in loc.list_files(recursive=True) if i.path.endswith(".parquet") and "/." not in i.path)


def open_catalogue(out_uri: str, columns_schema: pa.Schema | None = None, name_prefix: str | None = None) -> pads.Dataset | None:
    """The catalogue as a pyarrow dataset (Hive partitioning on ``night``), or None when empty.

    ``name_prefix`` keeps only files whose base name starts with it (e.g. one run's files).
    """
    from .schema import SCHEMA

    loc = resolve(out_uri)
    files = catalogue_files(out_uri)
    if name_prefix:
        files = [f for f in files if f.rsplit("/", 1)[-1].startswith(name_prefix)]
    if not files:
        return None
    part = pads.partitioning(pa.schema([pa.field(PARTITION_COLUMN, pa.string())]), flavor="hive")
    return pads.dataset(files, schema=columns_schema or SCHEMA, filesystem=loc.fs, format="parquet", partitioning=part, partition_base_dir=loc.path)


def done_keys(out_uri: str, model_version: str) -> set[tuple[str, str]]:
    """(source_uri, etag) pairs the catalogue already holds for ``model_version``.

    Error rows count as done (a broken file is not re-read every night) unless their reason is
    transient (a storage hiccup), which is retried.
    """
    ds = open_catalogue(out_uri)
    if ds is None:
        return set()
    flt = pc.field("model_version") == model_version
    table = ds.to_table(columns=["source_uri", "etag", "status", "error"], filter=flt)
    transient = pc.and_(pc.equal(table["status"], STATUS_ERROR), pc.fill_null(pc.starts_with(table["error"], TRANSIENT_PREFIX), False))
    keep = table.filter(pc.invert(transient))
    return set(zip(keep["source_uri"].to_pylist(), keep["etag"].to_pylist()))


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


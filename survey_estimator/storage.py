"""URIs to filesystems: a local path or ``s3://bucket/prefix``, through pyarrow filesystems.

S3 endpoint, region and credentials come from the standard AWS environment variables
(``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``, ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``), so AWS, MinIO, Ceph and moto all work.
Ray workers on a cluster do not inherit the driver's environment: never pass credentials in a
``runtime_env`` (Ray logs it in clear); :mod:`survey_estimator.ray_env` says how they travel.
Credentials are never formatted into messages: :func:`redact` strips them from any text.
"""
from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs

S3_ENV_VARS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)


class StorageError(RuntimeError):
    """Storage is unreachable or a path is missing; the message names the URI, never a secret."""


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def s3_env() -> dict[str, str]:
    """The S3 variables set in this process (credentials included: see :func:`~survey_estimator.ray_env.worker_env`)."""
    return {k: os.environ[k] for k in S3_ENV_VARS if os.environ.get(k)}


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3_filesystem(retries: int = 5, request_timeout_s: float | None = None,
                  connect_timeout_s: float | None = None) -> pafs.S3FileSystem:
    """pyarrow S3 filesystem configured from the environment, retrying transient errors.

    ``retries`` is the number of attempts per request (1: none, for callers that retry
    themselves, see :mod:`survey_estimator.catalogue.retry`); the timeouts bound one request.
    """
    kwargs: dict = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=retries)}
    if request_timeout_s is not None:
        kwargs["request_timeout"] = float(request_timeout_s)
    if connect_timeout_s is not None:
        kwargs["connect_timeout"] = float(connect_timeout_s)
    endpoint = _endpoint()
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        kwargs["region"] = region
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        kwargs.update(access_key=key, secret_key=secret, session_token=os.environ.get("AWS_SESSION_TOKEN"))
    return pafs.S3FileSystem(**kwargs)


@dataclass(frozen=True)
class Location:
    """A resolved URI: a pyarrow filesystem and the path inside it (no scheme)."""

    fs: pafs.FileSystem
    path: str
    uri: str

    def join(self, *parts: str) -> "Location":
        sep = "/" if not self.uri.endswith("/") else ""
        uri = self.uri + sep + "/".join(p.strip("/") for p in parts)
        path = "/".join([self.path.rstrip("/"), *[p.strip("/") for p in parts]])
        return Location(self.fs, path, uri)

    def exists(self) -> bool:
        return _info(self).type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return _info(self).type == pafs.FileType.Directory

    def read_bytes(self) -> bytes:
        try:
            with self.fs.open_input_stream(self.path) as f:
                return f.read()
        except (OSError, FileNotFoundError) as exc:
            raise StorageError(f"cannot read {self.uri}: {redact(str(exc))}") from None

    def write_bytes(self, data: bytes) -> None:
        """Write atomically where the filesystem allows (local: temp file + rename)."""
        try:
            parent = self.path.rsplit("/", 1)[0]
            if parent:
                self.fs.create_dir(parent, recursive=True)
            if isinstance(self.fs, pafs.LocalFileSystem):
                tmp = f"{self.path}.tmp-{os.getpid()}"
                with self.fs.open_output_stream(tmp) as f:
                    f.write(data)
                os.replace(tmp, self.path)
            else:
                with self.fs.open_output_stream(self.path) as f:
                    f.write(data)
        except OSError as exc:
            raise StorageError(f"cannot write {self.uri}: {redact(str(exc))}") from None

    def read_json(self) -> dict:
        return json.loads(self.read_bytes().decode())

    def write_json(self, obj) -> None:
        self.write_bytes(json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_npy(self):
        import numpy as np

        return np.load(io.BytesIO(self.read_bytes()), allow_pickle=False)

    def write_npy(self, array) -> None:
        import numpy as np

        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        self.write_bytes(buf.getvalue())

    def list_files(self, recursive: bool = True) -> list[pafs.FileInfo]:
        """Files under this location (empty when it does not exist)."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=recursive, allow_not_found=True))
        except OSError as exc:
            raise StorageError(f"cannot list {self.uri}: {redact(str(exc))}") from None
        return [i for i in infos if i.type == pafs.FileType.File]


def _info(loc: Location) -> pafs.FileInfo:
    try:
        return loc.fs.get_file_info(loc.path)
    except OSError as exc:
        raise StorageError(f"cannot reach {loc.uri}: {redact(str(exc))}") from None


def resolve(uri: str | os.PathLike) -> Location:
    """Resolve a local path or ``s3://bucket/key`` into a :class:`Location`."""
    uri = str(uri)
    if is_s3(uri):
        return Location(s3_filesystem(), uri[len("s3://") :].rstrip("/"), uri.rstrip("/"))
    if "://" in uri and not uri.startswith("file://"):
        raise StorageError(f"unsupported URI scheme in {uri!r}: use a local path or s3://")
    path = os.path.abspath(uri[len("file://") :] if uri.startswith("file://") else uri)
    return Location(pafs.LocalFileSystem(), path, path)


_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@]+@")
"""``scheme://user:password@`` (or ``scheme://token@``) in a URL."""
_SECRET_PATTERNS = [
    re.compile(r"(?i)(aws_secret_access_key|secret_key|secret|aws_session_token|session_token|password|token)(\s*[=:]\s*)(\S+)"),
    re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{12,}\b"),
]


def redact(text: str) -> str:
    """Remove credentials from ``text``: the values of the AWS variables in this environment, the
    user and password of URLs (``http://user:pw@host`` -> ``http://***@host``) and anything that
    looks like a key, secret or token assignment."""
    text = _URL_USERINFO.sub(r"\1***@", text)
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"):
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    for pat in _SECRET_PATTERNS:
        text = pat.sub(lambda m: (m.group(1) + m.group(2) + "***") if m.lastindex and m.lastindex >= 3 else "***", text)
    return text

"""Which model writes the catalogue: resolve ``--model`` to a local bundle folder and a version.

Accepted specs:

* ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``: the MLflow registry (tracking URI from
  ``MLFLOW_TRACKING_URI``); the alias is resolved to a version number once, on the driver, so
  every actor loads the same version even if the alias moves mid-run;
* ``s3://bucket/prefix``: a bundle folder in object storage (downloaded to a temp folder);
* a local bundle folder (``ModelBundle.load`` reads it);
* nothing: the default model, see :func:`resolve_default` (shipped bundle, else the registry's
  ``models:/stellar-estimator@production``).

The version written to the catalogue is the registry version, or for a folder the first 12 hex
digits of a SHA-256 over its files (so a retrained bundle at the same path is a new version).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..storage import StorageError, is_s3, redact, resolve

log = logging.getLogger(__name__)

_REGISTRY = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))$")


class ModelNotFoundError(RuntimeError):
    """The ``--model`` spec names no loadable bundle (absent, unknown version, refused by
    ``ModelBundle.load``); the message says which and why."""


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: the spec actors load from (pinned to a version) plus name and version."""

    spec: str
    name: str
    version: str


def _load(folder) :
    """``ModelBundle.load`` checking the preprocessing version against this code's."""
    from ..models.bundle import BundleError, ModelBundle

    try:
        from ..preprocess import PREPROCESSING_VERSION
    except ImportError:  # preprocessing not installed: the bundle's version is not checked
        PREPROCESSING_VERSION = None
    try:
        return ModelBundle.load(folder, expect_preprocessing=PREPROCESSING_VERSION)
    except BundleError as exc:
        raise ModelNotFoundError(f"model bundle {folder} refused: {exc}") from None


def folder_hash(path: str | os.PathLike) -> str:
    """12-hex SHA-256 over the relative names and bytes of every file under ``path``."""
    h = hashlib.sha256()
    root = Path(path)
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:12]


def _manifest_name(bundle, default: str) -> str:
    m = getattr(bundle, "manifest", None)
    if isinstance(m, dict):
        return str(m.get("name") or m.get("model_name") or default)
    return str(getattr(m, "name", None) or getattr(m, "model_name", None) or default)


def _mlflow_download(name: str, version: str, dst: str) -> Path:
    """The bundle files of registry version ``name``/``version``, downloaded into ``dst``."""
    from ..tracking import TrackingError, download_model

    try:
        path = download_model(f"models:/{name}/{version}", dst)
    except TrackingError as exc:
        raise ModelNotFoundError(redact(str(exc))) from None
    return path


def _s3_download(uri: str, dst: str) -> Path:
    """Copy the bundle under ``s3://...`` prefix ``uri`` into folder ``dst``: only the bundle's own
    file names (:func:`~survey_estimator.models.bundle.fetch_bundle`), each within its size limit;
    any other key under the prefix (``../x`` included) is ignored."""
    from ..models.bundle import BundleError, MANIFEST, fetch_bundle, max_file_bytes

    loc = resolve(uri)

    def fetch(name: str, target: Path) -> None:
        src = loc.join(name)
        if not src.exists():
            raise ModelNotFoundError(f"no model bundle at {uri}" if name == MANIFEST else f"{src.uri} is missing")
        size = src.fs.get_file_info(src.path).size
        if size is not None and size > max_file_bytes(name):
            raise ModelNotFoundError(f"{src.uri} is larger than {max_file_bytes(name)} bytes")
        target.write_bytes(src.read_bytes())

    try:
        return fetch_bundle(fetch, dst)
    except BundleError as exc:
        raise ModelNotFoundError(f"model bundle {uri} refused: {exc}") from None


def resolve_model(spec: str | None) -> ModelRef:
    """Resolve ``--model`` (see module doc) to a pinned :class:`ModelRef`; fails fast.

    ``spec=None`` resolves the default model (:mod:`survey_estimator.models.shipped`): the shipped
    bundle folder when it holds a bundle, else ``models:/stellar-estimator@production``.

    Raises:
        ModelNotFoundError: no spec and neither default exists (the message says how to train,
            ship or register one), unknown registry name/alias/version, or a folder that does not
            exist or that ``ModelBundle.load`` refuses.
    """
    if not spec:
        return resolve_default()
    m = _REGISTRY.match(spec)
    if m:
        from ..tracking import client as tracking_client

        name = m.group("name")
        try:
            client = tracking_client()
            if m.group("alias"):
                version = str(client.get_model_version_by_alias(name, m.group("alias")).version)
            else:
                version = str(client.get_model_version(name, m.group("version")).version)
        except Exception as exc:
            raise ModelNotFoundError(f"model {spec} not found in the registry: {redact(str(exc))}") from None
        return ModelRef(f"models:/{name}/{version}", name, version)
    if spec.startswith("models:"):
        raise ModelNotFoundError(f"model URI {spec!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")
    if is_s3(spec):
        try:
            with tempfile.TemporaryDirectory() as tmp:
                folder = _s3_download(spec, tmp)
                version = folder_hash(folder)
                name = _manifest_name(_load(folder), Path(spec).name)
        except StorageError as exc:
            raise ModelNotFoundError(f"cannot read model bundle {spec}: {exc}") from None
        return ModelRef(spec, name, version)
    path = Path(spec).expanduser().resolve()
    if not path.is_dir():
        raise ModelNotFoundError(f"model bundle folder {path} does not exist")
    bundle = _load(path)
    return ModelRef(str(path), _manifest_name(bundle, path.name), folder_hash(path))


def resolve_default() -> ModelRef:
    """The model used when no ``--model`` is given: the shipped bundle folder, else the registry's
    production alias, else :class:`ModelNotFoundError` saying how to get one.

    A shipped folder that ``ModelBundle.load`` refuses is an error, not a reason to fall back.
    """
    from ..models import shipped

    folder = shipped.default_bundle_path()
    if folder is not None:
        log.info("using the shipped model bundle %s", folder)
        return resolve_model(str(folder))
    if not shipped.registry_store_exists():
        raise ModelNotFoundError(shipped.no_model_message("that store does not exist"))
    try:
        ref = resolve_model(shipped.PRODUCTION_MODEL)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(shipped.no_model_message(str(exc))) from None
    log.info("using %s (version %s) from the registry", shipped.PRODUCTION_MODEL, ref.version)
    return ref


def load_bundle(ref: ModelRef):
    """Load the bundle a :class:`ModelRef` names (on an actor: downloads registry/S3 bundles)."""
    if _REGISTRY.match(ref.spec):
        return _load(_mlflow_download(ref.name, ref.version, tempfile.mkdtemp(prefix="se-model-")))
    if is_s3(ref.spec):
        return _load(_s3_download(ref.spec, tempfile.mkdtemp(prefix="se-model-")))
    return _load(ref.spec)

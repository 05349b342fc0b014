"""The one model resolver: every way a command names a model, to a pinned reference, to a bundle.

Every command that takes ``--model`` (``estimate``, ``catalogue``, ``evaluate``; ``register``'s
bundle argument; the demo through them) resolves it here, with :func:`resolve_model`, and loads it
with :func:`load_bundle` (on a Ray actor too). Specs, following MLflow's model URI conventions:

* ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/NAME/latest``: a version in the MLflow
  model registry (tracking URI from ``$MLFLOW_TRACKING_URI``, see :mod:`survey_estimator.tracking`).
  An alias (or ``latest``) is resolved to a version number once, by :func:`resolve_model`, so every
  actor loads the same version even if the alias moves mid-run;
* ``s3://bucket/prefix``: a bundle folder in object storage (:mod:`survey_estimator.storage`);
* a local bundle folder;
* nothing (None or ""): the default model, :func:`resolve_default`: the *shipped* bundle folder
  (:data:`PRODUCTION_DIR` inside the package, or ``$SURVEY_ESTIMATOR_BUNDLE``) when it holds a
  ``manifest.json``, else :data:`PRODUCTION_MODEL` from the registry, else a
  :class:`ModelNotFoundError` saying how to train, ship or register one.

A bundle is data only: whatever the store, :func:`fetch_model` copies exactly the bundle's own
files (:func:`~survey_estimator.models.bundle.fetch_bundle`: known names only, nothing outside the
folder, each within its size limit) and :meth:`ModelBundle.load` then requires the weights'
checksums. The version a catalogue row records (:attr:`ModelRef.version`) is the registry version,
or for a folder the first 12 hex digits of a SHA-256 over its files (:func:`folder_hash`), so a
retrained bundle at the same path is a new version.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..storage import StorageError, is_s3, redact, resolve
from ..tracking import DEFAULT_MODEL_NAME
from .bundle import MANIFEST, BundleError, fetch_bundle, max_file_bytes

if TYPE_CHECKING:  # pragma: no cover
    from .bundle import ModelBundle

log = logging.getLogger(__name__)

BUNDLE_ENV = "SURVEY_ESTIMATOR_BUNDLE"
"""Environment variable naming a folder to use instead of the package's ``production/`` folder."""
PRODUCTION_DIR = Path(__file__).resolve().parent / "production"
"""The folder a production bundle is shipped in (installed with the package)."""
PRODUCTION_ALIAS = "production"
PRODUCTION_MODEL = f"models:/{DEFAULT_MODEL_NAME}@{PRODUCTION_ALIAS}"
"""The registry fallback when nothing is shipped."""

_REGISTRY = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+|latest))")
Fetch = Callable[[str, Path], None]
"""``fetch(name, target)``: write the store's bundle file ``name`` to the local path ``target``."""


class ModelNotFoundError(RuntimeError):
    """A model spec names no loadable bundle (malformed, absent, unknown version, refused by
    :meth:`ModelBundle.load`); the message says which and why, never a credential."""


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: the spec to load it from (a registry spec pinned to its version, an
    ``s3://`` prefix or an absolute folder), its name and the version catalogue rows record."""

    spec: str
    name: str
    version: str


@dataclass(frozen=True)
class RegistryURI:
    """A parsed ``models:/`` URI: ``name`` with exactly one of ``alias`` or ``version`` (digits or
    ``latest``)."""

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, spec: str) -> "RegistryURI | None":
        """The parts of a ``models:/`` spec; None for any other spec; :class:`ModelNotFoundError`
        for a ``models:`` spec of another form (a stage name, a logged-model id, a typo)."""
        if not spec.startswith("models:"):
            return None
        m = _REGISTRY.fullmatch(spec)
        if not m:
            raise ModelNotFoundError(f"model URI {spec!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")
        return cls(m["name"], m["alias"], m["version"])

    def __str__(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


# -- resolving a spec ---------------------------------------------------------------------------
def resolve_model(spec: str | None) -> ModelRef:
    """Resolve a model spec (module doc) to a pinned :class:`ModelRef`; fails fast: the bundle is
    fetched and loaded once, so a refused or absent bundle is an error here, not on an actor.

    Raises:
        ModelNotFoundError: a malformed ``models:`` URI, an unknown registry name/alias/version,
            an ``s3://`` prefix or folder without a bundle, a bundle :meth:`ModelBundle.load`
            refuses (e.g. another preprocessing version), or no spec and no default model.
    """
    if not spec:
        return resolve_default()
    reg = RegistryURI.parse(spec)
    if reg is not None:
        version = str(_model_version(reg).version)
        ref = ModelRef(str(RegistryURI(reg.name, version=version)), reg.name, version)
        load_bundle(ref, device="cpu")
        return ref
    if is_s3(spec):
        with tempfile.TemporaryDirectory(prefix="se-model-") as tmp:
            return _folder_ref(spec, fetch_model(spec, tmp))
    path = Path(spec).expanduser().resolve()
    if not path.is_dir():
        raise ModelNotFoundError(f"model bundle folder {path} does not exist")
    return _folder_ref(str(path), path)


def _folder_ref(spec: str, folder: Path) -> ModelRef:
    """The ref of the bundle ``spec`` names, held in the local ``folder`` (loaded once: fail fast)."""
    return ModelRef(spec, load_bundle(str(folder), device="cpu").manifest.name or Path(spec).name, folder_hash(folder))


def resolve_default() -> ModelRef:
    """The model used when no spec is given: the shipped bundle folder, else
    :data:`PRODUCTION_MODEL` from the registry, else :class:`ModelNotFoundError` saying how to get
    one. A shipped folder that :meth:`ModelBundle.load` refuses is an error, not a reason to fall
    back; a sqlite registry that does not exist is not created by looking."""
    folder = default_bundle_path()
    if folder is not None:
        log.info("using the shipped model bundle %s", folder)
        return resolve_model(str(folder))
    if not registry_store_exists():
        raise ModelNotFoundError(no_model_message("that store does not exist"))
    try:
        ref = resolve_model(PRODUCTION_MODEL)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(no_model_message(str(exc))) from None
    log.info("using %s (version %s) from the registry", PRODUCTION_MODEL, ref.version)
    return ref


def _model_version(reg: RegistryURI):
    """The registry's ``ModelVersion`` that ``reg`` names now (an alias or ``latest`` looked up)."""
    from .. import tracking

    try:
        c = tracking.client()
        if reg.alias:
            return c.get_model_version_by_alias(reg.name, reg.alias)
        if reg.version == "latest":
            versions = c.search_model_versions(f"name = '{reg.name}'")
            if not versions:
                raise LookupError(f"registered model {reg.name!r} has no versions")
            return max(versions, key=lambda v: int(v.version))
        return c.get_model_version(reg.name, reg.version)
    except Exception as exc:  # MlflowException (unknown name/alias/version), connection errors
        raise ModelNotFoundError(f"model {reg} not found in the registry: {redact(str(exc))}") from None


# -- fetching and loading -----------------------------------------------------------------------
def fetch_model(spec: ModelRef | str, dst: str | os.PathLike) -> Path:
    """Copy the bundle that ``spec`` (a :class:`ModelRef` or a spec string other than the default)
    names into the local folder ``dst``: only its own files (:func:`fetch_bundle`), each checked
    against its size limit before it is copied. Returns ``dst``.

    Raises:
        ModelNotFoundError: no bundle there (no manifest, a weights file missing), a file over
            its limit, or storage/registry errors.
    """
    spec = spec.spec if isinstance(spec, ModelRef) else str(spec)
    reg = RegistryURI.parse(spec)
    try:
        if reg is not None:
            fetch = _registry_fetch(reg)
        elif is_s3(spec):
            fetch = _storage_fetch(spec)
        else:
            fetch = _storage_fetch(str(Path(spec).expanduser().resolve()))
        return fetch_bundle(fetch, dst)
    except BundleError as exc:
        raise ModelNotFoundError(f"model bundle {spec} refused: {exc}") from None
    except StorageError as exc:
        raise ModelNotFoundError(f"cannot read model bundle {spec}: {exc}") from None


def load_bundle(spec: ModelRef | str, device: str | None = None) -> "ModelBundle":
    """The :class:`ModelBundle` that ``spec`` (a :class:`ModelRef` or a spec string) names, checked
    against this code's preprocessing version; registry and ``s3://`` bundles are fetched into a
    temporary folder (removed once loaded). ``device``: default CUDA when available.

    Raises:
        ModelNotFoundError: as :func:`fetch_model`, or the bundle is refused by
            :meth:`ModelBundle.load`.
    """
    spec = spec.spec if isinstance(spec, ModelRef) else str(spec)
    if RegistryURI.parse(spec) is None and not is_s3(spec):
        return _load(Path(spec).expanduser(), device)
    with tempfile.TemporaryDirectory(prefix="se-model-") as tmp:
        return _load(fetch_model(spec, tmp), device)


def _load(folder: Path, device: str | None) -> "ModelBundle":
    """:meth:`ModelBundle.load` checking the preprocessing version against this code's."""
    from .bundle import ModelBundle

    try:
        from ..preprocess import PREPROCESSING_VERSION
    except ImportError:  # preprocessing not installed: the bundle's version is not checked
        PREPROCESSING_VERSION = None
    try:
        return ModelBundle.load(folder, expect_preprocessing=PREPROCESSING_VERSION, device=device)
    except BundleError as exc:
        raise ModelNotFoundError(f"model bundle {folder} refused: {exc}") from None


def _storage_fetch(uri: str) -> Fetch:
    """A :data:`Fetch` over a folder or ``s3://`` prefix (:func:`survey_estimator.storage.resolve`);
    a file is size-checked before it is read."""
    loc = resolve(uri)

    def fetch(name: str, target: Path) -> None:
        src = loc.join(name)
        if not src.exists():
            raise ModelNotFoundError(f"no model bundle at {uri}" if name == MANIFEST else f"{src.uri} is missing")
        try:
            size = src.fs.get_file_info(src.path).size
        except OSError as exc:
            raise StorageError(f"cannot reach {src.uri}: {redact(str(exc))}") from None
        if size is not None and size > max_file_bytes(name):
            raise ModelNotFoundError(f"{src.uri} is larger than {max_file_bytes(name)} bytes")
        target.write_bytes(src.read_bytes())

    return fetch


def _registry_fetch(reg: RegistryURI) -> Fetch:
    """A :data:`Fetch` over the artifact folder a registry version was registered from (its
    ``source``); each file is downloaded alone, so nothing else under that folder is written."""
    import mlflow

    from .. import tracking

    uri = tracking.tracking_uri()
    source = _model_version(reg).source.rstrip("/")

    def fetch(name: str, target: Path) -> None:
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            try:
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{source}/{name}", dst_path=tmp,
                                                                 tracking_uri=uri))
            except Exception as exc:  # mlflow raises several types for a missing artifact
                raise ModelNotFoundError(f"cannot download {name} of {reg}: {redact(str(exc))}") from None
            if not local.is_file():
                raise ModelNotFoundError(f"{name} of {reg} is not a file")
            if local.stat().st_size > max_file_bytes(name):
                raise ModelNotFoundError(f"{name} of {reg} is larger than {max_file_bytes(name)} bytes")
            os.replace(local, target)

    return fetch


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


# -- the default model ----------------------------------------------------------------------------
def shipped_dir() -> Path:
    """The folder checked for a shipped bundle: ``$SURVEY_ESTIMATOR_BUNDLE`` or :data:`PRODUCTION_DIR`."""
    env = os.environ.get(BUNDLE_ENV)
    return Path(env).expanduser().resolve() if env else PRODUCTION_DIR


def default_bundle_path() -> Path | None:
    """The shipped bundle folder when it holds a bundle (a ``manifest.json``), else None."""
    folder = shipped_dir()
    return folder if (folder / MANIFEST).is_file() else None


def registry_store_exists(uri: str | None = None) -> bool:
    """False when the tracking store is a sqlite file that does not exist (nothing registered
    there; looking would create an empty database); True for existing files and servers."""
    from .. import tracking

    uri = uri or tracking.tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).is_file()
    return True


def no_model_message(reason: str) -> str:
    """The error shown when no spec is given and neither default exists (``reason``: why the
    registry fallback failed)."""
    from .. import tracking

    return (
        f"no model to run: no --model given, no shipped bundle in {shipped_dir()} (no {MANIFEST}), "
        f"and no {PRODUCTION_MODEL} in the MLflow registry at {redact(tracking.tracking_uri())} ({reason}).\n"
        "Train one (survey-estimator train --grid GRID ...), then either copy its bundle "
        f"folder into {PRODUCTION_DIR}/ or register it with "
        f"`survey-estimator register BUNDLE_DIR --alias {PRODUCTION_ALIAS}`; "
        "or pass --model models:/NAME@ALIAS, models:/NAME/VERSION, s3://BUCKET/PREFIX or a bundle folder."
    )

"""Where the default model comes from when no ``--model`` is given (``estimate`` and ``catalogue``).

Resolution order (implemented by :func:`survey_estimator.catalogue.model.resolve_model` with
``spec=None``):

1. the *shipped* bundle folder: ``survey_estimator/models/production/`` inside the package, or the
   folder named by ``$SURVEY_ESTIMATOR_BUNDLE`` (deployments, tests), used when it holds a
   ``manifest.json``;
2. ``models:/stellar-estimator@production`` in the MLflow registry (``$MLFLOW_TRACKING_URI``, else
   the repository's sqlite store), when that store exists;
3. otherwise a :class:`~survey_estimator.catalogue.model.ModelNotFoundError` whose message
   (:func:`no_model_message`) says how to train, ship or register a model.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..storage import redact
from ..tracking import DEFAULT_MODEL_NAME

BUNDLE_ENV = "SURVEY_ESTIMATOR_BUNDLE"
"""Environment variable naming a folder to use instead of the package's ``production/`` folder."""
PRODUCTION_DIR = Path(__file__).resolve().parent / "production"
"""The folder a production bundle is shipped in (empty but for a README until one is trained)."""
PRODUCTION_ALIAS = "production"
PRODUCTION_MODEL = f"models:/{DEFAULT_MODEL_NAME}@{PRODUCTION_ALIAS}"
"""The registry fallback when nothing is shipped."""
MANIFEST = "manifest.json"


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
    """The error shown when no ``--model`` is given and neither default exists (``reason``: why
    the registry fallback failed)."""
    from .. import tracking

    return (
        f"no model to run: no --model given, no shipped bundle in {shipped_dir()} (no {MANIFEST}), "
        f"and no {PRODUCTION_MODEL} in the MLflow registry at {redact(tracking.tracking_uri())} ({reason}).\n"
        "Train one (survey-estimator train --grid GRID ...), then either copy its bundle "
        f"folder into {PRODUCTION_DIR}/ or register it with "
        f"`survey-estimator register BUNDLE_DIR --alias {PRODUCTION_ALIAS}`; "
        "or pass --model models:/NAME@ALIAS, models:/NAME/VERSION or a bundle folder."
    )

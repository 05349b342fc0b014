"""Register a model bundle in the MLflow model registry (a new version, optional alias).

BUNDLE is a bundle folder, an ``s3://`` bundle prefix or a registry version (``models:/NAME@ALIAS``,
``models:/NAME/VERSION``: e.g. to copy it under another name); only the bundle's own files are
registered, and a bundle this code refuses to load never enters the registry.

Example:
  survey-estimator register path/to/bundle --name stellar-estimator --alias production
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle folder (manifest.json + *.safetensors), s3://BUCKET/PREFIX or models:/ URI")
    p.add_argument("--name", default="stellar-estimator", help="registered model name")
    p.add_argument("--alias", default=None, help="alias to point at the new version (e.g. candidate, production)")
    p.add_argument("--experiment", default="survey-estimator", help="MLflow experiment of the registering run")
    p.add_argument("--tracking-uri", default=None, help="default $MLFLOW_TRACKING_URI or <repo>/mlflow/mlflow.db")


def run(args: argparse.Namespace) -> int:
    import sys

    from .. import tracking
    from ..models.resolve import ModelNotFoundError
    from ..storage import redact

    uri = tracking.configure(args.tracking_uri)
    try:
        mv = tracking.register_bundle_dir(args.bundle, name=args.name, alias=args.alias, experiment=args.experiment, uri=uri)
    except ModelNotFoundError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    print(f"registered models:/{args.name}/{mv.version}" + (f" (models:/{args.name}@{args.alias})" if args.alias else ""))
    return 0

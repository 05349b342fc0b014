"""Register a local model bundle directory in the MLflow model registry (a new version, optional alias).

Example:
  survey-estimator register path/to/bundle --name stellar-estimator --alias production
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle directory (manifest.json + *.safetensors)")
    p.add_argument("--name", default="stellar-estimator", help="registered model name")
    p.add_argument("--alias", default=None, help="alias to point at the new version (e.g. candidate, production)")
    p.add_argument("--experiment", default="survey-estimator", help="MLflow experiment of the registering run")
    p.add_argument("--tracking-uri", default=None, help="default $MLFLOW_TRACKING_URI or <repo>/mlflow/mlflow.db")


def run(args: argparse.Namespace) -> int:
    from .. import tracking

    uri = tracking.configure(args.tracking_uri)
    mv = tracking.register_bundle_dir(args.bundle, name=args.name, alias=args.alias, experiment=args.experiment, uri=uri)
    print(f"registered models:/{args.name}/{mv.version}" + (f" (models:/{args.name}@{args.alias})" if args.alias else ""))
    return 0

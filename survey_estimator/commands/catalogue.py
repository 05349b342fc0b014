"""Catalogue new archive spectra (FITS on S3 or disk) into a Parquet catalogue with Ray Data.

Lists the archive with ETags, skips what the catalogue already holds for the same model version,
reads and preprocesses on CPU tasks, denoises and estimates in those tasks (CPU clusters) or in an
actor pool (GPU with --num-gpus; --model-stage), and appends new Parquet files partitioned by night. Storage endpoint and credentials
come from the standard AWS_* variables; the registry from MLFLOW_TRACKING_URI.

examples:
  survey-estimator catalogue --archive s3://harpn-archive/raw --out s3://survey/catalogue \\
      --model models:/stellar-estimator@production --num-gpus 1 --actors 2
  ray job submit --working-dir . -- python jobs/catalogue.py --archive ... --out ... --since 2024-05-01
"""
from __future__ import annotations

import argparse
import json
import logging

from ..storage import StorageError, redact

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .estimate import add_fit_arguments

    parser.add_argument("--archive", required=True, help="s3://bucket/prefix or local folder (recursive; .fits, .fits.gz)")
    parser.add_argument("--out", required=True, help="catalogue root: s3://bucket/prefix or local folder")
    parser.add_argument("--model", default=None,
                        help="models:/NAME@ALIAS, models:/NAME/VERSION, s3:// or local bundle folder "
                             "(default: the shipped bundle in survey_estimator/models/production or "
                             "$SURVEY_ESTIMATOR_BUNDLE, else models:/stellar-estimator@production)")
    parser.add_argument("--night", default=None, help="only this observing night (YYYY-MM-DD)")
    parser.add_argument("--since", default=None, help="only nights on or after YYYY-MM-DD")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per model actor (0 = CPU)")
    parser.add_argument("--model-stage", choices=("auto", "tasks", "actors"), default="auto",
                        help="where the model runs: 'tasks' inside the read tasks (one model per worker process, no "
                             "pixels through the object store), 'actors' in an actor pool (--actors, --actor-cpus, "
                             "--num-gpus); auto (default): actors with --num-gpus, else tasks")
    parser.add_argument("--batch-size", type=int, default=16, help="spectra per model call")
    parser.add_argument("--actors", type=int, default=1, help="model actors in the pool (--model-stage actors)")
    parser.add_argument("--actor-cpus", type=float, default=0.5, help="CPUs reserved per model actor (fractional)")
    parser.add_argument("--read-batch-size", type=int, default=None,
                        help="files per read task (default: from the number of files and CPUs, 4-32)")
    parser.add_argument("--read-cpus", type=float, default=None,
                        help="CPUs reserved per read task (default: one read task per CPU beside the actors)")
    parser.add_argument("--actor-timeout", type=int, default=600, help="seconds to wait for the actor pool (GPU nodes) to start")
    parser.add_argument("--no-dae", action="store_true", help="estimate without the denoiser")
    parser.add_argument("--file-deadline", type=float, default=120.0,
                        help="seconds one file may take (fetch, blaze, read, preprocess) before it is a transient error row")
    parser.add_argument("--flush-rows", type=int, default=1000, help="save the rows every N rows ...")
    parser.add_argument("--flush-seconds", type=float, default=300.0, help="... or every S seconds")
    parser.add_argument("--break-lock", action="store_true",
                        help="remove another run's unexpired catalogue lock (only once sure that run is gone: docs/catalogue.md)")
    add_fit_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the run summary as JSON")


def config_from_args(args: argparse.Namespace):
    from ..catalogue.pipeline import CatalogueConfig

    return CatalogueConfig(
        archive=args.archive, out=args.out, model=args.model, night=args.night, since=args.since,
        num_gpus=args.num_gpus, model_stage=args.model_stage, batch_size=args.batch_size, actors=args.actors, actor_cpus=args.actor_cpus,
        read_batch_size=args.read_batch_size, read_cpus=args.read_cpus, actor_start_timeout_s=args.actor_timeout, use_dae=not args.no_dae,
        fit=not args.no_fit, grid=args.grid, file_deadline_s=args.file_deadline, flush_rows=args.flush_rows,
        flush_s=args.flush_seconds, break_lock=args.break_lock,
    )


def _print_summary(d: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(d, indent=1))
    else:
        print(f"run {d['run_id']}: model {d['model_name']} v{d['model_version']}; listed {d['listed']}, "
              f"selected {d['selected']}, skipped {d['skipped']}, processed {d['processed']}; "
              f"wrote {d['written']} rows ({d['ok']} ok, {d['permanent']} permanent, {d['transient']} transient, "
              f"{d['unexpected']} unexpected error; {d['lost']} lost) in {len(d['files'])} files, {d['seconds']:.1f} s")


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 done; 2 nothing done (bad arguments, storage or model unreachable, another
    run holds the lock); 3 stopped early by an outage (saved; rerun later); 128 + signal number
    after SIGTERM/SIGINT (saved)."""
    from ..models.resolve import ModelNotFoundError
    from ..catalogue.pipeline import CatalogueAborted, CatalogueError, CatalogueLocked, RunInterrupted, run_catalogue

    try:
        summary = run_catalogue(config_from_args(args))
    except CatalogueAborted as exc:
        log.error("%s", redact(str(exc)))
        _print_summary(exc.summary.as_dict(), args.json)
        print(f"error: {redact(str(exc))}")
        return 3
    except RunInterrupted as exc:
        log.error("%s; the rows made so far are saved", exc)
        print(f"error: {exc}; the rows made so far are saved")
        return 128 + exc.signum
    except (StorageError, ModelNotFoundError, CatalogueError, CatalogueLocked) as exc:
        log.error("%s", redact(str(exc)))
        print(f"error: {redact(str(exc))}")
        return 2
    _print_summary(summary.as_dict(), args.json)
    return 0

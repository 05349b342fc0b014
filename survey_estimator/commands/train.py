"""Train an estimator and/or the DAE on the synthetic grid with Ray Train, track it in MLflow, register it.

Runs on a local Ray (started on demand) or on the cluster of $RAY_ADDRESS / `ray job submit`.
Workers draw spectra with the grid sampler on their own device; GPUs are used when present.
Reusing --run-name resumes that run from its last checkpoint (e.g. with more --epochs).
--local trains in this process without Ray (one device); the grid may be a packed .npz
(`python -m survey_estimator.synth.packed STORE OUT.npz 0.00048828125`, see infra/gpu-train.sh).

Examples:
  survey-estimator train --grid grids/tiny --preset tiny --epochs 2 --steps-per-epoch 5 --batch-size 4
  ray job submit --working-dir . -- python jobs/train.py --grid s3://bucket/grid --num-workers 4 \\
      --storage s3://bucket/runs --run-name resnet-a
  python jobs/train.py --local --no-tracking --grid grid.npz --model resnet --bundle-out out/bundle
"""
from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)


def _bool_or_auto(value: str) -> bool | None:
    v = value.lower()
    if v in ("auto", ""):
        return None
    if v in ("1", "true", "yes", "on", "gpu"):
        return True
    if v in ("0", "false", "no", "off", "cpu"):
        return False
    raise argparse.ArgumentTypeError(f"expected auto | true | false, got {value!r}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..training.config import MODELS, TrainConfig

    d = TrainConfig.__dataclass_fields__

    def default(name):
        return d[name].default

    g = p.add_argument_group("data")
    g.add_argument("--grid", required=True, help="grid store URI (local directory or s3://)")
    g.add_argument("--snr-min", type=float, default=default("snr_min"), help="lowest training S/N (log-uniform)")
    g.add_argument("--snr-max", type=float, default=default("snr_max"), help="highest training S/N")
    g.add_argument("--split-seed", type=int, default=default("split_seed"), help="seed of the node split (keep fixed)")

    g = p.add_argument_group("model")
    g.add_argument("--task", choices=("estimator", "dae", "both"), default=default("task"),
                   help="train the estimator, the DAE, or both (the estimator on the DAE's output); "
                        "a DAE-only run logs its checkpoint but registers no bundle (a bundle needs an estimator)")
    g.add_argument("--dae", dest="task", action="store_const", const="both", help="shorthand for --task both")
    g.add_argument("--no-dae", dest="task", action="store_const", const="estimator", help="shorthand for --task estimator")
    g.add_argument("--model", choices=MODELS, default=default("model"),
                   help="estimator: the seed's resnet or attention net, patch (cheap on a CPU) or pca (a per-order PCA front end from the grid and an MLP: the most accurate per CPU hour)")
    g.add_argument("--head", choices=("diag", "full"), default="diag", help="diagonal or full covariance")
    g.add_argument("--preset", choices=("seed", "tiny"), default=default("preset"), help="network sizes")
    g.add_argument("--model-config", type=json.loads, default={}, metavar="JSON",
                   help='estimator config overrides, e.g. \'{"dropout": 0.2}\'')
    g.add_argument("--dae-config", type=json.loads, default={}, metavar="JSON", help="DAE config overrides")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=default("epochs"))
    g.add_argument("--steps-per-epoch", type=int, default=default("steps_per_epoch"))
    g.add_argument("--val-steps", type=int, default=default("val_steps"), help="validation batches per epoch per worker")
    g.add_argument("--batch-size", type=int, default=default("batch_size"), help="per worker")
    g.add_argument("--lr", type=float, default=default("lr"), help="estimator learning rate (Adam)")
    g.add_argument("--dae-lr", type=float, default=default("dae_lr"), help="DAE learning rate (AdamW)")
    g.add_argument("--weight-decay", type=float, default=default("weight_decay"))
    g.add_argument("--dae-weight-decay", type=float, default=default("dae_weight_decay"))
    g.add_argument("--lr-decay-epochs", type=int, default=default("lr_decay_epochs"),
                   help="multiply the learning rate by --lr-decay-factor for the last N epochs (0: never)")
    g.add_argument("--lr-decay-factor", type=float, default=default("lr_decay_factor"))
    g.add_argument("--grad-clip", type=float, default=default("grad_clip"), help="gradient norm clip (0: off)")
    g.add_argument("--nll-beta", type=float, default=default("nll_beta"),
                   help="train on the beta-NLL (Seitzer et al. 2022): weight each sample by its predicted variance^beta, "
                        "0: the plain NLL, 0.5: the paper's")
    g.add_argument("--echo", type=int, default=default("echo"),
                   help="data echoing: optimiser steps per fresh batch, on batches from a buffer of the front end's "
                        "features (--model pca, task estimator; 1: off)")
    g.add_argument("--echo-buffer", type=int, default=default("echo_buffer"), help="samples in the echoing buffer per worker")
    g.add_argument("--max-minutes", type=float, default=default("max_minutes"),
                   help="stop after the first epoch that ends past this many minutes (0: no limit)")
    g.add_argument("--no-amp", dest="amp", action="store_false", help="float32 throughout (default: bf16 autocast on GPUs and on CPUs with native bf16, AVX512-BF16 or AMX)")
    g.add_argument("--seed", type=int, default=default("seed"))

    g = p.add_argument_group("cluster and storage")
    g.add_argument("--local", action="store_true",
                   help="train in this process on one device, without Ray (a machine without it, e.g. a lent GPU node); "
                        "with --no-tracking it needs neither Ray nor MLflow")
    g.add_argument("--bundle-out", metavar="DIR", default=None, help="also copy the finished bundle to DIR")
    g.add_argument("--num-workers", type=int, default=default("num_workers"))
    g.add_argument("--use-gpu", type=_bool_or_auto, default=None, metavar="auto|true|false",
                   help="GPU workers (default auto: when the cluster has a GPU per worker)")
    g.add_argument("--cpus-per-worker", type=float, default=default("cpus_per_worker"))
    g.add_argument("--storage", default="", help="checkpoint storage (local dir or s3://; default <repo>/runs)")
    g.add_argument("--run-name", default="", help="Ray Train run name; reuse it to resume")
    g.add_argument("--keep-checkpoints", type=int, default=default("keep_checkpoints"))

    g = p.add_argument_group("tracking and registry")
    g.add_argument("--experiment", default=default("experiment"), help="MLflow experiment")
    g.add_argument("--tracking-uri", default="", help="MLflow URI (default $MLFLOW_TRACKING_URI or mlflow/mlflow.db)")
    g.add_argument("--no-tracking", action="store_true", help="no MLflow at all (no registry either)")
    g.add_argument("--register-name", default=default("register_name"), help="registered model name")
    g.add_argument("--alias", default=default("alias"), help="alias set on the new version ('' for none)")
    g.add_argument("--no-register", dest="register", action="store_false")
    g.add_argument("--eval-snr", type=float, nargs="+", default=list(default("eval_snr")), help="final test S/N values")
    g.add_argument("--eval-n", type=int, default=default("eval_n"), help="test spectra per S/N")
    g.add_argument("--no-eval", dest="eval", action="store_false", help="skip the final evaluation")


def config_from_args(args: argparse.Namespace):
    from ..training.config import TrainConfig

    return TrainConfig(
        grid=args.grid, task=args.task, model=args.model, head=args.head, preset=args.preset,
        model_overrides=args.model_config, dae_overrides=args.dae_config,
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, val_steps=args.val_steps, batch_size=args.batch_size,
        snr_min=args.snr_min, snr_max=args.snr_max, lr=args.lr, dae_lr=args.dae_lr, weight_decay=args.weight_decay,
        dae_weight_decay=args.dae_weight_decay, lr_decay_epochs=args.lr_decay_epochs, lr_decay_factor=args.lr_decay_factor,
        grad_clip=args.grad_clip, nll_beta=args.nll_beta, echo=args.echo, echo_buffer=args.echo_buffer, max_minutes=args.max_minutes, amp=args.amp, seed=args.seed, split_seed=args.split_seed,
        num_workers=args.num_workers, local=args.local, use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker,
        storage=args.storage, run_name=args.run_name, keep_checkpoints=args.keep_checkpoints,
        experiment=args.experiment, tracking_uri=args.tracking_uri, register_name=args.register_name, alias=args.alias,
        register=args.register, eval_snr=tuple(args.eval_snr), eval_n=args.eval_n, eval=args.eval,
    )


def run(args: argparse.Namespace) -> int:
    from ..training import run_training

    cfg = config_from_args(args)
    summary = run_training(cfg, track=not args.no_tracking)
    st = summary.fit.state
    if summary.report_markdown:
        print(summary.report_markdown)
    print(f"run {cfg.run_name}: epochs {st.starts[-1] + 1}-{st.epoch + 1} of {cfg.epochs} "
          f"(restarts at {st.starts}), checkpoints in {summary.fit.run_path}")
    if summary.mlflow_run_id:
        print(f"MLflow run {summary.mlflow_run_id}")
    if summary.model_version:
        print(f"registered models:/{cfg.register_name}/{summary.model_version}"
              + (f" (models:/{cfg.register_name}@{cfg.alias})" if cfg.alias else ""))
    elif summary.bundle_dir:
        print(f"bundle in {summary.bundle_dir}")
    if args.bundle_out and summary.bundle_dir:
        import shutil

        shutil.copytree(summary.bundle_dir, args.bundle_out, dirs_exist_ok=True)
        print(f"bundle copied to {args.bundle_out}")
    return 0

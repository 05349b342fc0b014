"""Score a model (registered version or bundle directory) on held-out grid nodes at fixed S/N.

Prints the MAE table (the seed's Table 2) and the 1/2-sigma coverage tables (Table 3), raw and
calibrated; writes figures and scores to --out; logs them to MLflow with --log.

Examples:
  survey-estimator evaluate --model models:/stellar-estimator@candidate --grid grids/full --snr 20 100
  survey-estimator evaluate --model path/to/bundle --grid grids/full --snr 100 --teff-range 4000 6000 --no-dae
"""
from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/N, runs:/ID/bundle or a bundle directory")
    p.add_argument("--grid", required=True, help="grid store URI (local directory or s3://)")
    p.add_argument("--snr", type=float, nargs="+", default=[20.0, 100.0], help="S/N of the test sets")
    p.add_argument("--split", choices=("test", "val", "train"), default="test", help="which grid nodes")
    p.add_argument("--n", type=int, default=2000, help="spectra per S/N")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--teff-range", type=float, nargs=2, metavar=("LO", "HI"), help="keep test labels with Teff in [LO, HI] K")
    p.add_argument("--use-dae", dest="use_dae", action="store_true", default=True, help="run the bundle's DAE first (default)")
    p.add_argument("--no-dae", dest="use_dae", action="store_false", help="skip the bundle's DAE")
    p.add_argument("--refit-calibration", action="store_true",
                   help="fit per-label sigma factors on validation nodes (default: the bundle's stored factors)")
    p.add_argument("--calibration-snr", type=float, nargs=2, default=[10.0, 200.0], metavar=("LO", "HI"))
    p.add_argument("--split-seed", type=int, default=None,
                   help="node split seed (default: the one the bundle was trained with, else 0)")
    p.add_argument("--seed", type=int, default=12345, help="random stream of the test spectra")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--out", default=None, help="directory for figures, report.md, scores.json")
    p.add_argument("--log", action="store_true", help="log the evaluation as an MLflow run")
    p.add_argument("--experiment", default="survey-estimator-evaluation", help="MLflow experiment for --log")


def run(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from .. import tracking
    from ..evaluation.evaluate import EvalConfig, evaluate_bundle

    bundle = tracking.load_registered_bundle(args.model, device=args.device)
    cfg = EvalConfig(
        snrs=tuple(args.snr), split=args.split, n=args.n, batch_size=args.batch_size,
        teff_range=tuple(args.teff_range) if args.teff_range else None, use_dae=args.use_dae,
        fit_calibration=args.refit_calibration, calibration_snr=tuple(args.calibration_snr),
        split_seed=args.split_seed if args.split_seed is not None else _trained_split_seed(bundle), seed=args.seed,
    )
    report = evaluate_bundle(bundle, args.grid, cfg)
    title = f"{args.model} ({bundle.manifest.architecture}, {bundle.manifest.head}"
    title += ", with DAE)" if (args.use_dae and bundle.dae is not None) else ", no DAE)"
    if cfg.teff_range:
        title += f", Teff {cfg.teff_range[0]:g}-{cfg.teff_range[1]:g} K"
    print(f"## {title}\n\n{report.markdown()}")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="evaluation-"))
    files = report.write(out)
    print(f"\n{len(files)} files in {out}")
    if args.log:
        uri = tracking.configure()
        exp = tracking.get_or_create_experiment(args.experiment, uri)
        c = tracking.client(uri)
        run = c.create_run(exp, run_name=f"evaluate-{bundle.manifest.name}", tags={"survey_estimator.kind": "evaluate"})
        tracking.log_params(run.info.run_id, {
            "model": args.model, "grid": args.grid, "split": args.split, "n": args.n, "snr": ",".join(f"{s:g}" for s in args.snr),
            "teff_range": args.teff_range, "use_dae": args.use_dae, "refit_calibration": args.refit_calibration,
            "bundle.grid_id": bundle.manifest.grid_id, "bundle.git_commit": bundle.manifest.git_commit,
        }, uri)
        tracking.log_metrics(run.info.run_id, report.flat_metrics(), step=0, uri=uri)
        c.log_artifacts(run.info.run_id, str(out), artifact_path="evaluation")
        c.set_terminated(run.info.run_id)
        print(f"MLflow run {run.info.run_id}")
    return 0


def _trained_split_seed(bundle) -> int:
    training = (bundle.manifest.metrics or {}).get("training") or {}
    return int(training.get("split_seed", 0))

"""Score a model on held-out grid nodes at fixed S/N, and on real stars beside literature values.

Prints the MAE table (the seed's Table 2) and the 1/2-sigma coverage tables (Table 3), raw and
calibrated; writes figures and scores to --out; logs them to MLflow with --log. With
--real-stars DIR it also runs the model on the real spectra of HD 41248, Gl 273 and Gl 581 found
in DIR (through the catalogue's reading code) and prints them beside literature values; for an
attention model it also draws the three attention maps under a real spectrum (the Sun's when DIR
has sun01_harps.fits, else the first star found) with the Mg b lines marked. With
--dae-checkpoint it puts the DAE of a `train --task dae` checkpoint in front of the model's
estimator (the with/without-DAE comparison); --save-bundle writes the bundle as evaluated (with
that DAE, and with the calibration refitted by --refit-calibration).

The model defaults to the shipped bundle (else models:/stellar-estimator@production).

Examples:
  survey-estimator evaluate --grid grids/full --snr 10 20 50 100 200 --real-stars ../shared/data/real
  survey-estimator evaluate --model models:/stellar-estimator@candidate --grid grids/full --snr 20 100
  survey-estimator evaluate --model path/to/bundle --grid grids/full --snr 100 --teff-range 4000 6000 --no-dae
"""
from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="models:/NAME@ALIAS, models:/NAME/N, s3:// or a bundle directory "
                                                  "(default: the shipped bundle, else models:/stellar-estimator@production)")
    p.add_argument("--grid", default=None, help="grid store URI (local directory or s3://) of the test nodes")
    p.add_argument("--real-stars", metavar="DIR", default=None,
                   help="also run the model on the real stars' files in DIR (e.g. ../shared/data/real)")
    p.add_argument("--dae-checkpoint", metavar="DIR", default=None,
                   help="put the DAE of this training checkpoint (a --task dae run) in front of the estimator")
    p.add_argument("--save-bundle", metavar="DIR", default=None, help="write the bundle as evaluated (--dae-checkpoint, --refit-calibration) to DIR "
                        "(default OUT/bundle whenever either changed it)")
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
    p.add_argument("--fit-n", type=int, default=200, help="spectra per S/N also fitted by the likelihood fit and scored "
                   "against the Cramer-Rao bound (0: the network alone)")
    p.add_argument("--fit-calibration-out", default=None, metavar="FILE",
                   help="calibrate the fit's statistical sigmas by S/N on this run's fits (--fit-n per --snr) and write "
                        "the record (JSON; ship it as survey_estimator/data/grids/<grid id>.calibration.json)")
    p.add_argument("--between-nodes", type=int, default=0, metavar="N",
                   help="also fit N spectra synthesised directly with PySME at labels between the grid nodes "
                        "(~10 CPU-s each, cached; needs --grid of the default PySME physics)")
    p.add_argument("--between-realisations", type=int, default=5, metavar="K",
                   help="noise realisations per between-node spectrum and S/N")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--out", default=None, help="directory for figures, report.md, scores.json")
    p.add_argument("--log", action="store_true", help="log the evaluation as an MLflow run")
    p.add_argument("--experiment", default="survey-estimator-evaluation", help="MLflow experiment for --log")


def _write_fit_calibration(report, args, grid_id: str):
    """Fit :class:`~survey_estimator.fit.calibration.SigmaCalibration` on the report's fits, write it."""
    import datetime
    from pathlib import Path

    import numpy as np

    from ..fit.calibration import SigmaCalibration
    from ..forward import FORWARD_VERSION

    fits = list(report.fits.values())
    cat = {k: np.concatenate([getattr(f, k) for f in fits]) for k in ("true", "mean", "sigma_stat", "snr")}
    nodes = [float(np.median(f.snr)) for f in fits]
    cal = SigmaCalibration.fit(cat["mean"] - cat["true"], cat["sigma_stat"], cat["snr"], nodes=nodes,
                               min_n=min(100, min(len(f.snr) for f in fits)))
    path = Path(args.fit_calibration_out)
    path.parent.mkdir(parents=True, exist_ok=True)
    cal.write(path, grid_id=grid_id, forward=FORWARD_VERSION, seed=args.seed, nominal_snr=list(args.snr),
              what="geometric mean of the 68.27 % quantile and half the 95.45 % quantile of |fit - truth| / raw inverse-Fisher sigma, per label and S/N bin, on held-out "
                   "spectra drawn inside the grid's cells (evaluate --fit-n)",
              command=f"survey-estimator evaluate --grid {args.grid} --snr {' '.join(f'{s:g}' for s in args.snr)} "
                      f"--n {args.n} --fit-n {args.fit_n} --seed {args.seed} --fit-calibration-out FILE",
              measured=datetime.date.today().isoformat())
    print(f"\nfit sigma calibration written to {path}: " + "; ".join(
        f"S/N {s:.0f}: " + " ".join(f"{v:.3f}" for v in sc) for s, sc in zip(cal.snr, cal.scale)))
    return path


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    import tempfile
    from pathlib import Path

    from ..models.resolve import ModelNotFoundError, load_bundle, resolve_model

    if not args.grid and not args.real_stars:
        print("error: give --grid (held-out test nodes) and/or --real-stars DIR", file=sys.stderr)
        return 2
    try:
        ref = resolve_model(args.model)
        bundle = load_bundle(ref)
    except ModelNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.device:
        bundle.to(args.device)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="evaluation-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.dae_checkpoint:
        from ..training.pipeline import dae_from_checkpoint

        try:
            bundle = bundle.with_dae(dae_from_checkpoint(args.dae_checkpoint))
        except (FileNotFoundError, KeyError) as exc:
            print(f"error: --dae-checkpoint: {exc}", file=sys.stderr)
            return 2
    name = args.model or ref.spec
    title = f"{name} ({bundle.manifest.architecture}, {bundle.manifest.head}"
    title += ", with DAE)" if (args.use_dae and bundle.dae is not None) else ", no DAE)"
    metrics: dict[str, float] = {}
    if args.grid:
        from ..evaluation.evaluate import EvalConfig, evaluate_bundle

        cfg = EvalConfig(
            snrs=tuple(args.snr), split=args.split, n=args.n, batch_size=args.batch_size,
            teff_range=tuple(args.teff_range) if args.teff_range else None, use_dae=args.use_dae,
            fit_calibration=args.refit_calibration, calibration_snr=tuple(args.calibration_snr),
            split_seed=args.split_seed if args.split_seed is not None else _trained_split_seed(bundle), seed=args.seed,
            fit_n=args.fit_n,
        )
        from ..evaluation.evaluate import sampler_for

        sampler = sampler_for(args.grid, cfg, args.device or bundle.device)
        report = evaluate_bundle(bundle, args.grid, cfg, sampler=sampler)
        if cfg.fit_calibration:
            bundle.apply_calibration(report)
        if cfg.teff_range:
            title += f", Teff {cfg.teff_range[0]:g}-{cfg.teff_range[1]:g} K"
        print(f"## {title}\n\n{report.markdown()}")
        files = report.write(out)
        metrics = report.flat_metrics()
        if args.fit_calibration_out and report.fits:
            files.append(_write_fit_calibration(report, args, sampler.grid_id))
        if args.between_nodes > 0:
            from ..evaluation.between_nodes import BetweenNodesConfig, evaluate_between_nodes

            between = evaluate_between_nodes(bundle, sampler, cfg, report.calibration,
                                             BetweenNodesConfig(n=args.between_nodes, snrs=tuple(args.snr),
                                                                realisations=args.between_realisations))
            print(f"\n{between.markdown()}")
            (out / "between_nodes.md").write_text(between.markdown() + "\n")
            (out / "between_nodes.json").write_text(json.dumps(between.record(sampler.grid_id), indent=1) + "\n")
            files += [out / "between_nodes.md", out / "between_nodes.json"]
            from ..evaluation import plots

            for key, f in between.fits.items():
                slug = key.lower().replace("s/n ", "snr")
                files.append(plots.residual_plot(f.true, f.mean, out / f"residuals_between_nodes_{slug}.png",
                                                 title=f"fit residuals, PySME spectra between nodes, {key}"))
            metrics.update(between.flat_metrics())
        print(f"\n{len(files)} files in {out}")
    if args.dae_checkpoint or args.save_bundle or (args.grid and args.refit_calibration):
        # real stars and --save-bundle see the bundle exactly as evaluated (DAE, refitted calibration)
        bundle.manifest.metrics = {**bundle.manifest.metrics, **metrics}  # the latest scores beside the training record
        saved = bundle.save(args.save_bundle or out / "bundle")
        ref = resolve_model(str(saved))
        print(f"bundle as evaluated (DAE, calibration) in {saved}")
    if args.real_stars:
        from ..evaluation.real_stars import check_real_stars, markdown

        rows = check_real_stars(ref, args.real_stars, use_dae=args.use_dae)
        table = markdown(rows)
        print(f"\n## Real stars, {title}\n\n{table}")
        (out / "real_stars.md").write_text(table + "\n")
        (out / "real_stars.json").write_text(json.dumps(rows, indent=1))
        sun = Path(args.real_stars) / "sun01_harps.fits"
        if sun.is_file():  # the grid against reality: the best fit's residual per order
            from ..evaluation.real_stars import fit_residual

            try:
                resid = fit_residual(ref, str(sun), str(out / "solar_residual.png"))
            except FileNotFoundError as exc:  # the model's grid is not here: the rest of the check stands
                print(f"\nbest fit of the real Sun skipped: {exc}")
                resid = None
            if resid is not None:
                (out / "solar_residual.json").write_text(json.dumps(resid, indent=1))
                print("\nbest fit of the real Sun (sun01_harps.fits): rms of data - model per order (%): "
                      + ", ".join(f"{v:.2f}" for v in resid["rms_percent"]) + "; noise (%): "
                      + ", ".join(f"{v:.2f}" for v in resid["noise_percent"]))
        if bundle.manifest.architecture == "attention":  # the seed's Fig. 5 on a real star: the Sun, else the first found
            from ..evaluation.evaluate import attention_line_text
            from ..evaluation.real_stars import attention_of_star, find_files

            star = sun if sun.is_file() else Path(next(iter(find_files(args.real_stars).values())))
            att = attention_of_star(ref, str(star), str(out / "attention_real.png"), use_dae=args.use_dae)
            (out / "attention_real.json").write_text(json.dumps(att, indent=1))
            metrics.update({f"real/attention_mgb_enrichment_block{b + 1}": v for b, v in enumerate(att["mgb"]["enrichment"])})
            print(f"\nattention maps of {att['file']} in {out / att['png']}. {attention_line_text(att['mgb'])}")
    if args.log:
        _log_run(args, bundle, metrics, out)
    return 0


def _log_run(args: argparse.Namespace, bundle, metrics: dict[str, float], out) -> None:
    """The evaluation as an MLflow run: params, flat metrics, and the --out folder as artifacts."""
    from .. import tracking

    uri = tracking.configure()
    exp = tracking.get_or_create_experiment(args.experiment, uri)
    c = tracking.client(uri)
    run = c.create_run(exp, run_name=f"evaluate-{bundle.manifest.name}", tags={"survey_estimator.kind": "evaluate"})
    tracking.log_params(run.info.run_id, {
        "model": args.model, "grid": args.grid, "split": args.split, "n": args.n, "snr": ",".join(f"{s:g}" for s in args.snr),
        "teff_range": args.teff_range, "use_dae": args.use_dae, "refit_calibration": args.refit_calibration,
        "dae_checkpoint": args.dae_checkpoint, "real_stars": args.real_stars,
        "bundle.grid_id": bundle.manifest.grid_id, "bundle.git_commit": bundle.manifest.git_commit,
    }, uri)
    if metrics:
        tracking.log_metrics(run.info.run_id, metrics, step=0, uri=uri)
    c.log_artifacts(run.info.run_id, str(out), artifact_path="evaluation")
    c.set_terminated(run.info.run_id)
    print(f"MLflow run {run.info.run_id}")


def _trained_split_seed(bundle) -> int:
    training = (bundle.manifest.metrics or {}).get("training") or {}
    return int(training.get("split_seed", 0))

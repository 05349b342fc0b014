"""Run the whole system end to end on embedded defaults: grid, training, archive, catalogue, query.

Everything is local: a local Ray, a local folder as the archive, MLflow on the sqlite store under
mlflow/ (or $MLFLOW_TRACKING_URI), outputs under --workdir. Steps (each is also its own command):

  1. build-grid   a small real PySME grid (or --backend analytic for a cheap one)
  2. train        a short Ray Train run of a tiny residual network + DAE, registered in MLflow
                  (a smoke test of the machinery: minutes of CPU, not a useful estimator)
  3. simulate     a mock HARPS-N archive of e2ds files at known labels over two nights
  4. catalogue    the archive -> Parquet catalogue with the registered model (Ray Data)
  5. query        DuckDB over the catalogue: the fitted estimates (and the network's first guess)
                  beside the true labels

A rerun reuses the grid and the archive and adds no catalogue rows (the catalogue is incremental).
"""
from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path

import numpy as np

from ..cli import run_command

log = logging.getLogger(__name__)

DEMO_RANGES = {"teff": (5250, 6000), "logg": (4.0, 5.0), "mh": (-0.5, 0.0)}
"""The demo grid: 4 x 3 x 2 = 24 nodes of solar-type dwarfs."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="demo-output", help="where the grid, archive, runs and catalogue go")
    parser.add_argument("--backend", choices=("pysme", "analytic"), default="pysme",
                        help="synthesis backend of the demo grid (pysme: real spectra, ~1-2 min)")
    parser.add_argument("--files", type=int, default=16, help="simulated observations in the mock archive")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs")
    parser.add_argument("--steps-per-epoch", type=int, default=40, help="training steps per epoch")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (higher than the seed's 1e-4: a short run)")
    parser.add_argument("--model-name", default="stellar-estimator-demo", help="registered model name")


def _mock_archive(grid: str, archive: Path, n: int) -> list[tuple]:
    """Write ``n`` e2ds files at random labels inside the demo grid over two nights."""
    from ..e2ds_writer import E2dsSimulator, Exposure

    rng = np.random.default_rng(7)
    exposures = []
    for i in range(n):
        night = "2016-01-07" if i % 2 == 0 else "2016-01-08"
        hh = 21 + (i // 2) % 3
        exposures.append(Exposure(
            teff=float(rng.uniform(5300, 5950)), logg=float(rng.uniform(4.05, 4.95)),
            mh=float(rng.uniform(-0.45, -0.05)), vsini=float(rng.uniform(0, 15)),
            snr=float(rng.uniform(60, 150)), rv=float(rng.uniform(-40, 40)), berv=float(rng.uniform(-25, 25)),
            seed=i, date_obs=f"{night}T{hh:02d}:{(7 * i) % 60:02d}:{(13 * i) % 60:02d}.000",
            object_name=f"SIM-{i:03d}",
        ))
    night_dirs = {}
    for e in exposures:
        night_dirs.setdefault(e.date_obs[:10], []).append(e)
    sim = E2dsSimulator(grid)
    for night, group in night_dirs.items():
        sim.write_many(archive / night, group)
    return [(e.object_name, e.teff, e.logg, e.mh, e.vsini) for e in exposures]


def _run_name(work: Path) -> str:
    """One training run (Ray Train and MLflow) per demo folder: a rerun resumes it, another
    folder starts its own."""
    return "demo-" + hashlib.sha1(str(work).encode()).hexdigest()[:8]


def run(args: argparse.Namespace) -> int:
    work = Path(args.workdir).resolve()
    grid, archive, catalogue = work / "grid", work / "archive", work / "catalogue"
    log.info("demo: working in %s", work)

    log.info("step 1/5: build-grid (%s backend)", args.backend)
    grid_args = ["--out", str(grid), "--backend", args.backend, "--no-molecules", "--num-cpus", "2"]
    for name, (lo, hi) in DEMO_RANGES.items():
        grid_args += [f"--{name}", str(lo), str(hi)]
    if run_command("build-grid", grid_args):
        return 1

    log.info("step 2/5: train (tiny ResNet + DAE, %d epochs)", args.epochs)
    if run_command("train", [
        "--grid", str(grid), "--preset", "tiny", "--task", "both", "--epochs", str(args.epochs),
        "--steps-per-epoch", str(args.steps_per_epoch), "--batch-size", "16", "--num-workers", "1", "--lr", str(args.lr), "--dae-lr", str(args.lr),
        "--storage", str(work / "runs"), "--run-name", _run_name(work), "--register-name", args.model_name,
        "--alias", "candidate", "--eval-n", "64", "--lr-decay-epochs", "0",
    ]):
        return 1

    log.info("step 3/5: simulate a mock archive of %d observations", args.files)
    truth_csv = work / "truth.csv"
    if not truth_csv.exists():
        truth = _mock_archive(str(grid), archive, args.files)
        truth_csv.write_text("object,true_teff,true_logg,true_mh,true_vsini\n"
                             + "".join(f"{o},{t:.1f},{g:.4f},{m:.4f},{v:.3f}\n" for o, t, g, m, v in truth))
        log.info("wrote %d e2ds files under %s (true labels in %s)", len(truth), archive, truth_csv)
    else:
        log.info("archive exists, reusing it")

    log.info("step 4/5: catalogue the archive with models:/%s@candidate", args.model_name)
    if run_command("catalogue", ["--archive", str(archive), "--out", str(catalogue),
                                 "--model", f"models:/{args.model_name}@candidate"]):
        return 1

    log.info("step 5/5: query the catalogue with DuckDB")
    return run_command("query", ["--catalogue", str(catalogue),
                                 "SELECT night, object, status, method, round(snr) AS snr, round(teff) AS teff, "
                                 "round(teff_err) AS teff_err, t.true_teff, round(logg, 3) AS logg, round(logg_err, 3) AS logg_err, "
                                 "t.true_logg, round(mh, 3) AS mh, round(mh_err, 3) AS mh_err, t.true_mh, round(vsini, 2) AS vsini, "
                                 "round(vsini_err, 2) AS vsini_err, t.true_vsini, round(chi2_red, 2) AS chi2_red, round(nn_teff) AS nn_teff "
                                 f"FROM latest JOIN read_csv('{truth_csv}') t USING (object) ORDER BY object"])

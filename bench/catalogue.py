"""Benchmark the catalogue job: end-to-end files/s against a naive loop and the read-only ceilings.

On a local archive of N simulated HARPS-N e2ds files (default 500, several nights; analytic tiny
grid, untrained tiny model unless --model is given) it measures, in one run:

* ``read_loop``:  listing + FITS reading alone (``read_observation``), one process, plain loop;
* ``read_ray``:   listing + FITS reading alone as Ray Data tasks (the parallel read ceiling);
* ``naive``:      a plain loop: open, preprocess, run the model one file at a time;
* ``pipeline``:   ``run_catalogue`` end to end (list, skip, read+preprocess tasks, model actors,
  Parquet), into a fresh catalogue folder, with the network alone (``--no-fit``);
* ``pipeline_with_fit``: the same with the likelihood fit on the shipped packed grid (the
  default path of ``catalogue``; ``--skip-fit`` leaves it out).

Usage: python bench/catalogue.py [--n 500] [--workdir /tmp/se-bench-catalogue] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

log = logging.getLogger("bench.catalogue")


def make_archive(workdir: Path, n: int) -> Path:
    """N simulated e2ds files over 5 nights (+ one shared blaze per night) under workdir/archive."""
    import numpy as np

    from survey_estimator.e2ds_writer import E2dsSimulator, Exposure
    from survey_estimator.synth.backend import BackendConfig
    from survey_estimator.synth.build import BuildConfig, GridRanges, build_grid

    grid = workdir / "grid"
    if not (grid / "manifest.json").exists():
        build_grid(BuildConfig(out=str(grid), backend=BackendConfig(name="analytic"),
                               ranges=GridRanges(teff=(5000, 6000), logg=(4.0, 5.0), mh=(-0.5, 0.0)),
                               use_ray=False, progress=False))
    archive = workdir / f"archive-{n}"
    have = len(list(archive.rglob("*_e2ds_A.fits"))) if archive.exists() else 0
    if have == n:
        return archive
    sim = E2dsSimulator(str(grid))
    rng = np.random.default_rng(0)
    per_night = -(-n // 5)
    for k in range(5):
        night = f"2016-01-{10 + k:02d}"
        count = min(per_night, n - k * per_night)
        ex = [Exposure(rng.uniform(5050, 5950), rng.uniform(4.1, 4.9), rng.uniform(-0.45, -0.05), rng.uniform(0, 10),
                       snr=80.0, seed=1000 * k + i, object_name=f"BENCH-{k}-{i}",
                       date_obs=f"2016-01-{11 + k:02d}T{i // 3600 % 6:02d}:{i // 60 % 60:02d}:{i % 60:02d}.000")
              for i in range(count)]
        sim.write_many(archive / night, ex, blaze_name=f"HARPN.{night}_blaze_A.fits")
    return archive


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def read_only(files):
    from survey_estimator.instruments import read_observation

    for f in files:
        read_observation(f.uri)


def _read_only_batch(batch):
    import numpy as np

    from survey_estimator.instruments import read_observation

    return {"ok": np.array([read_observation(str(u)).flux.size > 0 for u in batch["uri"]])}


def read_ray(archive: Path):
    import ray

    from survey_estimator.catalogue.inventory import list_archive

    files = list_archive(str(archive)).files
    ds = ray.data.from_items([f.as_dict() for f in files], override_num_blocks=max(1, len(files) // 4))
    return ds.map_batches(_read_only_batch, batch_size=4, batch_format="numpy").count()


def naive(files, blaze, model_dir):
    """Open, preprocess, predict one file at a time (the blaze read from disk each time, as a script would)."""
    from survey_estimator.models.resolve import resolve_model, load_bundle
    from survey_estimator.catalogue.read import ReadOptions, read_one

    bundle = load_bundle(resolve_model(str(model_dir)))
    opts = ReadOptions(blaze=blaze)
    for f in files:
        row = read_one(f.uri, opts)
        if row["status"] == "ok":
            bundle.predict(row["x"][None], use_dae=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--workdir", default="/tmp/se-bench-catalogue")
    p.add_argument("--model", default=None, help="bundle folder or models:/ URI (default: an untrained tiny bundle)")
    p.add_argument("--naive-n", type=int, default=None, help="files for the naive loop (default: all; its rate is per file)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--skip-fit", action="store_true", help="measure the pipeline without the likelihood fit only")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    t_make, archive = _timed(lambda: make_archive(workdir, args.n))
    log.info("archive of %d files ready in %.1f s", args.n, t_make)
    model = args.model
    if model is None:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from catalogue_testing import save_tiny_bundle

        model = str(save_tiny_bundle(workdir / "tiny-bundle"))

    from survey_estimator.catalogue.inventory import list_archive
    from survey_estimator.catalogue.pipeline import CatalogueConfig, ensure_ray, run_catalogue

    results: dict = {"n_files": args.n, "cpus": os.cpu_count(), "machine": platform.platform(),
                     "load_avg_start": os.getloadavg()[0]}
    t_list, listing = _timed(lambda: list_archive(str(archive)))
    results["list_s"] = t_list
    t, _ = _timed(lambda: read_only(listing.files))
    results["read_loop_files_per_s"] = args.n / (t + t_list)
    nn = args.naive_n or args.n
    t, _ = _timed(lambda: naive(listing.files[:nn], listing.blaze, model))
    results["naive_files_per_s"] = nn / t
    ensure_ray()
    t, count = _timed(lambda: read_ray(archive))
    results["read_ray_files_per_s"] = count / (t + t_list)
    from survey_estimator.fit.grid import default_grid

    runs = (("pipeline_files_per_s", False),) if args.skip_fit else (("pipeline_files_per_s", False), ("pipeline_with_fit_files_per_s", True))
    for key, fit in runs:
        out = workdir / f"catalogue-{int(time.time())}-{key}"
        t, summary = _timed(lambda: run_catalogue(CatalogueConfig(
            archive=str(archive), out=str(out), model=model, batch_size=args.batch_size, actors=args.actors,
            fit=fit, grid=default_grid() if fit else None)))
        results[key] = summary.processed / t
        results[key.replace("files_per_s", "rows")] = {"ok": summary.ok, "error": summary.errors}
    results["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

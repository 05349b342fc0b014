"""Benchmark the catalogue job: the one-core read loop, the parallel read ceiling and the pipeline.

On a local archive of N simulated HARPS-N e2ds files (default 500, several nights; analytic tiny
grid, untrained tiny model unless --model is given) it measures, in one run:

* ``cpu_ms_per_file``: CPU time (one process, one BLAS/torch thread) per file of each step of
  the read stage: ``fetch`` (bytes), ``read`` (header scan, image, wavelengths, blaze lookup and
  division, checks), ``preprocess`` (model input); the fairest figure on a loaded machine;
* ``loop``: the read stage (``read_one``: fetch, read, preprocess) in a plain one-process loop;
* ``read_ceiling``: the same read stage alone as Ray Data tasks (``read_batch``, sized by the
  pipeline's own :func:`~survey_estimator.catalogue.pipeline.read_plan`), after a warm-up that
  starts the workers: the parallel read ceiling;
* ``naive``: a plain loop: open, preprocess, run the model one file at a time;
* ``pipeline``: ``run_catalogue`` end to end (list, skip, read+preprocess tasks, the model, Parquet),
  into a fresh catalogue folder, with the network alone (``fit=False``); the model stage as
  ``--model-stage`` says (default auto: inside the read tasks on a CPU machine);
* ``pipeline_with_fit``: the same with the likelihood fit on the shipped packed grid (the
  default path of ``catalogue``; ``--skip-fit`` leaves it out).

It prints files/s, the ratios (ceiling / loop, pipeline / ceiling), a projection for a 16-core node
(CPU-bound: 16 x the one-core rate x the parallel efficiency measured here; the GPU's model stage
is not measured without a GPU) and the machine with its load average.

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

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # the loop is one core; Ray's workers get one thread each too

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


def cpu_per_file(files, blaze) -> dict:
    """CPU ms per file (one process) of each step of the read stage, and the loop's files/s."""
    import torch

    from survey_estimator import preprocess as pp
    from survey_estimator.catalogue.read import ReadOptions, _blaze_source, fetch
    from survey_estimator.instruments import read_observation

    torch.set_num_threads(1)
    opts = ReadOptions(blaze=blaze)
    pp.preprocess(read_observation(files[0].uri))  # warm-up: imports, caches
    cpu = dict(fetch=0.0, read=0.0, preprocess=0.0)
    t0 = time.perf_counter()
    for f in files:
        name = f.uri.rsplit("/", 1)[-1]
        c0 = time.process_time()
        data = fetch(f.uri, opts=opts)
        c1 = time.process_time()
        obs = read_observation((name, data), blaze=lambda h: _blaze_source(name, h, opts, lambda u: fetch(u, opts=opts)),
                               band_only=True)
        c2 = time.process_time()
        pp.preprocess(obs)
        c3 = time.process_time()
        cpu["fetch"] += c1 - c0
        cpu["read"] += c2 - c1
        cpu["preprocess"] += c3 - c2
    wall = time.perf_counter() - t0
    out = {k: 1000 * v / len(files) for k, v in cpu.items()}
    out["total"] = sum(out.values())
    return {"cpu_ms_per_file": out, "steps_loop_files_per_s": len(files) / wall}


def read_loop(files, blaze) -> None:
    """The read stage as one process runs it: ``read_one`` per file."""
    import torch

    from survey_estimator.catalogue.read import ReadOptions, read_one
    from survey_estimator.catalogue.status import code_version

    torch.set_num_threads(1)
    opts = ReadOptions(blaze=blaze, code=code_version())  # as the pipeline does: hashed once, not per file
    for f in files:
        assert read_one(f.as_dict(), opts)["status"] == "ok"


def read_ceiling(files, blaze) -> int:
    """The read stage alone on Ray Data, sized like the pipeline's (:func:`read_plan`); returns
    the number of rows read."""
    import math

    import ray

    from survey_estimator.catalogue.pipeline import CatalogueConfig, read_plan
    from survey_estimator.catalogue.read import ReadOptions, read_batch
    from survey_estimator.catalogue.status import code_version

    ray.data.DataContext.get_current().op_resource_reservation_enabled = False  # as the pipeline's _execute sets it
    per_task, cpus = read_plan(len(files), ray.cluster_resources().get("CPU", 1.0), CatalogueConfig(archive="", out=""))
    ds = ray.data.from_items([f.as_dict() for f in files], override_num_blocks=max(1, math.ceil(len(files) / per_task)))
    ds = ds.map_batches(read_batch, fn_kwargs={"opts": ReadOptions(blaze=blaze, code=code_version())}, batch_size=None, batch_format="numpy", num_cpus=cpus)
    return sum(len(b["status"]) for b in ds.iter_batches(batch_size=None, batch_format="numpy"))


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


def _cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--workdir", default="/tmp/se-bench-catalogue")
    p.add_argument("--model", default=None, help="bundle folder or models:/ URI (default: an untrained tiny bundle)")
    p.add_argument("--naive-n", type=int, default=None, help="files for the naive loop (default: all; its rate is per file)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--model-stage", default="auto", choices=("auto", "tasks", "actors"))
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--skip-fit", action="store_true", help="measure the pipeline without the likelihood fit only")
    p.add_argument("--fit-n", type=int, default=None, help="files of the archive the pipeline with the fit runs on (default: --n)")
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

    cpus = os.cpu_count()
    results: dict = {"n_files": args.n, "model_stage": args.model_stage, "cpus": cpus, "machine": f"{platform.platform()}, {_cpu_model()}, {cpus} cores",
                     "load_avg_start": os.getloadavg()[0]}
    t_list, listing = _timed(lambda: list_archive(str(archive)))
    results["list_s"] = t_list
    files = listing.files
    results.update(cpu_per_file(files[: min(len(files), 100)], listing.blaze))
    t, _ = _timed(lambda: read_loop(files, listing.blaze))
    results["loop_files_per_s"] = args.n / t
    nn = args.naive_n or args.n
    t, _ = _timed(lambda: naive(files[:nn], listing.blaze, model))
    results["naive_files_per_s"] = nn / t
    ensure_ray()
    read_ceiling(files[:8], listing.blaze)  # warm-up: start the workers and import the readers
    t, count = _timed(lambda: read_ceiling(files, listing.blaze))
    results["read_ceiling_files_per_s"] = count / t
    from survey_estimator.fit.grid import default_grid

    runs = (("pipeline_files_per_s", False),) if args.skip_fit else (("pipeline_files_per_s", False), ("pipeline_with_fit_files_per_s", True))
    for key, fit in runs:
        out = workdir / f"catalogue-{int(time.time())}-{key}"
        source = make_archive(workdir, args.fit_n) if fit and args.fit_n else archive
        t, summary = _timed(lambda: run_catalogue(CatalogueConfig(
            archive=str(source), out=str(out), model=model, batch_size=args.batch_size, actors=args.actors, model_stage=args.model_stage,
            fit=fit, grid=default_grid() if fit else None)))
        results[key] = summary.processed / t
        results[key.replace("files_per_s", "rows")] = {"ok": summary.ok, "error": summary.errors}
    ceiling = results["read_ceiling_files_per_s"]
    results["ratios"] = {"read_ceiling/loop": ceiling / results["loop_files_per_s"],
                         "pipeline/read_ceiling": results["pipeline_files_per_s"] / ceiling}
    if "pipeline_with_fit_files_per_s" in results:
        results["ratios"]["pipeline_with_fit/read_ceiling"] = results["pipeline_with_fit_files_per_s"] / ceiling
    efficiency = ceiling / (cpus * results["loop_files_per_s"])
    results["projection_16_cores_1_gpu_files_per_s"] = {
        "cpu_bound": 16 * results["loop_files_per_s"] * efficiency,
        "from_cpu_ms_per_file": 16 * 1000 / results["cpu_ms_per_file"]["total"],
        "note": "read stage on 16 cores at this machine's parallel efficiency; the GPU model stage is not measured here"}
    results["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training throughput of one worker: samples per second for the default networks, and the share of
each step spent generating the batch with the sampler (the GPU utilisation the sampler allows);
the sampler alone; and the validation loss each network reaches after a fixed number of samples.

    python bench/train.py [--grid URI] [--device auto|cpu|cuda] [--batch 16] [--steps 4] [--warmup 1]
                          [--models resnet attention patch pca pca-echo16 dae both resnet-stem4] [--preset seed|tiny]
                          [--threads N] [--learn 20000] [--sampler-batch 256] [--json out.json]

``pca-echo16`` is ``pca`` with data echoing (``--echo 16``): its step trains ``16 x batch`` samples
from the buffer on one fresh batch, so samples/s counts optimiser samples and "fresh spectra/s" the
sampler's draws.

Per network, three timings of a training step at the given batch (median over ``--steps``):
``sample`` (the sampler makes one batch on the device), ``model`` (forward, loss, backward and
optimiser step on a batch already there; bf16 autocast where native: CUDA, CPUs with AVX512-BF16
or AMX; --no-amp for float32) and ``full`` = sample + model,
as the training loop runs it. Reported: samples/s per worker (``batch / full``), the sampler's
share ``sample / full``, and ``model / full``, the fraction of a worker's step the accelerator
spends on the network (the utilisation ceiling the on-device sampler leaves). One process, no DDP:
multi-worker throughput is this figure times the workers minus the all-reduce (small for these
few-million-parameter nets). Rates are per wall second and per CPU second of this process (the
latter stays fair on a loaded shared machine; it is meaningless for CUDA).

``--learn N`` then trains each estimator from scratch on N fresh samples (the same stream of
spectra for every net: the worker's generator, same seed) at ``--batch`` and reports the
validation NLL and MAE per label on the run's validation batches (``TrainConfig.val_steps`` fixed
batches at held-out nodes), with the wall and CPU seconds it took (0: skip). A net with a fixed
front end (``pca``) computes it first, from ``PCAConfig.fit_spectra`` noiseless spectra (outside
the step timings; the log says how long it took).

The first net listed is the baseline of the ratio column (``resnet-stem4`` is the ResNet with the
stem strided 4 that the CPU production model uses). Without --grid the tiny analytic grid of bench/sampler.py is built in a temporary directory.
"""
from __future__ import annotations

import argparse
import json
import os

# OpenMP threads that spin while they wait make every parallel region as slow as the most
# descheduled thread on a loaded shared machine (measured at load 10-15 with 2 threads: the
# forward model 50x slower than on one); waiting passively keeps 2 threads useful there.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sampler import tiny_grid  # noqa: E402  (bench/sampler.py)

from survey_estimator.models.registry import describe  # noqa: E402
from survey_estimator.training.config import TrainConfig  # noqa: E402
from survey_estimator.training.loop import EpochRunner  # noqa: E402
from survey_estimator.training.components import build_networks, build_optimisers  # noqa: E402

TASKS = {"resnet": ("estimator", "resnet", {}, {}), "attention": ("estimator", "attention", {}, {}),
         "dae": ("dae", "resnet", {}, {}), "both": ("both", "resnet", {}, {}),
         "resnet-stem4": ("estimator", "resnet", {"stem_stride": 4}, {}),  # the CPU production model's stem
         "patch": ("estimator", "patch", {}, {}),  # the CPU-cheap variant (models/patch.py)
         "pca": ("estimator", "pca", {}, {}),  # the per-order PCA front end + MLP (models/pca.py)
         "pca-echo16": ("estimator", "pca", {}, {"echo": 16})}  # the same with data echoing (training/echo.py)
"""Benchmarked nets: (training task, estimator architecture, estimator config overrides, other
TrainConfig fields). With data echoing a step trains ``batch * echo`` samples on one fresh batch."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    _sync(device)
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t, time.process_time() - c


def bench_sampler(runner: EpochRunner, batch: int, repeats: int, device) -> dict:
    """Sampler alone at ``batch``: spectra per wall / CPU second, with and without the DAE target."""
    out = {"batch": batch}
    for clean in (False, True):
        runner.sampler.sampler.sample(min(batch, 16), clean=clean)  # warm-up
        _, t, c = _timed(lambda: [runner.sampler.sampler.sample(batch, clean=clean) for _ in range(repeats)], device)
        key = "with_clean" if clean else "no_clean"
        out[f"{key}_per_s"], out[f"{key}_per_cpu_s"] = batch * repeats / t, batch * repeats / c
    return out


def learn(runner: EpochRunner, n_samples: int, batch: int, device) -> dict:
    """Train from scratch on ``n_samples`` fresh samples, then validate on the run's fixed batches."""
    def run():
        for _ in range(max(1, n_samples // batch)):
            runner.train_batch(runner.sampler.sample(batch, "train"))
        return runner.validate()
    m, t, c = _timed(run, device)
    return {"samples": max(1, n_samples // batch) * batch, "trained_samples": max(1, n_samples // batch) * batch * runner.cfg.echo,
            "wall_s": t, "cpu_s": c,
            **{k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("val/")}}


def bench_one(name: str, grid: str, device: torch.device, batch: int, steps: int, warmup: int, preset: str,
              n_learn: int = 0, sampler_batch: int = 0, amp: bool = True) -> dict:
    task, model, overrides, extra = TASKS[name]
    cfg = TrainConfig(grid=grid, task=task, model=model, preset=preset, batch_size=batch, steps_per_epoch=1,
                      model_overrides=overrides, amp=amp, **extra)
    torch.manual_seed(0)
    nets = {k: m.to(device) for k, m in build_networks(cfg).items()}
    runner = EpochRunner(cfg, device, 0, nets, build_optimisers(cfg, nets))
    for n in nets.values():
        n.train()
    rows = []
    for i in range(warmup + steps):
        batch_, t_s, c_s = _timed(lambda: runner.sampler.sample(batch, "train"), device)
        _, t_m, c_m = _timed(lambda: runner.train_batch(batch_), device)
        if i >= warmup:
            rows.append((t_s, c_s, t_m, c_m))
    t_s, c_s, t_m, c_m = (statistics.median(r[k] for r in rows) for k in range(4))
    full, cfull = t_s + t_m, c_s + c_m
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in nets.items()}
    sampler = bench_sampler(runner, sampler_batch, 2, device) if sampler_batch else None
    learned = None
    if n_learn and "estimator" in nets:
        torch.manual_seed(0)
        nets = {k: m.to(device) for k, m in build_networks(cfg).items()}
        runner = EpochRunner(cfg, device, 0, nets, build_optimisers(cfg, nets))
        learned = learn(runner, n_learn, batch, device)
    return {"sampler": sampler, "learn": learned,
        "net": name, "arch": {k: describe(m)[0] for k, m in nets.items()}, "params": params, "device": str(device),
        "batch": batch, "amp_bf16": runner.amp,
        "sample_s": t_s, "model_s": t_m, "full_s": full,
        "echo": cfg.echo, "samples_per_s": batch * cfg.echo / full,
        "samples_per_cpu_s": batch * cfg.echo / cfull if cfull > 0 else None,
        "fresh_spectra_per_s": batch / full, "model_only_samples_per_s": batch * cfg.echo / t_m, "sampler_share": t_s / full, "model_share": t_m / full,
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", help="grid store URI (default: a tiny analytic grid in a temp dir)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=None, help="default 16 on CPU, 128 on CUDA")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--models", nargs="+", default=["resnet", "attention", "patch", "pca", "dae"], choices=sorted(TASKS))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--learn", type=int, default=20000, help="samples to train on before validating (0: skip)")
    p.add_argument("--sampler-batch", type=int, default=256, help="batch of the sampler-alone timing (0: skip)")
    p.add_argument("--preset", default="seed", choices=("seed", "tiny"))
    p.add_argument("--json", help="write the results here")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="float32 (default: bf16 autocast where native)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    batch = args.batch or (128 if device.type == "cuda" else 16)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory() as tmp:
        grid = args.grid or tiny_grid(tmp)
        results = [bench_one(m, grid, device, batch, args.steps, args.warmup, args.preset, args.learn,
                             args.sampler_batch if i == 0 else 0, args.amp) for i, m in enumerate(args.models)]
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "machine": platform.machine(), "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
           "loadavg": os.getloadavg(), "cpu": _cpu_name(), "grid": grid if args.grid else "tiny analytic"}
    print(f"# training throughput per worker, {device} ({env['cpu']}, {env['cpu_count']} CPUs, torch {env['torch']}, "
          f"{env['threads']} threads, load {env['loadavg'][0]:.1f} / {env['loadavg'][1]:.1f} / {env['loadavg'][2]:.1f}), "
          f"batch {batch}, preset {args.preset}, grid {env['grid']}, "
          f"{'bf16 autocast' if results[0]['amp_bf16'] else 'float32'}\n")
    s = results[0]["sampler"]
    if s:
        print(f"sampler alone, batch {s['batch']}: {s['no_clean_per_s']:.0f} spectra/s ({s['no_clean_per_cpu_s']:.0f} per CPU-s) "
              f"without the DAE target, {s['with_clean_per_s']:.0f}/s ({s['with_clean_per_cpu_s']:.0f} per CPU-s) with it\n")
    print(f"| net | params | samples/s | fresh spectra/s | samples/CPU-s | vs {results[0]['net']} | model-only samples/s | sampler share | model share |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        cpu = f"{r['samples_per_cpu_s']:.1f}" if r["samples_per_cpu_s"] else "-"
        ratio = r["samples_per_s"] / results[0]["samples_per_s"]
        print(f"| {r['net']} | {sum(r['params'].values()):,} | {r['samples_per_s']:.1f} | {r['fresh_spectra_per_s']:.1f} | {cpu} | {ratio:.2f}x | "
              f"{r['model_only_samples_per_s']:.1f} | {100 * r['sampler_share']:.0f}% | {100 * r['model_share']:.0f}% |")
    learned = [r for r in results if r["learn"]]
    if learned:
        print(f"\n| net | fresh spectra | samples trained | val NLL | val MAE Teff / log g / [M/H] / v sin i | wall s | CPU s |\n"
              "|---|---|---|---|---|---|---|")
        for r in learned:
            m = r["learn"]
            mae = " / ".join(f"{m['mae_' + n]:.3g}" for n in ("teff", "logg", "mh", "vsini"))
            print(f"| {r['net']} | {m['samples']:,} | {m['trained_samples']:,} | {m['loss']:.3f} | {mae} | {m['wall_s']:.0f} | {m['cpu_s']:.0f} |")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"env": env, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

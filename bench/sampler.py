"""Sampler throughput: synthetic training spectra per second at batch 256, CPU and CUDA.

    python bench/sampler.py [--grid URI] [--batch 256] [--repeats 3] [--baseline 16] [--json out.json]

Without --grid a tiny analytic grid (Teff 5000-6000, log g 4-5, [M/H] -0.5..0, the standard
0.5 km/s fine grid) is built in a temporary directory. The baseline, measured in the same run,
does the same steps one spectrum at a time in numpy (trilinear interpolation, Gray kernel by
np.convolve, np.interp Doppler resampling, slant x blaze, photon noise, bad pixels) and the same
shared normalisation (``normalise_numpy``) per spectrum. Rates are given per wall second and
per CPU second of this process (the latter is what a shared, loaded machine still measures fairly).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch

from survey_estimator.layout import canonical_wave, doppler_factor
from survey_estimator.normalise import FLUX_RANGE, normalise_numpy
from survey_estimator.sampling import Sampler, SamplerConfig, gray_kernel
from survey_estimator.sampling.rotation import half_width_pixels
from survey_estimator.synth.store import GridStore


def tiny_grid(root: str) -> str:
    from survey_estimator.synth.backend import BackendConfig
    from survey_estimator.synth.build import BuildConfig, GridRanges, build_grid

    out = os.path.join(root, "grid")
    build_grid(BuildConfig(out=out, backend=BackendConfig(name="analytic"),
                           ranges=GridRanges((5000, 6000), (4.0, 5.0), (-0.5, 0.0)), use_ray=False, progress=False))
    return out


def bench_sampler(grid, device: str, batch: int, repeats: int) -> tuple[float, float]:
    sampler = Sampler(grid, SamplerConfig(device=device, seed=0))
    sampler.sample(min(batch, 16))  # warm-up (allocations, FFT plans, CUDA context)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t, c = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        b = sampler.sample(batch)
    sync()
    assert torch.isfinite(b.x).all()
    n = batch * repeats
    return n / (time.perf_counter() - t), n / (time.process_time() - c)


def baseline(dense, n: int, seed: int = 0) -> tuple[float, float]:
    """(spectra per wall second, per CPU second) of a per-spectrum numpy loop doing the same steps."""
    rng = np.random.default_rng(seed)
    axes, flux, wave = dense.axes, dense.flux, dense.wave
    dv = 299792.458 * float(np.mean(np.diff(np.log(wave))))
    K = half_width_pixels(30.0, dv)
    target = canonical_wave()
    x = np.linspace(-1, 1, target.shape[1])
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        lab = [rng.uniform(a[0], a[-1]) for a in axes] + [rng.uniform(0, 30)]
        idx, frac = [], []
        for a, v in zip(axes, lab[:3]):
            i = min(max(int(np.searchsorted(a, v, side="right")) - 1, 0), len(a) - 2)
            idx.append(i)
            frac.append((v - a[i]) / (a[i + 1] - a[i]))
        spec = np.zeros(wave.size)
        for c in np.ndindex(2, 2, 2):
            w = np.prod([f if ci else 1 - f for ci, f in zip(c, frac)])
            spec += w * flux[idx[0] + c[0], idx[1] + c[1], idx[2] + c[2]]
        kern = gray_kernel(torch.tensor([lab[3]]), dv, K)[0].numpy()
        spec = np.convolve(np.pad(spec, K, mode="edge"), kern[::-1], mode="valid")
        rv = rng.uniform(-3, 3)
        obs = np.stack([np.interp(t / doppler_factor(rv), wave, spec) for t in target])
        shape = (1 + rng.uniform(-0.3, 0.3, (8, 1)) * x) * np.sinc(rng.uniform(0.3, 0.6, (8, 1)) * x) ** 2
        snr = np.exp(rng.uniform(np.log(20), np.log(300)))
        counts = obs * shape * snr**2 / np.median(shape)
        counts = counts + rng.standard_normal(counts.shape) * np.sqrt(np.clip(counts, 0, None))
        mask = rng.random(counts.shape) >= 1e-3
        norm, mask = normalise_numpy(counts, mask)
        _ = np.where(mask, np.clip(norm, *FLUX_RANGE) - 1, 0.0)
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", help="grid store URI (default: a tiny analytic grid built now)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baseline", type=int, default=16, help="spectra for the numpy baseline")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        uri = args.grid or tiny_grid(tmp)
        dense = GridStore(uri).load_dense()
        figures = {
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_1min": os.getloadavg()[0],
            "torch": torch.__version__,
            "grid": f"{dense.flux.shape[:3]} nodes x {dense.flux.shape[3]} px",
            "batch": args.batch,
        }
        wall, cpu = baseline(dense, args.baseline)
        figures["baseline_numpy_loop_spectra_per_s"] = wall
        figures["baseline_numpy_loop_spectra_per_cpu_s"] = cpu
        wall, cpu = bench_sampler(dense, "cpu", args.batch, args.repeats)
        figures["sampler_cpu_spectra_per_s"] = wall
        figures["sampler_cpu_spectra_per_cpu_s"] = cpu
        if torch.cuda.is_available():
            figures["gpu"] = torch.cuda.get_device_name(0)
            figures["sampler_cuda_spectra_per_s"] = bench_sampler(dense, "cuda", args.batch, args.repeats)[0]
        figures["load_average_1min_after"] = os.getloadavg()[0]
    base = figures["baseline_numpy_loop_spectra_per_s"]
    for key in ("sampler_cpu_spectra_per_s", "sampler_cuda_spectra_per_s"):
        if key in figures:
            figures[key.replace("_spectra_per_s", "_vs_baseline")] = figures[key] / base
    figures["sampler_cpu_vs_baseline_per_cpu_s"] = (figures["sampler_cpu_spectra_per_cpu_s"]
                                                    / figures["baseline_numpy_loop_spectra_per_cpu_s"])
    for k, v in figures.items():
        print(f"{k:>34}: {v:.3g}" if isinstance(v, float) else f"{k:>34}: {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

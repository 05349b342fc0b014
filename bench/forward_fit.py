"""Forward model, sampler and likelihood-fit speed, beside the renderer they replace.

    python bench/forward_fit.py [--grid URI] [--threads 1] [--device cpu|cuda] [--n-fit 64] [--json out.json]

Measured in one run, on the grid of the shipped model by default (the packed fgk-dwarfs grid):

- baseline: the previous path, :class:`SpectrumRenderer` (trilinear interpolation of the fine
  grid, Gray rotation by FFT, Doppler resampling), noiseless spectra per second at batch 64;
- the forward model (:class:`ForwardModel`): noiseless spectra per second at batch 256, and with
  its Jacobian;
- the training sampler (forward model + shapes + noise + masks + the shared normalisation), per
  second at batch 256;
- the likelihood fit at S/N 20 and 100 started from the shipped network's estimate: CPU
  milliseconds per spectrum (median over batches of 32) and LM iterations;
- the table's own interpolation error: spectra broadened exactly at random labels
  (:meth:`ForwardModel.exact`) against the table's, and the label errors of noiseless fits of
  the exact spectra (what interpolating v sin i and the macroturbulence between nodes costs).

Rates are per wall second and per CPU second of this process (the latter is what a loaded machine
still measures fairly); the machine, torch threads and load average are printed with them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch


def _rate(fn, n_per_call: int, min_seconds: float = 3.0) -> tuple[float, float]:
    """(per wall second, per CPU second) of ``fn`` doing ``n_per_call`` items, after one warm-up call."""
    fn()
    t0, c0, done = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - t0 < min_seconds:
        fn()
        done += n_per_call
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return done / (time.perf_counter() - t0), done / max(time.process_time() - c0, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default=None, help="grid store or packed .npz (default: the shipped packed grid)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-fit", type=int, default=64, help="spectra fitted per S/N")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from survey_estimator.models.resolve import load_bundle, resolve_model
    from survey_estimator.fit import Fitter, fit_spectra
    from survey_estimator.fit.grid import default_grid
    from survey_estimator.forward import ForwardModel
    from survey_estimator.sampling import Sampler, SamplerConfig
    from survey_estimator.sampling.interpolation import GridInterpolator
    from survey_estimator.sampling.spectrum import SpectrumRenderer
    from survey_estimator.synth.packed import load_packed
    from survey_estimator.synth.store import GridStore

    uri = args.grid or default_grid()
    dense = load_packed(uri) if uri.endswith(".npz") else GridStore(uri).load_dense()
    interp = GridInterpolator.from_dense(dense, device=args.device)
    t0 = time.perf_counter()
    fm = ForwardModel.from_interpolator(interp, progress=False)
    load_s = time.perf_counter() - t0
    g = torch.Generator(device=args.device).manual_seed(0)
    out: dict = {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs", "torch_threads": torch.get_num_threads(),
                 "load_average": os.getloadavg(), "grid": uri, "grid_id": dense.grid_id, "device": args.device,
                 "forward_table_load_or_build_s": round(load_s, 1), "forward_table_MB": fm.table.numel() * 4 / 1e6}

    labels = interp.draw_labels(256, g).to(torch.float64)
    rv = torch.zeros(256, dtype=torch.float64, device=args.device)
    renderer = SpectrumRenderer(interp)
    out["baseline_renderer_per_s"] = _rate(lambda: renderer(labels[:64].float(), 1.0), 64)
    out["forward_per_s"] = _rate(lambda: fm.spectra(labels, rv), 256)
    out["forward_with_jacobian_per_s"] = _rate(lambda: fm.spectra_and_jacobian(labels[:64], rv[:64]), 64)
    sampler = Sampler(dense, SamplerConfig(seed=0, device=args.device))
    out["sampler_per_s"] = _rate(lambda: sampler.sample(256, generator=g), 256)

    bundle = load_bundle(resolve_model(None)).to(args.device)
    fitter = Fitter(sampler.forward)
    for snr in (20.0, 100.0):
        per, iters = [], []
        for i in range(0, args.n_fit, 32):
            lab = sampler.interpolator.draw_labels(32, g)
            b = sampler.render(lab, snr=snr, rv=torch.zeros(32, device=args.device), generator=g)
            pred = bundle.predict(b.x, batch_size=32)
            c0 = time.process_time()
            res = fit_spectra(fitter, (b.x[:, 0] + 1).cpu().numpy(), b.variance.cpu().numpy(), b.mask.cpu().numpy(),
                              pred.mean, pred.sigma)
            per.append((time.process_time() - c0) / 32 * 1e3)
            iters.append(res.iterations)
        out[f"fit_cpu_ms_per_spectrum_snr{snr:g}"] = float(np.median(per))
        out[f"fit_iterations_snr{snr:g}"] = float(np.mean(np.concatenate(iters)))

    from survey_estimator.fit import FitConfig
    from survey_estimator.layout import canonical_wave

    lab = interp.draw_labels(48, g).to(torch.float64)
    exact = fm.exact(lab, torch.ones(48, dtype=torch.float64, device=args.device), canonical_wave())
    table = fm.spectra(lab).double()
    out["table_vs_exact_rms"] = float((exact - table).pow(2).mean().sqrt())
    out["table_vs_exact_max"] = float((exact - table).abs().max())
    res = Fitter(fm, FitConfig(model_error=0.0)).fit(exact.cpu().numpy(), np.full(exact.shape, 1e-4), np.ones(exact.shape, bool),
                                                      lab.cpu().numpy())
    out["noiseless_fit_rms_error"] = np.sqrt(np.mean((res.labels - lab.cpu().numpy()) ** 2, axis=0)).tolist()
    out["sigma_at_snr100"] = np.median(res.sigma_stat, axis=0).tolist()

    print(f"machine: {out['machine']}, torch threads {out['torch_threads']}, load average {out['load_average']}")
    print(f"grid {out['grid_id']} ({uri}); forward table {out['forward_table_MB']:.0f} MB, loaded/built in {load_s:.1f} s")
    print("| what | per wall s | per CPU s |\n|---|---|---|")
    for key, name in (("baseline_renderer_per_s", "baseline: SpectrumRenderer, noiseless spectra (batch 64)"),
                      ("forward_per_s", "forward model, noiseless spectra (batch 256)"),
                      ("forward_with_jacobian_per_s", "forward model + Jacobian (batch 64)"),
                      ("sampler_per_s", "training sampler batches (batch 256)")):
        w, c = out[key]
        print(f"| {name} | {w:,.0f} | {c:,.0f} |")
    ratio = out["forward_per_s"][0] / out["baseline_renderer_per_s"][0]
    print(f"forward model / baseline: {ratio:.1f}x")
    for snr in (20, 100):
        print(f"fit at S/N {snr}: {out[f'fit_cpu_ms_per_spectrum_snr{snr}']:.1f} CPU ms per spectrum (median of batches), "
              f"{out[f'fit_iterations_snr{snr}']:.1f} LM iterations")
    print(f"table vs exact broadening: {out['table_vs_exact_rms']:.2e} rms, {out['table_vs_exact_max']:.2e} max; noiseless "
          f"fits of the exact spectra: RMS error Teff / log g / [M/H] / v sin i = "
          + " / ".join(f"{v:.3g}" for v in out["noiseless_fit_rms_error"])
          + " (the fit's sigma at S/N 100: " + " / ".join(f"{v:.3g}" for v in out["sigma_at_snr100"]) + ")")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()

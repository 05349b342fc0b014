"""Score a model bundle on held-out grid nodes at fixed S/N, the way the seed measured its models,
and the likelihood fit started from it, both against the Cramer-Rao bound.

For each S/N in ``EvalConfig.snrs``: ``n`` spectra at the test nodes (labels never seen in training,
exact synthetic spectra, random v sin i, RV, shapes, masks, noise at that S/N), predicted by the
bundle; scored raw (network sigmas) and calibrated (sigmas times per-label factors). The factors
are either fitted on validation nodes (``fit_calibration``; S/N drawn over the whole range given)
or the bundle's stored ones. Figures: residuals (Fig. 3), sigma vs label (Fig. 4), coverage, and
attention maps over one spectrum (Fig. 5) for attention nets.

With ``fit_n`` > 0, ``fit_n`` more spectra per S/N at labels inside the grid's cells
(:func:`fit_set`) are estimated by the network and then by the likelihood fit
(:mod:`survey_estimator.fit`, with the sampler's own forward model), and both are scored against
each spectrum's Cramer-Rao bound (its own variance, mask and nuisances): RMS / bound per label,
and the fit's coverage with its inverse-Fisher sigmas.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..labels import LABEL_NAMES
from ..sampling import Sampler, SamplerConfig
from . import plots
from .metrics import BoundScores, Scores, attention_near_lines, bound_scores, bound_table, coverage_table, fit_calibration_scales, mae_table, score

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """What to score.

    Attributes:
        snrs: S/N values of the test sets.
        split: 'test' (held-out nodes), 'val' or 'train'.
        n: spectra per S/N.
        batch_size: spectra per forward pass.
        teff_range: (lo, hi) K to keep only those test labels (None = all).
        use_dae: run the bundle's DAE first (when it has one).
        fit_calibration: fit per-label sigma factors on validation nodes (else use the bundle's).
        calibration_snr: (lo, hi) log-uniform S/N range of the calibration set.
        split_seed, val_fraction, test_fraction: the node split (must match training).
        seed: the random stream of the test spectra.
    """

    snrs: tuple[float, ...] = (20.0, 100.0)
    split: str = "test"
    n: int = 2000
    batch_size: int = 64
    teff_range: tuple[float, float] | None = None
    use_dae: bool = True
    fit_calibration: bool = True
    calibration_snr: tuple[float, float] = (10.0, 200.0)
    split_seed: int = 0
    val_fraction: float = SamplerConfig.val_fraction
    test_fraction: float = SamplerConfig.test_fraction
    seed: int = 12345
    fit_n: int = 0
    """Spectra per set also fitted by the likelihood fit and scored against the bound (0: none)."""


@dataclass
class PredictionSet:
    """Predictions on one test set (physical units, (N, 4) arrays)."""

    name: str
    snr: float | None
    true: np.ndarray
    mean: np.ndarray
    sigma_raw: np.ndarray


@dataclass
class FitSet:
    """The likelihood fit of a set's first spectra, with their Cramer-Rao bounds ((n, 4) arrays)."""

    true: np.ndarray
    network: np.ndarray
    mean: np.ndarray
    sigma: np.ndarray
    """(n, 4) the fit's sigmas as the catalogue reports them (statistical + grid interpolation error)."""
    sigma_stat: np.ndarray
    """(n, 4) the raw statistical (inverse-Fisher) sigmas alone."""
    sigma_cal: np.ndarray
    """(n, 4) the statistical sigmas calibrated by S/N (:mod:`survey_estimator.fit.calibration`)."""
    snr: np.ndarray
    """(n,) each spectrum's measured S/N (median per usable pixel)."""
    bound: np.ndarray
    chi2_red: np.ndarray
    flags: np.ndarray
    seconds_per_spectrum: float


@dataclass
class EvaluationReport:
    """Scores per test set, raw and calibrated, with the calibration factors (4,)."""

    sets: dict[str, PredictionSet]
    calibration: np.ndarray
    calibration_source: str
    raw: dict[str, Scores] = field(default_factory=dict)
    calibrated: dict[str, Scores] = field(default_factory=dict)
    sigma_limit: np.ndarray | None = None
    """(4,) largest calibrated sigma on the calibration (validation) set, when it was fitted."""
    fits: dict[str, FitSet] = field(default_factory=dict)
    bounds: dict[str, "BoundScores"] = field(default_factory=dict)
    """'S/N 20, network' / 'S/N 20, fit' -> errors against the bound."""
    fit_scores: dict[str, Scores] = field(default_factory=dict)
    """'S/N 20, fit' -> the fit's scores with its raw statistical sigmas."""
    fit_scores_cal: dict[str, Scores] = field(default_factory=dict)
    """'S/N 20, fit' -> the same with the S/N-calibrated statistical sigmas."""
    attention: dict | None = None
    """:func:`attention_example` of one test spectrum, for attention nets."""

    def markdown(self) -> str:
        cal = ", ".join(f"{n} x{s:.3f}" for n, s in zip(LABEL_NAMES, self.calibration))
        parts = [
            "### MAE per label (test nodes)", mae_table(self.raw),
            "### Within 1 / 2 sigma, raw network sigmas", coverage_table(self.raw),
            f"### Within 1 / 2 sigma, calibrated ({self.calibration_source}: {cal})", coverage_table(self.calibrated),
        ]
        if self.fits:
            speed = ", ".join(f"{k}: {1e3 * f.seconds_per_spectrum:.0f} ms" for k, f in self.fits.items())
            parts += ["### Network and likelihood fit against the Cramer-Rao bound (RMS error / median bound = RMS of error/bound)",
                      bound_table(self.bounds),
                      "### MAE of the likelihood fit", mae_table(self.fit_scores),
                      "### Within 1 / 2 sigma, the fit's statistical (inverse-Fisher) sigmas; the test spectra share the "
                      "fit's interpolation, so the grid's interpolation error that the catalogue's sigmas add is left out",
                      coverage_table(self.fit_scores),
                      f"Fit wall time per spectrum (this process): {speed}."]
            if any(not np.array_equal(f.sigma_cal, f.sigma_stat) for f in self.fits.values()):
                parts[-1:-1] = ["### Within 1 / 2 sigma, the fit's statistical sigmas calibrated by S/N on held-out "
                                "spectra (`FitResult.cov_cal`; docs/fit.md)", coverage_table(self.fit_scores_cal)]
        if self.attention is not None:
            parts += ["### Attention on the Mg b lines (one test spectrum)", attention_line_text(self.attention["mgb"])]
        return "\n\n".join(parts)

    def flat_metrics(self) -> dict[str, float]:
        """``test_snr20/mae_teff``-style scalars (raw and ``..._cal``), and the calibration factors."""
        out: dict[str, float] = {}
        for key, s in self.raw.items():
            out.update(s.flat(f"{_slug(key)}/"))
        for key, s in self.calibrated.items():
            c = s.flat(f"{_slug(key)}/")
            out.update({f"{k}_cal": v for k, v in c.items() if "within" in k or "sigma" in k})
        out.update({f"calibration/{n}": float(v) for n, v in zip(LABEL_NAMES, self.calibration)})
        for key, b in self.bounds.items():
            out.update({f"{_slug(key)}/rms_over_bound_{n}": float(v) for n, v in zip(LABEL_NAMES, b.rms_over_bound)})
        for key, sc in self.fit_scores.items():
            out.update(sc.flat(f"{_slug(key)}_fit/"))
        for key, sc in self.fit_scores_cal.items():
            out.update({f"{k}_cal": v for k, v in sc.flat(f"{_slug(key)}_fit/").items() if "within" in k})
        if self.sigma_limit is not None:
            out.update({f"sigma_limit/{n}": float(v) for n, v in zip(LABEL_NAMES, self.sigma_limit)})
        if self.attention is not None:
            out.update({f"attention/mgb_enrichment_block{b + 1}": float(v) for b, v in enumerate(self.attention["mgb"]["enrichment"])})
        return out

    def write(self, out_dir: str | os.PathLike) -> list[Path]:
        """Figures (PNG), ``report.md``, ``scores.json`` and ``predictions_<set>.npz`` under ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files: list[Path] = []
        for key, ps in self.sets.items():
            slug = _slug(key)
            cal_sigma = ps.sigma_raw * self.calibration
            files.append(plots.residual_plot(ps.true, ps.mean, out / f"residuals_{slug}.png", title=f"residuals, {key}"))
            files.append(plots.sigma_plot(ps.true, ps.sigma_raw, out / f"sigma_{slug}.png", sigma_calibrated=cal_sigma,
                                          residual=ps.mean - ps.true, title=f"predicted sigma, {key}"))
            files.append(plots.coverage_plot(ps.true, ps.mean, ps.sigma_raw, out / f"coverage_{slug}.png",
                                             sigma_calibrated=cal_sigma, title=f"coverage, {key}"))
            np.savez_compressed(out / f"predictions_{slug}.npz", true=ps.true, mean=ps.mean, sigma_raw=ps.sigma_raw,
                                sigma=cal_sigma)
            files.append(out / f"predictions_{slug}.npz")
        if self.attention is not None:
            a = self.attention
            files.append(plots.attention_plot(a["wave"], a["flux"], a["maps"], out / "attention.png",
                                              title="attention maps, " + ", ".join(f"{n}={v:.4g}" for n, v in zip(LABEL_NAMES, a["labels"]))))
        (out / "report.md").write_text(self.markdown() + "\n")
        for key, f in self.fits.items():
            np.savez_compressed(out / f"fit_{_slug(key)}.npz", true=f.true, network=f.network, mean=f.mean, sigma=f.sigma,
                                sigma_stat=f.sigma_stat, sigma_cal=f.sigma_cal, snr=f.snr, bound=f.bound, chi2_red=f.chi2_red, flags=f.flags)
            files.append(out / f"fit_{_slug(key)}.npz")
            files.append(plots.residual_plot(f.true, f.mean, out / f"residuals_fit_{_slug(key)}.png", title=f"fit residuals, {key}"))
        scores = {"calibration": dict(zip(LABEL_NAMES, self.calibration.tolist())), "calibration_source": self.calibration_source,
                  "raw": {k: s.to_dict() for k, s in self.raw.items()},
                  "calibrated": {k: s.to_dict() for k, s in self.calibrated.items()},
                  "bound": {k: s.to_dict() for k, s in self.bounds.items()},
                  "fit": {k: s.to_dict() for k, s in self.fit_scores.items()},
                  "fit_calibrated": {k: s.to_dict() for k, s in self.fit_scores_cal.items()}}
        (out / "scores.json").write_text(json.dumps(scores, indent=1))
        files += [out / "report.md", out / "scores.json"]
        return files


def attention_line_text(near: dict) -> str:
    """One sentence of :func:`.metrics.attention_near_lines`: share and enrichment per block."""
    blocks = "; ".join(f"block {b + 1}: {100 * s:.1f} % ({e:.1f}x)" for b, (s, e) in enumerate(zip(near["share"], near["enrichment"])))
    return (f"Attention within {near['half_width_A']:g} A of the lines ({', '.join(f'{c:.2f}' for c in near['lines'])} A; "
            f"{100 * near['pixel_share']:.2f} % of the pixels), and that share over the pixels' (1x = no preference): {blocks}.")


def _slug(key: str) -> str:
    return key.lower().replace("s/n ", "snr").replace(",", "").replace(" ", "_").replace("/", "_")


def sampler_for(grid, cfg: EvalConfig, device: str | torch.device) -> Sampler:
    """A sampler on ``grid`` (URI, GridStore or DenseGrid) with the training run's node split."""
    return Sampler(grid, SamplerConfig(seed=cfg.split_seed, val_fraction=cfg.val_fraction,
                                       test_fraction=cfg.test_fraction, device=str(device)))


def predict_set(bundle, sampler: Sampler, split: str, n: int, snr_range: tuple[float, float], cfg: EvalConfig,
                generator: torch.Generator, name: str = "") -> PredictionSet:
    """Draw ``n`` spectra of ``split`` at S/N in ``snr_range`` (log-uniform; lo == hi for a fixed S/N),
    keep those in ``cfg.teff_range``, and predict them with ``bundle``."""
    if cfg.teff_range is not None:
        lo, hi = cfg.teff_range
        teffs = sampler.axes[0][sampler.split.nodes(split)[:, 0]] if split != "train" else sampler.axes[0]
        if not np.any((teffs >= lo) & (teffs <= hi)):
            raise ValueError(f"no {split} node has Teff in {cfg.teff_range} (nodes at {sorted(set(np.round(teffs, 1)))})")
    s = sampler.with_config(snr_range=tuple(float(v) for v in snr_range))
    true, mean, sig = [], [], []
    got = 0
    with tqdm(total=n, desc=name or split, leave=False) as bar:
        while got < n:
            batch = s.sample(cfg.batch_size, split=split, generator=generator)
            keep = torch.ones(cfg.batch_size, dtype=torch.bool, device=batch.labels.device)
            if cfg.teff_range is not None:
                lo, hi = cfg.teff_range
                keep = (batch.labels[:, 0] >= lo) & (batch.labels[:, 0] <= hi)
            if not keep.any():
                continue
            take = min(int(keep.sum()), n - got)
            x = batch.x[keep][:take]
            pred = bundle.predict(x, use_dae=cfg.use_dae, batch_size=cfg.batch_size)
            true.append(batch.labels[keep][:take].double().cpu().numpy())
            mean.append(pred.mean)
            sig.append(pred.sigma_raw)
            got += take
            bar.update(take)
    return PredictionSet(name or split, snr_range[0] if snr_range[0] == snr_range[1] else None,
                         np.concatenate(true), np.concatenate(mean), np.concatenate(sig))


def fit_set(bundle, sampler: Sampler, snr: float, cfg: EvalConfig, calibration: np.ndarray, generator: torch.Generator,
            batch: int = 32, labels: torch.Tensor | None = None, model=None) -> FitSet:
    """``cfg.fit_n`` spectra at S/N ``snr`` with labels drawn uniformly inside the grid's cells (not
    at nodes: there the multilinear model has a kink and the bound is ill defined), RV residual
    uniform in the sampler's range, shapes, masks and noise as in training; the network's estimate
    (calibrated sigmas decide the extra starts), the likelihood fit from it, and each spectrum's
    Cramer-Rao bound (its own variance and mask).

    ``labels`` (N, 4) and ``model`` replace the drawn labels and the forward model that renders
    the noiseless spectra (:mod:`.between_nodes`: spectra synthesised at those labels); the fit and
    the bound always use the sampler's forward model."""
    import time

    from ..fit import Fitter, cramer_rao, fit_spectra

    fitter = Fitter(sampler.forward)
    lo, hi = cfg.teff_range or (-np.inf, np.inf)
    total = cfg.fit_n if labels is None else len(labels)
    out: dict[str, list] = {k: [] for k in ("true", "network", "mean", "sigma", "sigma_stat", "sigma_cal", "snr", "bound", "chi2", "flags")}
    seconds, got = 0.0, 0
    while got < total:
        if labels is None:
            these = sampler.interpolator.draw_labels(4 * batch, generator, sampler.config.vsini_range)
            these = these[(these[:, 0] >= lo) & (these[:, 0] <= hi)][: min(batch, total - got)]
            if len(these) == 0:
                continue
        else:
            these = torch.as_tensor(labels[got : got + batch], device=sampler.device)
        r0, r1 = sampler.config.rv_range
        rv = r0 + (r1 - r0) * torch.rand(len(these), generator=generator, device=sampler.device)
        b = sampler.render(these, snr=snr, rv=rv, generator=generator, model=None if model is None else model.rows(slice(got, got + len(these))))
        pred = bundle.predict(b.x, use_dae=cfg.use_dae, batch_size=cfg.batch_size)
        t0 = time.perf_counter()
        res = fit_spectra(fitter, (b.x[:, 0] + 1).cpu().numpy(), b.variance.cpu().numpy(), b.mask.cpu().numpy(),
                          pred.mean, pred.sigma_raw * calibration)
        seconds += time.perf_counter() - t0
        out["bound"].append(cramer_rao(sampler.forward, these.double().cpu().numpy(), rv=rv.double().cpu().numpy(),
                                       mask=b.mask.cpu().numpy(), variance=b.variance.cpu().numpy())[:, :4])
        out["true"].append(these.double().cpu().numpy())
        out["network"].append(np.asarray(pred.mean))
        out["mean"].append(res.labels)
        out["sigma"].append(res.sigma)
        out["sigma_stat"].append(res.sigma_stat)
        out["sigma_cal"].append(res.sigma_cal)
        out["snr"].append(res.snr)
        out["chi2"].append(res.chi2_red)
        out["flags"].append(res.flags)
        got += len(these)
    cat = {k: np.concatenate(v) for k, v in out.items()}
    return FitSet(cat["true"], cat["network"], cat["mean"], cat["sigma"], cat["sigma_stat"], cat["sigma_cal"], cat["snr"],
                  cat["bound"], cat["chi2"], cat["flags"], seconds / got)


def attention_example(bundle, sampler: Sampler, split: str, snr: float, generator: torch.Generator,
                      use_dae: bool = True) -> dict | None:
    """Attention maps of one test spectrum and their share on the Mg b lines (None when the
    estimator has none): {"wave", "flux", "maps" (3, 8, 4096), "labels", "mgb"
    (:func:`.metrics.attention_near_lines`)}."""
    if getattr(bundle.estimator, "architecture", None) != "attention":
        return None
    from ..layout import canonical_wave
    from ..rv import MGB_AIR

    batch = sampler.with_config(snr_range=(snr, snr)).sample(1, split=split, generator=generator)
    maps = bundle.attention_maps(batch.x, use_dae=use_dae)[0]
    wave = canonical_wave()
    return {"wave": wave, "flux": batch.x[0, 0].cpu().numpy() + 1.0, "maps": maps,
            "labels": batch.labels[0].cpu().numpy(), "mgb": attention_near_lines(wave, maps, MGB_AIR)}


def evaluate_bundle(bundle, grid, cfg: EvalConfig, device: str | torch.device | None = None,
                    sampler: Sampler | None = None) -> EvaluationReport:
    """Score ``bundle`` on ``grid`` (URI / GridStore / DenseGrid, or a ready ``sampler``): see the module doc."""
    device = torch.device(device or bundle.device)
    sampler = sampler or sampler_for(grid, cfg, device)
    if getattr(bundle.manifest, "grid_id", None) not in (None, sampler.grid_id):
        log.warning("bundle was trained on grid %s, evaluating on grid %s", bundle.manifest.grid_id, sampler.grid_id)
    g = torch.Generator(device=sampler.device).manual_seed(cfg.seed)
    sets = {f"S/N {s:g}": predict_set(bundle, sampler, cfg.split, cfg.n, (s, s), cfg, g, name=f"S/N {s:g}") for s in cfg.snrs}
    if cfg.fit_calibration:
        val = predict_set(bundle, sampler, "val", cfg.n, cfg.calibration_snr, cfg, g, name="calibration")
        scales = fit_calibration_scales(val.true, val.mean, val.sigma_raw)
        source = f"fitted on {val.true.shape[0]} validation spectra, S/N {cfg.calibration_snr[0]:g}-{cfg.calibration_snr[1]:g}"
    else:
        scales = np.asarray(bundle.sigma_scale, dtype=np.float64)
        source = "stored in the bundle"
    report = EvaluationReport(sets=sets, calibration=scales, calibration_source=source)
    if cfg.fit_calibration:
        report.sigma_limit = (val.sigma_raw * scales).max(axis=0)
    for key, ps in sets.items():
        report.raw[key] = score(ps.true, ps.mean, ps.sigma_raw)
        report.calibrated[key] = score(ps.true, ps.mean, ps.sigma_raw * scales)
    if cfg.fit_n > 0:
        for snr in cfg.snrs:
            key = f"S/N {snr:g}"
            f = report.fits[key] = fit_set(bundle, sampler, snr, cfg, scales, g)
            report.bounds[f"{key}, network"] = bound_scores(f.true, f.network, f.bound)
            report.bounds[f"{key}, fit"] = bound_scores(f.true, f.mean, f.bound)
            # the test spectra come from the fit's own forward model (no interpolation error):
            # the statistical sigmas are the ones under test
            report.fit_scores[f"{key}, fit"] = score(f.true, f.mean, f.sigma_stat)
            report.fit_scores_cal[f"{key}, fit"] = score(f.true, f.mean, f.sigma_cal)
            log.info("%s: fit RMS / bound %s in %.0f ms per spectrum", key,
                     np.round(report.bounds[f"{key}, fit"].rms_over_bound, 2), 1e3 * f.seconds_per_spectrum)
    report.attention = attention_example(bundle, sampler, cfg.split, cfg.snrs[0], g, use_dae=cfg.use_dae)
    return report

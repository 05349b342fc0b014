"""The fit on spectra it did not make itself: PySME synthesis at labels BETWEEN the grid nodes.

Every other test of the fit renders its spectra with the fit's own forward model, so the grid's
multilinear interpolation between nodes is shared by the data and the model and never shows. Here
``n`` label sets are drawn inside the grid's cells (each fraction 0.15-0.85 of its cell, so no
label sits on a node), and each spectrum is synthesised directly with PySME at those labels: the
grid's own backend and physics (same line lists, abundances, vmic, R, wavelengths: the grid id is
checked), with its ATLAS9 atmosphere interpolated between the nodes
(:mod:`survey_estimator.synth.interpolate`). Macroturbulence and rotation are applied exactly at
the labels (:func:`survey_estimator.forward.broaden`), the RV shift and resampling as the forward
model does, then blaze shapes, bad pixels, cosmics and photon noise as in training.

Reported per S/N: the fit's MAE, RMS / bound and coverage, and on the noiseless spectra the fit's
error alone: the grid's interpolation error in each label (what the fit cannot do better than).

Synthesis costs ~10 CPU-s per spectrum; spectra are cached under
``<cache>/between-nodes/<grid id>/`` so a rerun (or an interrupted one) synthesises only what is
missing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..labels import LABEL_NAMES

log = logging.getLogger(__name__)


@dataclass
class BetweenNodesConfig:
    """What to synthesise and score.

    Attributes:
        n: label sets synthesised with PySME.
        snrs: S/N of the noisy test sets.
        realisations: noise realisations (and RV residuals, shapes, masks) per spectrum and S/N.
        margin: labels stay this fraction of a cell away from its nodes on every axis.
        vsini_range: km/s, uniform.
        seed: the labels' random stream.
    """

    n: int = 40
    snrs: tuple[float, ...] = (20.0, 100.0)
    realisations: int = 5
    margin: float = 0.15
    vsini_range: tuple[float, float] = (1.0, 12.0)
    seed: int = 2026


def draw_labels(model, cfg: BetweenNodesConfig) -> np.ndarray:
    """(n, 4) labels inside cells whose eight corners all have spectra, never on a node."""
    rng = np.random.default_rng(cfg.seed)
    axes = model.axes[:3]
    out = []
    while len(out) < cfg.n:
        cell = [rng.integers(len(a) - 1) for a in axes]
        frac = rng.uniform(cfg.margin, 1 - cfg.margin, size=3)
        lab = [a[i] + f * (a[i + 1] - a[i]) for a, i, f in zip(axes, cell, frac)]
        lab = np.array([round(lab[0], 0), round(lab[1], 3), round(lab[2], 3), rng.uniform(*cfg.vsini_range)])
        if bool(model.inside(torch.as_tensor(lab[None]))[0]):
            out.append(lab)
    return np.array(out)


def _key(label: np.ndarray) -> str:
    return f"t{label[0]:07.1f}_g{label[1]:+.3f}_m{label[2]:+.3f}"


def synthesise(labels: np.ndarray, grid_id: str, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """PySME spectra at v sin i = 0 at each label's (Teff, log g, [M/H]).

    Returns:
        (flux (n, L) float64 continuum-normalised, wave (L,) A air).
    Raises:
        ValueError: the grid backend's physics is not that of grid ``grid_id``.
    """
    from ..synth.backend import BackendConfig
    from ..synth.interpolate import BetweenNodesBackend
    from ..synth.sources import cache_dir, prepare_sources
    from ..synth.store import grid_id as physics_id

    backend = BetweenNodesBackend(BackendConfig(name="pysme", sources=prepare_sources(molecules=True)))
    if physics_id(backend.physics()) != grid_id:
        raise ValueError(f"the default PySME physics is grid {physics_id(backend.physics())}, not the model's grid {grid_id}")
    root = Path(cache_dir()) / "between-nodes" / grid_id
    root.mkdir(parents=True, exist_ok=True)
    flux = []
    for lab in tqdm(labels, desc="PySME between nodes", unit="spectrum", disable=not progress):
        path = root / f"{_key(lab)}.npy"
        if not path.exists():
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, backend.synthesize(float(lab[0]), float(lab[1]), float(lab[2])))
            tmp.replace(path)
        flux.append(np.load(path).astype(np.float64))
    return np.stack(flux), backend.wave


class SynthesisedSpectra:
    """Renders fine-grid spectra the way the forward model renders its table: macroturbulence and
    rotation at the exact labels, then the Doppler shift and resampling into the canonical layout.
    Has the forward model's ``spectra(labels, rv)`` (the labels select nothing: row i is spectrum i).

    Args:
        flux: (n, L) fine-grid spectra at v sin i = 0; labels: (n, 4); wave: (L,) A.
        model: the :class:`~survey_estimator.forward.ForwardModel` whose physics to apply.
    """

    def __init__(self, flux: np.ndarray, labels: np.ndarray, wave: np.ndarray, model):
        from ..forward import broaden
        from ..layout import C_KMS
        from ..sampling.resample import LayoutResampler

        step = C_KMS * float(np.mean(np.diff(np.log(wave))))
        self.flux = broaden(torch.as_tensor(flux), labels, torch.as_tensor(labels[:, 3]), step, model.config)
        """(n, L) the broadened fine-grid spectra."""
        self.resampler = LayoutResampler(wave)

    def rows(self, index) -> "SynthesisedSpectra":
        """The spectra ``index`` (slice or integer array) of this set, without broadening again."""
        out = object.__new__(SynthesisedSpectra)
        out.flux, out.resampler = self.flux[index], self.resampler
        return out

    def spectra(self, labels: torch.Tensor, rv: torch.Tensor | float = 0.0) -> torch.Tensor:
        from ..sampling.resample import doppler_factors

        rv = torch.as_tensor(rv, dtype=torch.float64).reshape(-1).expand(self.flux.shape[0])
        return self.resampler(self.flux, doppler_factors(rv.cpu())).to(torch.float32)


@dataclass
class BetweenNodesReport:
    """The fit on PySME spectra between nodes: per S/N fit sets, and the noiseless fit errors."""

    labels: np.ndarray
    noiseless_error: np.ndarray
    """(n, 4) fit minus truth on the noiseless spectra: the grid's interpolation error."""
    fits: dict
    """'S/N 20' -> :class:`~.evaluate.FitSet`."""

    def markdown(self) -> str:
        from ..fit.fitter import FitFlag
        from .metrics import bound_scores, bound_table, coverage_table, mae_table, score

        err = self.noiseless_error
        rms = np.sqrt(np.mean(err**2, axis=0))
        med = np.median(np.abs(err), axis=0)
        units = ("K", "dex", "dex", "km/s")
        noiseless = ", ".join(f"{n} {r:.3g} {u} rms (median |error| {m:.3g})" for n, r, m, u in zip(LABEL_NAMES, rms, med, units))
        bounds = {f"{k}, fit": bound_scores(f.true, f.mean, f.bound) for k, f in self.fits.items()}
        scores = {f"{k}, fit": score(f.true, f.mean, f.sigma) for k, f in self.fits.items()}
        stat = {f"{k}, fit": score(f.true, f.mean, f.sigma_stat) for k, f in self.fits.items()}
        poor = {k: float(np.mean((f.flags & int(FitFlag.POOR_FIT)) > 0)) for k, f in self.fits.items()}
        return "\n\n".join([
            f"### The fit on {len(self.labels)} PySME spectra synthesised between the grid nodes "
            f"({next(iter(self.fits.values())).true.shape[0] // len(self.labels)} noise realisations each)",
            f"Noiseless (the grid's interpolation error): {noiseless}.",
            "RMS error / median bound (RMS of error/bound):", bound_table(bounds),
            "MAE:", mae_table(scores),
            "Within 1 / 2 sigma, the catalogue's sigmas (statistical + the grid's interpolation error):", coverage_table(scores),
            "Within 1 / 2 sigma, the statistical (inverse-Fisher) sigmas alone:", coverage_table(stat),
            "POOR_FIT fraction: " + ", ".join(f"{k} {100 * v:.0f} %" for k, v in poor.items()) + ".",
        ])

    def record(self, grid_id: str) -> dict:
        """The grid's interpolation-error record (the format of
        ``survey_estimator/data/grids/<grid_id>.interpolation.json``)."""
        rms = np.sqrt(np.mean(self.noiseless_error**2, axis=0))
        return {"grid_id": grid_id, "rms": {n: float(v) for n, v in zip(LABEL_NAMES, rms)}, "n": int(len(self.labels)),
                "what": "rms label error of noiseless fits of PySME spectra synthesised between the grid nodes"}

    def flat_metrics(self) -> dict[str, float]:
        from .metrics import bound_scores, score

        out = {f"between_nodes/noiseless_rms_{n}": float(v) for n, v in zip(LABEL_NAMES, np.sqrt(np.mean(self.noiseless_error**2, axis=0)))}
        for key, f in self.fits.items():
            slug = key.lower().replace("s/n ", "snr")
            b = bound_scores(f.true, f.mean, f.bound)
            out.update({f"between_nodes_{slug}/rms_over_bound_{n}": float(v) for n, v in zip(LABEL_NAMES, b.rms_over_bound)})
            out.update(score(f.true, f.mean, f.sigma).flat(f"between_nodes_{slug}/"))
        return out


def evaluate_between_nodes(bundle, sampler, cfg, calibration: np.ndarray, bcfg: BetweenNodesConfig | None = None,
                           progress: bool = True) -> BetweenNodesReport:
    """Synthesise (or load) the spectra, fit them noiseless and at each S/N (see the module doc).

    Args:
        bundle: the network (first guess); sampler: the test grid's sampler (its forward model is
            the fit's); cfg: the :class:`~.evaluate.EvalConfig`; calibration: (4,) network sigma factors.
    """
    from ..fit import Fitter
    from .evaluate import fit_set

    bcfg = bcfg or BetweenNodesConfig()
    model = sampler.forward
    labels = draw_labels(model, bcfg)
    flux, wave = synthesise(labels, model.grid_id, progress)
    truth = SynthesisedSpectra(flux, labels, wave, model)
    clean = truth.spectra(torch.as_tensor(labels)).double().numpy()
    from ..normalise import normalise_numpy

    y = np.stack([normalise_numpy(c, np.ones(c.shape, bool))[0] for c in clean])
    res = Fitter(model).fit(y, np.full(y.shape, 1e-8), np.ones(y.shape, bool), labels)
    noiseless = res.labels - labels
    log.info("between nodes, noiseless fit error rms %s", np.round(np.sqrt(np.mean(noiseless**2, axis=0)), 4))
    g = torch.Generator(device=sampler.device).manual_seed(bcfg.seed)
    reps = np.repeat(labels, bcfg.realisations, axis=0)
    rep_truth = truth.rows(np.repeat(np.arange(len(labels)), bcfg.realisations))
    fits = {f"S/N {snr:g}": fit_set(bundle, sampler, snr, cfg, calibration, g, labels=torch.as_tensor(reps, dtype=torch.float32),
                                    model=rep_truth) for snr in bcfg.snrs}
    return BetweenNodesReport(labels, noiseless, fits)


__all__ = ["BetweenNodesConfig", "BetweenNodesReport", "SynthesisedSpectra", "draw_labels", "evaluate_between_nodes", "synthesise"]

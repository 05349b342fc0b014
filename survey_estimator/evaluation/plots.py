"""Evaluation figures as PNG files (matplotlib's object API with the Agg canvas: no display, no pyplot state).

- :func:`residual_plot` residuals vs true label (the seed's Fig. 3)
- :func:`sigma_plot` predicted sigma vs true label (Fig. 4), raw and calibrated
- :func:`attention_plot` attention maps under a spectrum, Mg b marked (Fig. 5)
- :func:`coverage_plot` observed vs expected fraction within k sigma (calibration)

Array conventions as in :mod:`.metrics`: (N, 4) physical labels in ``LABEL_NAMES`` order.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.special import erf

from ..labels import LABEL_NAMES, LABEL_TITLES
from ..rv import MGB_AIR

_MAX_POINTS = 20000


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for ax in fig.axes:  # plain tick labels: no "1e-8+5.25e3" offsets when a test set is one node
        for axis, scale in (("x", ax.get_xscale()), ("y", ax.get_yscale())):
            if scale == "linear":
                ax.ticklabel_format(useOffset=False, axis=axis)
    fig.savefig(path, dpi=110)
    return path


def _thin(n: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``_MAX_POINTS`` samples (scatter plots stay readable and small)."""
    if n <= _MAX_POINTS:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, _MAX_POINTS, replace=False))


def _running_median(x: np.ndarray, y: np.ndarray, bins: int = 15) -> tuple[np.ndarray, np.ndarray]:
    edges = np.linspace(x.min(), x.max() + 1e-9, bins + 1)
    idx = np.digitize(x, edges) - 1
    centres, medians = [], []
    for b in range(bins):
        sel = idx == b
        if sel.sum() >= 3:
            centres.append(0.5 * (edges[b] + edges[b + 1]))
            medians.append(np.median(y[sel]))
    return np.asarray(centres), np.asarray(medians)


def residual_plot(true: np.ndarray, mean: np.ndarray, path: str | os.PathLike, title: str = "") -> Path:
    """Residual (predicted - true) against the true value, one panel per label, with a running median."""
    true, mean = np.asarray(true, float), np.asarray(mean, float)
    keep = _thin(len(true))
    fig = _figure(12, 3.2)
    axes = fig.subplots(1, len(LABEL_NAMES))
    for i, (ax, name) in enumerate(zip(axes, LABEL_NAMES)):
        r = mean[:, i] - true[:, i]
        ax.scatter(true[keep, i], r[keep], s=2, alpha=0.3, color="tab:blue", rasterized=True)
        xc, med = _running_median(true[:, i], r)
        if len(xc):
            ax.plot(xc, med, color="tab:red", lw=1.5, label="running median")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel(f"true {LABEL_TITLES[name]}")
        ax.set_ylabel(f"predicted - true")
        ax.set_title(f"MAE {np.mean(np.abs(r)):.3g}", fontsize=9)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def sigma_plot(true: np.ndarray, sigma: np.ndarray, path: str | os.PathLike, sigma_calibrated: np.ndarray | None = None,
               residual: np.ndarray | None = None, title: str = "") -> Path:
    """Predicted 1-sigma against the true value per label; optionally the calibrated sigma and |residual|."""
    true, sigma = np.asarray(true, float), np.asarray(sigma, float)
    keep = _thin(len(true))
    fig = _figure(12, 3.2)
    axes = fig.subplots(1, len(LABEL_NAMES))
    for i, (ax, name) in enumerate(zip(axes, LABEL_NAMES)):
        if residual is not None:
            ax.scatter(true[keep, i], np.abs(residual[keep, i]), s=2, alpha=0.15, color="0.6", label="|residual|",
                       rasterized=True)
        ax.scatter(true[keep, i], sigma[keep, i], s=2, alpha=0.4, color="tab:blue", label="sigma (raw)", rasterized=True)
        if sigma_calibrated is not None:
            ax.scatter(true[keep, i], np.asarray(sigma_calibrated)[keep, i], s=2, alpha=0.4, color="tab:orange",
                       label="sigma (calibrated)", rasterized=True)
        ax.set_yscale("log")
        ax.set_xlabel(f"true {LABEL_TITLES[name]}")
        ax.set_ylabel("predicted sigma")
    axes[0].legend(fontsize=7, markerscale=4)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def coverage_plot(true: np.ndarray, mean: np.ndarray, sigma: np.ndarray, path: str | os.PathLike,
                  sigma_calibrated: np.ndarray | None = None, title: str = "") -> Path:
    """Observed fraction within k sigma against the Gaussian expectation erf(k / sqrt 2), k in 0..3."""
    true, mean, sigma = (np.asarray(a, float) for a in (true, mean, sigma))
    k = np.linspace(0.0, 3.0, 61)
    expected = erf(k / np.sqrt(2))
    z = np.abs(mean - true)
    fig = _figure(12, 3.2)
    axes = fig.subplots(1, len(LABEL_NAMES))
    for i, (ax, name) in enumerate(zip(axes, LABEL_NAMES)):
        ax.plot(k, expected, color="k", lw=1, ls="--", label="Gaussian")
        ax.plot(k, [(z[:, i] <= kk * sigma[:, i]).mean() for kk in k], color="tab:blue", label="raw")
        if sigma_calibrated is not None:
            sc = np.asarray(sigma_calibrated, float)
            ax.plot(k, [(z[:, i] <= kk * sc[:, i]).mean() for kk in k], color="tab:orange", label="calibrated")
        ax.set_xlabel("k (sigma)")
        ax.set_ylabel("fraction within k sigma")
        ax.set_title(LABEL_TITLES[name], fontsize=9)
        ax.set_ylim(0, 1.02)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def attention_plot(wave: np.ndarray, flux: np.ndarray, maps: np.ndarray, path: str | os.PathLike,
                   title: str = "", lines: tuple[float, ...] = MGB_AIR, lines_name: str = "Mg b",
                   zoom: tuple[float, float] = (5160.0, 5190.0)) -> Path:
    """The spectrum with one attention map per block under it (the seed's Fig. 5), the whole band
    on the left and a zoom on ``zoom`` (the Mg b triplet) on the right, ``lines`` marked.

    Args:
        wave: (8, 4096) air wavelengths, A.
        flux: (8, 4096) normalised flux (channel 0 of the model input + 1).
        maps: (n_blocks, 8, 4096) attention maps upsampled to the input (each block's map sums to 1);
            each panel shows its block's map divided by that map's peak.
        lines: wavelengths (A) marked by dashed lines in every panel.
    """
    wave, flux, maps = np.asarray(wave, float), np.asarray(flux, float), np.asarray(maps, float)
    n_blocks = maps.shape[0]
    fig = _figure(13, 1.5 * (n_blocks + 2))
    axes = fig.subplots(n_blocks + 1, 2, sharex="col", squeeze=False,
                        gridspec_kw={"width_ratios": [2.2, 1.0], "height_ratios": [2.0] + [1.0] * n_blocks})
    colours = ["tab:red", "tab:green", "tab:purple", "tab:orange"]
    for col, (lo, hi) in enumerate(((float(wave.min()), float(wave.max())), zoom)):
        for o in range(wave.shape[0]):
            sel = (wave[o] >= lo) & (wave[o] <= hi)
            if not sel.any():
                continue
            axes[0, col].plot(wave[o][sel], flux[o][sel], color="k", lw=0.4)
            for b in range(n_blocks):
                peak = max(maps[b].max(), 1e-30)
                axes[b + 1, col].plot(wave[o][sel], maps[b, o][sel] / peak, color=colours[b % len(colours)], lw=0.6)
        for ax in axes[:, col]:
            for w in lines:
                ax.axvline(w, color="tab:blue", ls="--", lw=0.7, alpha=0.8)
        axes[0, col].set_xlim(lo, hi)
        axes[-1, col].set_xlabel("air wavelength [A]")
        axes[0, col].text(lines[0], 1.0, lines_name + " ", color="tab:blue", ha="right", va="bottom",
                          fontsize=8, transform=axes[0, col].get_xaxis_transform())
    axes[0, 0].set_ylabel("flux")
    for b in range(n_blocks):
        axes[b + 1, 0].set_ylabel(f"block {b + 1}", fontsize=8)
        for ax in axes[b + 1]:
            ax.set_ylim(0, 1.05)
            ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return _save(fig, path)

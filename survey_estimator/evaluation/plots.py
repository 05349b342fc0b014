"""Evaluation figures as PNG files (matplotlib's object API with the Agg canvas: no display, no pyplot state).

- :func:`residual_plot` residuals vs true label (the seed's Fig. 3)
- :func:`sigma_plot` predicted sigma vs true label (Fig. 4), raw and calibrated
- :func:`attention_plot` attention maps over a spectrum (Fig. 5)
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
                   title: str = "") -> Path:
    """Attention maps over one spectrum: one panel per order.

    Args:
        wave: (8, 4096) Angstrom.
        flux: (8, 4096) normalised flux (channel 0 of the model input).
        maps: (n_blocks, 8, 4096) attention maps upsampled to the input (each block's map sums to 1).
    """
    wave, flux, maps = np.asarray(wave, float), np.asarray(flux, float), np.asarray(maps, float)
    n_orders = wave.shape[0]
    fig = _figure(12, 1.6 * n_orders)
    axes = fig.subplots(n_orders, 1)
    colours = ["tab:red", "tab:green", "tab:purple", "tab:orange"]
    for o, ax in enumerate(np.atleast_1d(axes)):
        ax.plot(wave[o], flux[o], color="k", lw=0.5)
        ax.set_ylabel(f"order {o}", fontsize=8)
        twin = ax.twinx()
        for b in range(maps.shape[0]):
            m = maps[b, o] / max(maps[b].max(), 1e-30)
            twin.plot(wave[o], m, color=colours[b % len(colours)], lw=0.8, alpha=0.8, label=f"block {b + 1}")
        twin.set_ylim(0, 3.0)  # maps (each scaled to its peak) fill the lower third, under the spectrum
        twin.set_yticks([])
    np.atleast_1d(axes)[-1].set_xlabel("air wavelength [A]")
    handles, labels = twin.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside upper right", fontsize=8, ncols=len(handles))
    if title:
        fig.suptitle(title)
    return _save(fig, path)

"""Real-star check: run a model on the real spectra of known stars and set its estimates beside
literature values (a check of the synthetic gap, never training or tuning data).

The stars are the real instrument files of ``../shared/data/real`` (and their cut-down copies in
``tests/data``): HD 41248 (G2V, inside the grid), and the M dwarfs Gl 273 and Gl 581, which sit
at or below the 3500 K grid edge and must come out flagged (``OUTSIDE_GRID``, ``EXTRAPOLATED`` or
``UNFAMILIAR``, whichever the model's estimate and sigma trigger).
Each file goes through the catalogue's own read, preprocess and model code
(:func:`survey_estimator.commands.estimate.estimate_tables`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..labels import LABEL_NAMES


@dataclass(frozen=True)
class RealStar:
    """A star with literature parameters and the file names its spectrum may have.

    Attributes:
        name: star name.
        files: candidate file names, first found wins (the full file, then the cut test copy).
        kind: instrument and product.
        spectral_type: literature spectral type.
        teff: K; logg: dex (cgs); feh: [Fe/H] dex (compared with the model's [M/H]).
        where: where the star sits relative to the grid.
    """

    name: str
    files: tuple[str, ...]
    kind: str
    spectral_type: str
    teff: float
    logg: float
    feh: float
    where: str


REAL_STARS: tuple[RealStar, ...] = (
    RealStar("HD 41248", ("HD41248_1_1_S2D_A.fits", "HD41248_1_1_S2D_A.rows80-95.fits.gz"), "ESPRESSO S2D", "G2V",
             5710.0, 4.48, -0.37, "inside the grid"),
    RealStar("Gl 273", ("HARPS.2003-12-13T06-19-48.371_e2ds_A.fits",), "HARPS old-DRS e2ds", "M3.5V",
             3380.0, 4.9, -0.1, "below the 3500 K grid edge"),
    RealStar("Gl 581", ("HARPS.2010-09-18T23-42-36.178_s1d_A.fits", "HARPS.2010-09-18T23-42-36.178_s1d_A.4900-5500.fits"),
             "HARPS old-DRS s1d", "M3V", 3450.0, 4.9, -0.2, "at the 3500 K grid edge"),
)
"""Literature values as checked in ``../shared/docs/FACTS.md`` (approximate, rounded)."""


def benchmark_stars(data_dir: str) -> tuple[RealStar, ...]:
    """The stars listed in ``data_dir/benchmarks.csv`` (file, star, instrument, teff, logg, mh;
    rows without literature values are kept as format cases with NaN)."""
    import csv
    import math

    path = os.path.join(data_dir, "benchmarks.csv")
    if not os.path.isfile(path):
        return ()
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            num = lambda k: float(row[k]) if row.get(k) not in (None, "") else math.nan  # noqa: E731
            where = "inside the fit's grid" if 4000 <= num("teff") <= 7000 and 3.0 <= num("logg") and num("mh") >= -1.5 else "outside the fit's grid"
            out.append(RealStar(row["star"], (row["file"],), row["instrument"], "", num("teff"), num("logg"), num("mh"), where))
    return tuple(out)


def find_files(data_dir: str, stars: tuple[RealStar, ...] | None = None) -> dict[RealStar, str]:
    """{star: path} for the stars whose file is in ``data_dir`` (others are left out): the
    instrument files of :data:`REAL_STARS` and the benchmarks listed in ``benchmarks.csv``."""
    stars = (*REAL_STARS, *benchmark_stars(data_dir)) if stars is None else stars
    out = {}
    for star in stars:
        for name in star.files:
            path = os.path.join(data_dir, name)
            if os.path.isfile(path):
                out[star] = path
                break
    return out


def check_real_stars(ref, data_dir: str, use_dae: bool = True) -> list[dict]:
    """One dict per star found in ``data_dir``: literature values and the catalogue row's estimates.

    Args:
        ref: a resolved model (:func:`survey_estimator.models.resolve.resolve_model`).
        data_dir: folder holding the stars' files (and the e2ds blaze next to it).
        use_dae: run the bundle's DAE first.
    Returns:
        [{"star", "kind", "spectral_type", "where", "file", "lit_teff", "lit_logg", "lit_feh",
          "status", "error", "flags" (names), <label>, <label>_err ...}].
    Raises:
        FileNotFoundError: none of the stars' files is in ``data_dir``.
    """
    from ..catalogue.schema import flag_names
    from ..commands.estimate import estimate_tables

    found = find_files(data_dir)
    if not found:
        raise FileNotFoundError(f"none of the real-star files ({', '.join(s.files[0] for s in REAL_STARS)}) is in {data_dir}")
    stars, paths = list(found), list(found.values())
    rows = [r for t in estimate_tables(paths, ref, use_dae=use_dae) for r in t.to_pylist()]
    out = []
    for star, path, row in zip(stars, paths, rows):
        entry = {"star": star.name, "kind": star.kind, "spectral_type": star.spectral_type, "where": star.where,
                 "file": os.path.basename(path), "lit_teff": star.teff, "lit_logg": star.logg, "lit_feh": star.feh,
                 "status": row["status"], "error": row["error"], "flags": flag_names(row["flags"] or 0),
                 "method": row.get("method"), "chi2_red": row.get("chi2_red"), "model_error": row.get("model_error")}
        for name in LABEL_NAMES:
            entry[name], entry[f"{name}_err"] = row[name], row[f"{name}_err"]
            entry[f"nn_{name}"] = row.get(f"nn_{name}")
        out.append(entry)
    return out


def _num(v, fmt: str) -> str:
    return "-" if v is None else f"{v:{fmt}}"


def _est(row: dict, name: str, fmt: str) -> str:
    if row[name] is None:
        return "-"
    return f"{row[name]:{fmt}} +/- {row[f'{name}_err']:{fmt}}"


def within_2_sigma(row: dict) -> str:
    """'T g M' letters of the labels whose literature value lies within 2 sigma ('-' for none)."""
    import math

    out = ""
    for name, lit, letter in (("teff", "lit_teff", "T"), ("logg", "lit_logg", "g"), ("mh", "lit_feh", "M")):
        v, e, lv = row.get(name), row.get(f"{name}_err"), row.get(lit)
        if v is not None and e is not None and lv is not None and not math.isnan(lv) and abs(v - lv) <= 2 * e:
            out += letter
    return out or "-"


def markdown(rows: list[dict]) -> str:
    """The check as a markdown table: estimate (1 sigma) beside the literature value, the method,
    the fit's chi^2 and model error, the network's first guess and which labels agree within 2 sigma."""
    lines = ["| star | file | Teff (K) | lit. | log g | lit. | [M/H] | lit. [Fe/H] | v sin i (km/s) | method | chi2_red | model error | network Teff / log g / [M/H] | within 2 sigma | flags |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        flags = ", ".join(n for n in r["flags"] if n != "READ_ERROR") or "-"
        if r["status"] != "ok":
            flags = f"error: {r['error']}"
        kind = ", ".join(x for x in (r["spectral_type"], r["where"]) if x)
        lines.append(f"| {r['star']} ({kind}) | {r['file']} | {_est(r, 'teff', '.0f')} | {r['lit_teff']:.0f} "
                     f"| {_est(r, 'logg', '.2f')} | {r['lit_logg']:.2f} | {_est(r, 'mh', '.2f')} | {r['lit_feh']:+.2f} "
                     f"| {_est(r, 'vsini', '.1f')} | {r.get('method') or '-'} | {_num(r.get('chi2_red'), '.1f')} "
                     f"| {_num(r.get('model_error'), '.3f')} | {_num(r.get('nn_teff'), '.0f')} / {_num(r.get('nn_logg'), '.2f')} / "
                     f"{_num(r.get('nn_mh'), '.2f')} | {within_2_sigma(r)} | {flags} |")
    return "\n".join(lines)


def fit_residual(ref, path: str, out_png: str | None = None) -> dict:
    """The best fit of one real spectrum and its residual per canonical order.

    The file goes through the catalogue's reader and input builder; the shipped network gives the
    start and the fit runs as in ``estimate`` (its grid: :func:`survey_estimator.fit.grid.resolve_grid`).

    Returns:
        {"file", "labels" (4,), "chi2_red", "model_error", "rms_percent" (8 per-order rms of
        data - model, %), "noise_percent" (8 per-order median noise, %), "wave_range" per order};
        with ``out_png`` also a plot of three stretches (data, model, residual).
    """
    import numpy as np
    import torch

    from ..models.resolve import load_bundle
    from ..fit import Fitter, continuum, fit_spectra
    from ..fit.grid import load_forward_model, resolve_grid
    from ..instruments import read_observation
    from ..preprocess import preprocess

    bundle = load_bundle(ref)
    uri = resolve_grid(bundle.manifest.grid_id, recorded=getattr(bundle.manifest, "grid_uri", None))
    if uri is None:
        raise FileNotFoundError(f"no grid for the fit of {path}")
    fitter = Fitter(load_forward_model(uri, progress=False))
    mi = preprocess(read_observation(path))
    pred = bundle.predict(mi.x[None])
    res = fit_spectra(fitter, mi.flux[None], mi.variance[None], mi.mask[None], pred.mean, pred.sigma,
                      resolution=mi.resolution if mi.resolution and mi.resolution < 0.99 * fitter.model.config.resolution else None)
    lab = torch.as_tensor(res.labels)
    spec = fitter.model.spectra(lab, torch.as_tensor(res.rv)).double()
    y = torch.as_tensor(mi.flux[None]).double()
    var = torch.as_tensor(mi.variance[None]).double()
    mask = torch.as_tensor(mi.mask[None])
    w = torch.where(mask, 1.0 / var, torch.zeros_like(var))
    basis = continuum.design(spec.shape[-1], dtype=torch.float64)
    model = (spec * continuum.evaluate(continuum.solve(y, spec, w, basis), basis))[0].numpy()
    r, m = (mi.flux - model), mi.mask
    rms = [float(np.sqrt(np.mean(r[o][m[o]] ** 2)) * 100) if m[o].any() else float("nan") for o in range(r.shape[0])]
    noise = [float(np.median(np.sqrt(mi.variance[o][m[o]])) * 100) if m[o].any() else float("nan") for o in range(r.shape[0])]
    if out_png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(3, 1, figsize=(12, 8))
        for ax, (o, lo, hi) in zip(axes, [(3, 5165, 5190), (5, 5250, 5265), (1, 5080, 5095)]):
            wv = mi.wave[o]
            sel = (wv > lo) & (wv < hi) & m[o]
            ax.plot(wv[sel], mi.flux[o][sel], "k-", lw=0.8, label="observed")
            ax.plot(wv[sel], model[o][sel], "r-", lw=0.8, label="best fit")
            ax.plot(wv[sel], r[o][sel] + 0.2, "b-", lw=0.6, label="residual + 0.2")
            ax.set_xlabel("air wavelength [A]")
            ax.legend(fontsize=7, loc="lower left")
        axes[0].set_title(os.path.basename(path) + ": " + ", ".join(f"{n}={v:.4g}" for n, v in zip(LABEL_NAMES, res.labels[0])))
        fig.tight_layout()
        fig.savefig(out_png, dpi=80)
        plt.close(fig)
    return {"file": os.path.basename(path), "labels": res.labels[0].tolist(), "chi2_red": float(res.chi2_red[0]),
            "model_error": float(res.model_error[0]), "rms_percent": rms, "noise_percent": noise,
            "wave_range": [[float(mi.wave[o][0]), float(mi.wave[o][-1])] for o in range(mi.wave.shape[0])]}


def attention_of_star(ref, path: str, out_png: str, use_dae: bool = True) -> dict:
    """The attention maps of an attention model for one real spectrum (the seed's Fig. 5 on a real
    star): the file goes through the catalogue's reader and input builder, the three maps are drawn
    under its spectrum with the Mg b lines marked (:func:`.plots.attention_plot`).

    Returns:
        {"file", "png", "mgb": :func:`.metrics.attention_near_lines` of the maps on the Mg b lines
        (rest frame, as the model input is)}.
    Raises:
        ValueError: the model is not an attention network.
    """
    from ..instruments import read_observation
    from ..models.resolve import load_bundle
    from ..preprocess import preprocess
    from ..rv import MGB_AIR
    from . import plots
    from .metrics import attention_near_lines

    bundle = load_bundle(ref)
    mi = preprocess(read_observation(path))
    maps = bundle.attention_maps(mi.x[None], use_dae=use_dae)[0]
    flux = mi.flux.copy()
    flux[~mi.mask] = float("nan")  # gaps drawn as gaps
    name = os.path.basename(path)
    plots.attention_plot(mi.wave, flux, maps, out_png, title=f"attention maps of {bundle.manifest.name}, {name}")
    return {"file": name, "png": os.path.basename(out_png), "mgb": attention_near_lines(mi.wave, maps, MGB_AIR)}

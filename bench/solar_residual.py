"""What dominates the solar residual (issue 13): direct PySME syntheses of the solar-node model
against the real HARPS solar spectrum, one physics change at a time.

The model is the grid's own: ATLAS9 deck 5750/4.5/0 (the node nearest the Sun), Gaia-ESO atoms
(+ linemake molecules), the line-list handling of ``survey_estimator.synth.pysme_backend``; it is
broadened in PySME (v sin i, radial-tangential vmac, Gaussian R) and matched to
``sun01_harps.fits`` (one RV for all chunks, a quadratic continuum per 37 A chunk, least
squares). The rms of data - model is reported per chunk, in %.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python bench/solar_residual.py --variant base
    ... --variant vmic085 --variant vmac0 ... --out /tmp/solar.json
    ... --list-variants

Each variant is a change of the baseline (see VARIANTS); nothing here is fitted to the Sun
except the nuisances (RV, continuum).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from survey_estimator.synth.pysme_backend import read_moog, read_turbospectrum
from survey_estimator.synth.sources import (atlas_model_labels, prepare_atmospheres, prepare_atomic_lines,
                                             prepare_molecular_lines, split_atlas_models)

C_KMS = 299792.458
SUN = Path("/work/shared/data/benchmarks/sun01_harps.fits")
CHUNKS = [(5050 + 37 * i, 5087 + 37 * i) for i in range(6)] + [(5272, 5303.5), (5337.5, 5374)]
"""37 A chunks over 5050-5374 A; the HARPS CCD gap of the solar spectrum (5303.6-5337.4 A) is skipped."""
NODE = (5750.0, 4.5, 0.0)

SPURIOUS = [  # atomic lines the model makes >= 0.2 deep where the Sun shows < 0.12 (--find-spurious on
    # the no_ch_bx model; one line per feature; 5245.715, in the wing of 5245.626, left in)
    ("Fe 1", 5051.276), ("Fe 1", 5075.172), ("Cr 1", 5091.883), ("Ti 1", 5100.964), ("Ni 1", 5126.826),
    ("Ni 1", 5157.707), ("Fe 1", 5185.725), ("Fe 1", 5241.900), ("Fe 1", 5245.626), ("Fe 1", 5259.094),
    ("Fe 1", 5273.625), ("Fe 1", 5277.306), ("Fe 1", 5294.085),
]

BASE = dict(monh=0.0, vmic=1.0, vmac=3.5, vsini=1.9, resolution=115000.0, molecules=True, gam6=1.0,
            drop=None, gf_edits=None, accrt=1e-4)

VARIANTS = {
    "base": {},
    "nomol": dict(molecules=False),
    "vmic085": dict(vmic=0.85),
    "vmic090": dict(vmic=0.9),
    "vmac0": dict(vmac=0.0),
    "vmac30": dict(vmac=3.0),
    "vmac40": dict(vmac=4.0),
    "gam6_1.5": dict(gam6=1.5),
    "gam6_2.0": dict(gam6=2.0),
    "drop_predicted": dict(drop="predicted"),  # lines with unidentified ('__') configurations
    "drop_XX": dict(drop="XX"),  # lines with 'X' orbital markers (no ABO, no term)
    "accrt1e-5": dict(accrt=1e-5),
    "no_ch_bx": dict(drop_ch_bx=True),
    "mol_mgh_only": dict(only_mol=["MgH 1"]),
    "no_spurious": dict(drop_lines=SPURIOUS),
    "no_spurious_no_ch_bx": dict(drop_lines=SPURIOUS, drop_ch_bx=True),
    "no_ch_bx_vmic085": dict(drop_ch_bx=True, vmic=0.85),
    "no_ch_bx_vmac40": dict(drop_ch_bx=True, vmac=4.0),
    "no_ch_bx_gam6_1.5": dict(drop_ch_bx=True, gam6=1.5),
    "no_ch_bx_drop_predicted": dict(drop_ch_bx=True, drop="predicted"),
    "best_monh-0.1": dict(drop_lines=SPURIOUS, drop_ch_bx=True, vmac=4.0, vmic=0.9, monh=-0.1),
    "best_monh-0.05": dict(drop_lines=SPURIOUS, drop_ch_bx=True, vmac=4.0, vmic=0.9, monh=-0.05),
    "no_ch_bx_vmac0": dict(drop_ch_bx=True, vmac=0.0),
    "no_ch_bx_vmac0_vsini3": dict(drop_ch_bx=True, vmac=0.0, vsini=3.0),
    "no_ch_bx_vmac0_vsini4": dict(drop_ch_bx=True, vmac=0.0, vsini=4.0),
    "best": dict(drop_lines=SPURIOUS, drop_ch_bx=True, vmac=4.0, vmic=0.9),
}


def log():
    return logging.getLogger("solar_residual")


# -- inputs ---------------------------------------------------------------------------------------
def read_sun():
    from astropy.io import fits

    with fits.open(SUN) as h:
        hd, f = h[0].header, h[0].data.astype(np.float64)
    w = hd["CRVAL1"] + hd["CDELT1"] * (np.arange(f.size) + 1 - hd["CRPIX1"])
    return w, f


def atomic_path() -> Path:
    """The grid's default Gaia-ESO list, cut to the band (downloaded and cut on first use)."""
    return Path(prepare_atomic_lines().path)


def read_atoms(path: Path):
    """The grid's atomic list (:func:`read_turbospectrum`) with the raw fields the variants need."""
    return read_turbospectrum(str(path), details=True)[0]


def molecules():
    """linemake molecules as linemake gives them, plus column ``band`` (the label's first two letters for
    CH: 'AX', 'BX', 'CX' = A-X, B-X, C-X system)."""
    import pandas as pd

    frames = []
    # linemake's lists as they come (the CH B-X system included: the table in docs/grid.md was
    # measured against them, and ``drop_ch_bx`` is the variant the grid adopted)
    for p in (Path(f.path) for f in prepare_molecular_lines(drop_ch_systems=())):
        df = read_moog(str(p))
        labels = [ln.split()[-1] if len(ln.split()) >= 6 else "" for ln in p.read_text().splitlines() if len(ln.split()) >= 4]
        df["band"] = [lab[:2] if sp == "CH 1" else "" for lab, sp in zip(labels, df["species"])]
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def node_deck(teff, logg, mh) -> str:
    path = Path(prepare_atmospheres().path)
    for deck in split_atlas_models(path.read_text()):
        if atlas_model_labels(deck) == (teff, logg, mh):
            return deck
    raise KeyError((teff, logg, mh))


# -- synthesis --------------------------------------------------------------------------------------
def linelist_for(cfg, atoms, mols):
    import pandas as pd
    from pysme.linelist.linelist import LineList

    a = atoms.copy()
    if cfg["drop"] == "predicted":
        a = a[~a["levels"].str.contains("__:", regex=False)]
    elif cfg["drop"] == "XX":
        a = a[~a["orb"].str.upper().eq("XX")]
    if cfg["gf_edits"]:
        for (sp, wl, new) in cfg["gf_edits"]:
            sel = (a["species"] == sp) & (np.abs(a["wlcent"] - wl) < 0.006)
            if new is None:
                a = a[~sel]
            else:
                a.loc[sel, "gflog"] = new
    if cfg.get("drop_lines"):
        for sp, wl in cfg["drop_lines"]:
            a = a[~((a["species"] == sp) & (np.abs(a["wlcent"] - wl) < 0.0015))]
    frames = [a.drop(columns=["vdw_raw", "orb", "levels", "gf_ges"])]
    if cfg["molecules"]:
        m = mols
        if cfg.get("drop_ch_bx"):
            m = m[m["band"] != "BX"]
        if cfg.get("only_mol"):
            m = m[m["species"].isin(cfg["only_mol"])]
        frames.append(m.drop(columns=["band"]))
    df = pd.concat(frames, ignore_index=True).sort_values("wlcent", ignore_index=True)
    return LineList(df, lineformat="short", medium="air")


def synthesize(cfg, atoms, mols, chunks, step_a=0.004):
    """Flux on a fine rest-frame air grid per chunk (padded 1 A), broadened by PySME."""
    from pysme.abund import Abund
    from pysme.atmosphere.krzfile import KrzFile
    from pysme.sme import SME_Structure
    from pysme.synthesize import synthesize_spectrum

    tmp = tempfile.mkdtemp(prefix="solres-")
    kp = os.path.join(tmp, "m.krz")
    Path(kp).write_text(node_deck(*NODE))
    atmo = KrzFile(kp, source="ATLAS9 5750/4.5/0")
    atmo.method = "embedded"
    sme = SME_Structure()
    sme.abund = Abund.solar()
    sme.teff, sme.logg, sme.monh = NODE[0], NODE[1], NODE[2] + cfg["monh"]  # monh: abundances only (same deck)
    sme.vmic, sme.vmac, sme.vsini = cfg["vmic"], cfg["vmac"], cfg["vsini"]
    sme.gam6 = cfg["gam6"]
    sme.atmo = atmo
    sme.linelist = linelist_for(cfg, atoms, mols)
    waves = [np.arange(lo - 1.0, hi + 1.0, step_a) for lo, hi in chunks]
    sme.wran = [[w[0], w[-1]] for w in waves]
    sme.wave = waves
    sme.iptype, sme.ipres = "gauss", cfg["resolution"]
    sme.cscale_flag, sme.vrad_flag = "none", "none"
    sme.accrt = cfg["accrt"]
    sme = synthesize_spectrum(sme)
    return waves, [np.asarray(s, dtype=np.float64) for s in sme.synth]


# -- matching ----------------------------------------------------------------------------------------
def match(obs_w, obs_f, mw, mf, lo, hi, rv, deg=2):
    """rms (%) of obs - model*poly over [lo, hi] with the model shifted by rv; returns (rms, w, r, model)."""
    sel = (obs_w >= lo) & (obs_w < hi) & np.isfinite(obs_f) & (obs_f > 0)
    w, y = obs_w[sel], obs_f[sel]
    m = np.interp(w / (1 + rv / C_KMS), mw, mf)
    x = (w - 0.5 * (lo + hi)) / (0.5 * (hi - lo))
    A = np.stack([m * x ** k for k in range(deg + 1)], 1)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    model = A @ coef
    cont = model / m  # the fitted continuum polynomial
    r = (y - model) / cont  # residual in units of the continuum
    return float(np.sqrt(np.mean(r ** 2)) * 100), w, r, model


def fit_rv(obs_w, obs_f, waves, fluxes, chunks, grid=np.arange(-30, 30.01, 0.5)):
    def total(rv):
        return sum(match(obs_w, obs_f, mw, mf, lo, hi, rv)[0] ** 2 for (lo, hi), mw, mf in zip(chunks, waves, fluxes))

    coarse = min(grid, key=total)
    fine = np.arange(coarse - 0.5, coarse + 0.501, 0.02)
    return float(min(fine, key=total))


def run(names, out=None, rv=None, chunks=CHUNKS, dump=None):
    obs_w, obs_f = read_sun()
    atoms, mols = read_atoms(atomic_path()), molecules()
    results = {}
    for name in names:
        cfg = dict(BASE, **VARIANTS[name]) if isinstance(name, str) else dict(BASE, **name[1])
        key = name if isinstance(name, str) else name[0]
        t0 = time.time()
        waves, fluxes = [], []
        for i in range(0, len(chunks), 4):  # a few chunks per PySME call
            w, f = synthesize(cfg, atoms, mols, chunks[i:i + 4])
            waves += w
            fluxes += f
        if rv is None:
            rv = fit_rv(obs_w, obs_f, waves, fluxes, chunks)
            print(f"RV of the solar spectrum (model frame): {rv:+.2f} km/s", flush=True)
        rms = []
        for (lo, hi), mw, mf in zip(chunks, waves, fluxes):
            rms.append(match(obs_w, obs_f, mw, mf, lo, hi, rv)[0])
        tot = float(np.sqrt(np.mean(np.square(rms))))
        results[key] = {"rms": rms, "total": tot, "cfg": {k: v for k, v in cfg.items() if k != "gf_edits"},
                        "seconds": time.time() - t0}
        print(f"{key:18s} " + " ".join(f"{r:5.2f}" for r in rms) + f" | {tot:5.2f}  ({time.time() - t0:.0f} s)",
              flush=True)
        if dump:
            np.savez(f"{dump}_{key}.npz", rv=rv, **{f"w{i}": w for i, w in enumerate(waves)},
                     **{f"f{i}": f for i, f in enumerate(fluxes)})
    if out:
        Path(out).write_text(json.dumps({"rv": rv, "chunks": chunks, "results": results}, indent=1))
    return rv, results


IP_EV = dict(H=13.6, C=11.26, N=14.53, O=13.62, Na=5.14, Mg=7.65, Al=5.99, Si=8.15, S=10.36, K=4.34, Ca=6.11,
             Sc=6.56, Ti=6.83, V=6.75, Cr=6.77, Mn=7.43, Fe=7.90, Co=7.88, Ni=7.64, Cu=7.73, Zn=9.39, Sr=5.69,
             Y=6.22, Zr=6.63, Nb=6.76, Mo=7.09, Ru=7.36, Ba=5.21, La=5.58, Ce=5.54, Nd=5.53, Sm=5.64, Eu=5.67, Gd=6.15)


def strength_index(atoms):
    """Rough line-strength index log(gf eps N_ion/N_el) - theta chi at T = 5000 K, log Pe = 1.2
    (Saha, partition functions ratio 1): only to rank candidate lines of a feature."""
    from pysme.abund import Abund

    ab, t, lpe = Abund.solar(), 5000.0, 1.2
    out = []
    for r in atoms.itertuples():
        el = r.species.split()[0]
        try:
            a = float(ab[el])
        except Exception:
            a = 0.0
        lr = 2.5 * np.log10(t) - 5040 / t * IP_EV.get(el, 6.5) - 0.1762 - lpe + 0.3
        fion = -np.log10(1 + 10 ** lr) + (lr if r.ionization == 2 else 0.0)
        out.append(r.gflog + a + fion - 5040 / t * r.excit)
    return np.array(out)


def normalised(obs_w, obs_f, waves, fluxes, rv, chunks=CHUNKS):
    """(rest wavelength, observed / continuum, model) over the chunks."""
    W, O, M = [], [], []
    for (lo, hi), mw, mf in zip(chunks, waves, fluxes):
        _, w, r, model = match(obs_w, obs_f, mw, mf, lo, hi, rv)
        wr = w / (1 + rv / C_KMS)
        mm = np.interp(wr, mw, mf)
        W.append(wr)
        O.append(r + mm)
        M.append(mm)
    return np.concatenate(W), np.concatenate(O), np.concatenate(M)


def find_spurious(dump, model_depth=0.20, obs_depth=0.12, min_index=-1.0):
    """Atomic lines at whose centre the model (``dump``, an .npz of :func:`run`) is >= model_depth
    deep and the Sun < obs_depth: lines the model makes that the Sun does not show."""
    d = np.load(dump)
    n = len([k for k in d.files if k.startswith("w")])
    obs_w, obs_f = read_sun()
    W, O, M = normalised(obs_w, obs_f, [d[f"w{i}"] for i in range(n)], [d[f"f{i}"] for i in range(n)], float(d["rv"]))
    atoms = read_atoms(atomic_path())
    atoms["X"] = strength_index(atoms)
    out = []
    for r in atoms[atoms["X"] > min_index].itertuples():
        j = np.searchsorted(W, r.wlcent)
        if j < 3 or j > len(W) - 3 or abs(W[j] - r.wlcent) > 0.02:
            continue
        md, od = 1 - M[j - 2:j + 3].min(), 1 - O[j - 2:j + 3].min()
        if md >= model_depth and od < obs_depth:
            out.append((r.species, round(r.wlcent, 3), r.excit, r.gf_ges, r.vdw_raw, round(float(md), 2),
                        round(float(od), 2), round(float(r.X), 2), r.levels))
    # one line per feature: the strongest (index) of those within 0.05 A
    out.sort(key=lambda t: t[1])
    keep = []
    for t in out:
        if keep and t[1] - keep[-1][1] < 0.05:
            if t[7] > keep[-1][7]:
                keep[-1] = t
            continue
        keep.append(t)
    return keep


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", help="variant name (repeatable); default: base")
    ap.add_argument("--list-variants", action="store_true")
    ap.add_argument("--rv", type=float, default=None, help="RV of the solar spectrum (km/s); default: fitted")
    ap.add_argument("--out", help="write the results as JSON")
    ap.add_argument("--dump", help="prefix for .npz dumps of the model spectra")
    ap.add_argument("--find-spurious", metavar="NPZ", help="list the spurious atomic lines of a dumped model")
    a = ap.parse_args(argv)
    if a.find_spurious:
        for row in find_spurious(a.find_spurious):
            print(row)
        return 0
    if a.list_variants:
        for k, v in VARIANTS.items():
            print(k, v)
        return 0
    logging.getLogger("pysme").setLevel(logging.ERROR)
    print("chunks: " + " ".join(f"{lo}-{hi}" for lo, hi in CHUNKS))
    run(a.variant or ["base"], out=a.out, rv=a.rv, dump=a.dump)
    return 0


if __name__ == "__main__":
    sys.exit(main())

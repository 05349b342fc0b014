"""PySME synthesis cost and accuracy: two sets of synthesis settings on the same nodes, side by side.

    python bench/synthesis.py [--a reference] [--b fast] [--nodes T/G/M ...] [--quick]
                              [--store URI] [--json out.json] [--markdown]

For every node, both settings synthesise the node in THIS process, one after the other, with the
grid's physics (ATLAS9, Gaia-ESO atoms + linemake molecules, R = 115,000, vmic 1 km/s, the stored
44,023-point 0.5 km/s wave grid). Printed per node: CPU seconds of each (``time.process_time``:
fair on a machine shared with other work, unlike wall time), their ratio, and the difference of
the continuum-normalised spectra, b - a, as rms and max |.| in percent of the continuum over all
44,023 points. ``--store`` adds the rms of a's spectrum against that store's node where it has one
(checks that a reproduces what a grid was built with).

Settings are a preset name (``reference``: SME's defaults, what the grid was built with before
2026-12-03; ``fast``: see survey_estimator/synth/backend.py) or a JSON object of
:class:`~survey_estimator.synth.backend.SynthesisSettings` fields, e.g.
``--b '{"accrt": 1e-3, "nmu": 5, "transfer_step_kms": 0.5}'``.

The default 25 nodes span Teff 3500-9750 K, log g 0-5 and [M/H] -2.5..+0.5 (all have an ATLAS9
model). Sources come from the usual cache (``$SURVEY_ESTIMATOR_CACHE``; downloaded on first use).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace

import numpy as np

DEFAULT_NODES = [
    (3500, 0.5, 0.0), (3500, 5.0, -1.0), (3750, 4.5, 0.5), (3750, 5.0, 0.5), (4000, 1.5, -0.5), (4000, 4.5, 0.0),
    (4250, 2.5, -2.5), (4500, 0.0, -2.0), (4500, 4.5, 0.5), (4750, 3.0, 0.0), (5000, 4.0, -1.5),
    (5250, 2.0, 0.5), (5500, 4.5, -0.5), (5750, 4.5, 0.0), (6000, 3.5, -2.5), (6250, 4.0, 0.0),
    (6500, 2.5, -1.0), (6750, 4.5, 0.5), (7000, 3.0, 0.0), (7500, 4.0, -0.5), (8000, 3.0, -1.5),
    (8500, 4.5, 0.0), (9000, 3.5, 0.5), (9500, 4.0, -2.0), (9750, 5.0, 0.0),
]
QUICK_NODES = [(3500, 0.5, 0.0), (4500, 0.0, -2.0), (5750, 4.5, 0.0), (9750, 5.0, 0.0)]
RMS_LIMIT_PCT = 0.2
"""The accuracy a cheaper set of settings must hold on every node to be adopted (issue 13)."""


def settings_from(text: str):
    from survey_estimator.synth.backend import SETTINGS_PRESETS, SynthesisSettings

    if text in SETTINGS_PRESETS:
        return SETTINGS_PRESETS[text]
    return SynthesisSettings(**json.loads(text))


def parse_node(text: str) -> tuple[float, float, float]:
    t, g, m = (float(x) for x in text.split("/"))
    return t, g, m


def _on_grid(teff: float, logg: float, mh: float) -> bool:
    from survey_estimator.labels import GRID_AXES

    return all(np.any(np.isclose(ax.values, v)) for ax, v in zip(GRID_AXES, (teff, logg, mh)))


def projected_core_hours(rows: list[dict], key: str, grid_teffs: np.ndarray) -> float:
    """Core-hours of the whole grid: each node's cost is the mean measured cost at its Teff,
    linearly interpolated between the measured Teffs (cost depends mostly on Teff)."""
    teffs = sorted({r["teff"] for r in rows})
    cost = [np.mean([r[key] for r in rows if r["teff"] == t]) for t in teffs]
    return float(np.sum(np.interp(grid_teffs, teffs, cost)) / 3600)


def machine() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
            f"load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", default="reference", help="reference settings (preset or JSON; default reference)")
    ap.add_argument("--b", default="fast", help="settings to compare (preset or JSON; default fast)")
    ap.add_argument("--nodes", nargs="+", type=parse_node, metavar="T/G/M", help="nodes, e.g. 5750/4.5/0")
    ap.add_argument("--quick", action="store_true", help=f"only {len(QUICK_NODES)} extreme nodes")
    ap.add_argument("--no-molecules", action="store_true", help="atoms only")
    ap.add_argument("--vmic", type=float, default=None, help="microturbulence (default: the grid's)")
    ap.add_argument("--store", default=None, help="also compare a's spectra with this grid store's nodes")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown too")
    args = ap.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.WARNING)
    from survey_estimator.synth.backend import DEFAULT_VMIC_KMS, BackendConfig
    from survey_estimator.synth.pysme_backend import PysmeBackend
    from survey_estimator.synth.sources import prepare_sources
    from survey_estimator.synth.store import GridStore, node_key

    nodes = args.nodes or (QUICK_NODES if args.quick else DEFAULT_NODES)
    sa, sb = settings_from(args.a), settings_from(args.b)
    molecules = not args.no_molecules
    base = BackendConfig(name="pysme", vmic_kms=args.vmic or DEFAULT_VMIC_KMS, molecules=molecules,
                         sources=prepare_sources(molecules=molecules))
    c0 = time.process_time()
    ba = PysmeBackend(replace(base, synthesis=sa))
    bb = PysmeBackend(replace(base, synthesis=sb))
    setup = (time.process_time() - c0) / 2
    store = GridStore(args.store) if args.store else None
    stored = store.finished_keys() if store else set()

    print(f"machine: {machine()}; python {platform.python_version()}")
    print(f"a = {sa.describe()}\nb = {sb.describe()}")
    print(f"{len(ba.wave)} wave points, molecules {'on' if molecules else 'off'}; backend setup {setup:.1f} CPU-s (once per worker)")
    head = f"{'node':>18} {'a CPU-s':>8} {'b CPU-s':>8} {'b/a':>5} {'rms %':>7} {'max %':>7}" + ("  a-store rms %" if store else "")
    print(head, flush=True)
    rows = []
    for teff, logg, mh in nodes:
        row = dict(teff=teff, logg=logg, mh=mh)
        for tag, backend in (("a", ba), ("b", bb)):
            t0 = time.process_time()
            row[f"flux_{tag}"] = backend.synthesize(teff, logg, mh).astype(np.float64)
            row[f"cpu_{tag}"] = time.process_time() - t0
        d = row["flux_b"] - row["flux_a"]
        row["rms_pct"] = float(np.sqrt(np.mean(d**2)) * 100)
        row["max_pct"] = float(np.max(np.abs(d)) * 100)
        key = node_key(teff, logg, mh)
        line = (f"{teff:6.0f}/{logg:3.1f}/{mh:+4.1f}     {row['cpu_a']:8.2f} {row['cpu_b']:8.2f} "
                f"{row['cpu_b'] / row['cpu_a']:5.2f} {row['rms_pct']:7.4f} {row['max_pct']:7.3f}")
        if store:
            if key in stored and store.read_record(key)["status"] == "ok":
                s = store.read_node(key).astype(np.float64)
                row["store_rms_pct"] = float(np.sqrt(np.mean((row["flux_a"] - s) ** 2)) * 100)
                line += f"  {row['store_rms_pct']:13.4f}"
            else:
                line += f"  {'-':>13}"
        print(line, flush=True)
        del row["flux_a"], row["flux_b"]
        rows.append(row)

    ca = np.array([r["cpu_a"] for r in rows])
    cb = np.array([r["cpu_b"] for r in rows])
    worst = max(rows, key=lambda r: r["rms_pct"])
    ok = all(r["rms_pct"] <= RMS_LIMIT_PCT for r in rows)
    print(f"mean CPU-s per node: a {ca.mean():.2f}, b {cb.mean():.2f} (b/a {cb.mean() / ca.mean():.2f}); "
          f"worst rms {worst['rms_pct']:.4f} % at {worst['teff']:.0f}/{worst['logg']:.1f}/{worst['mh']:+.1f}; "
          f"every node <= {RMS_LIMIT_PCT} % rms: {'yes' if ok else 'NO'}")
    grid_teffs = np.array([t for (t, g, m) in ba.decks if _on_grid(t, g, m)])
    proj = {}
    for tag in ("a", "b"):
        hours = projected_core_hours(rows, f"cpu_{tag}", grid_teffs)
        proj[tag] = hours
        print(f"full grid ({grid_teffs.size} nodes with a model; per-node CPU-s interpolated in Teff from the "
              f"nodes above) with {tag}: {hours:.2f} core-hours = {hours / 2:.2f} h on 2 idle cores")
    if args.markdown:
        print("\n| node (Teff/log g/[M/H]) | CPU-s a | CPU-s b | b/a | rms b-a (%) | max abs b-a (%) |\n|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['teff']:.0f}/{r['logg']:.1f}/{r['mh']:+.1f} | {r['cpu_a']:.2f} | {r['cpu_b']:.2f} | "
                  f"{r['cpu_b'] / r['cpu_a']:.2f} | {r['rms_pct']:.4f} | {r['max_pct']:.3f} |")
        print(f"| mean | {ca.mean():.2f} | {cb.mean():.2f} | {cb.mean() / ca.mean():.2f} | "
              f"{np.mean([r['rms_pct'] for r in rows]):.4f} | |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=machine(), a=sa.describe(), b=sb.describe(), molecules=molecules,
                           setup_cpu_s=setup, rows=rows, all_within_limit=ok, projected_core_hours=proj,
                           n_grid_nodes=int(grid_teffs.size)), f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

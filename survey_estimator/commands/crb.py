"""Print the Cramer-Rao bound of the forward model: the smallest 1-sigma any unbiased estimate can have.

The Fisher matrix of the likelihood the fit maximises, at the given labels and continuum S/N per
pixel, with the fit's nuisances marginalised (RV residual, per-order continuum polynomial), over
the 8 canonical orders (5026-5395 A). It scales as 1 / (S/N).

examples:
  survey-estimator crb --teff 5700 --logg 4.4 --mh -0.2 --vsini 4 --snr 20
  survey-estimator crb --teff 4600 --logg 4.5 --mh 0 --vsini 2 --snr 20 50 100 --resolution 50000 --json
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from ..labels import LABEL_NAMES, LABEL_UNITS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teff", type=float, required=True, help="K")
    parser.add_argument("--logg", type=float, required=True, help="dex")
    parser.add_argument("--mh", type=float, required=True, help="dex")
    parser.add_argument("--vsini", type=float, required=True, help="km/s")
    parser.add_argument("--snr", type=float, nargs="+", required=True, help="continuum S/N per pixel (one or more)")
    parser.add_argument("--resolution", type=float, default=None, help="resolving power (default the grid's, 115000)")
    parser.add_argument("--grid", default=None, metavar="URI",
                        help="grid store or packed .npz (default: the packed grid shipped with the package)")
    parser.add_argument("--json", action="store_true", help="one JSON object per S/N")


def run(args: argparse.Namespace) -> int:
    from ..fit import cramer_rao
    from ..fit.grid import default_grid, load_forward_model

    uri = args.grid or default_grid()
    if uri is None:
        print("error: no grid (give --grid)")
        return 2
    model = load_forward_model(uri)
    labels = np.array([[args.teff, args.logg, args.mh, args.vsini]])
    if not bool(model.inside(labels)[0]):
        print(f"error: labels {labels[0].tolist()} are outside the grid {model.describe()['bounds']}")
        return 2
    names = [*LABEL_NAMES, "rv"]
    units = [*(LABEL_UNITS[n] for n in LABEL_NAMES), "km/s"]
    if not args.json:
        print(f"Cramer-Rao bound (1 sigma), grid {model.grid_id}, R = {args.resolution or model.config.resolution:g}, "
              f"labels {labels[0].tolist()}")
        print("  S/N " + "".join(f"{n + ' [' + u + ']':>16}" for n, u in zip(names, units)))
    for snr in args.snr:
        bound = cramer_rao(model, labels, snr, resolution=args.resolution)[0]
        if args.json:
            print(json.dumps({"snr": snr, "grid_id": model.grid_id, **{f"sigma_{n}": float(b) for n, b in zip(names, bound)}}))
        else:
            print(f"{snr:5g} " + "".join(f"{b:16.4g}" for b in bound))
    return 0

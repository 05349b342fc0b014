"""Write a simulated HARPS-N old-DRS e2ds file (and its blaze file) from the synthetic grid.

Rows 36-43 hold the spectrum at the given labels, in counts with photon noise at the given
median continuum S/N, blaze included (unless --no-blaze), in the observatory frame:
lambda_obs = lambda_rest * D(rv) / D(berv) (DRS convention RV_bary = RV_obs + BERV). Other rows
hold the continuum only. --out may be a directory: the file is then named
HARPN.<DATE-OBS with hyphens>_e2ds_A.fits.
"""
from __future__ import annotations

import argparse
import logging

from ..e2ds_writer import DEFAULT_DATE, E2dsSimulator, Exposure
from ..sampling.interpolation import OutsideGridError
from ..storage import StorageError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teff", type=float, required=True, help="effective temperature (K)")
    parser.add_argument("--logg", type=float, required=True, help="surface gravity log g (dex)")
    parser.add_argument("--mh", type=float, required=True, help="metallicity [M/H] (dex)")
    parser.add_argument("--vsini", type=float, default=0.0, help="projected rotation v sin i (km/s, 0-30)")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("--snr", type=float, default=100.0, help="median continuum S/N per pixel over rows 36-43 (default 100)")
    noise.add_argument("--noiseless", action="store_true", help="no noise")
    parser.add_argument("--rv", type=float, default=0.0, help="the star's radial velocity (km/s)")
    parser.add_argument("--berv", type=float, default=0.0, help="barycentric Earth RV written to DRS BERV (km/s)")
    parser.add_argument("--no-blaze", action="store_true", help="no blaze: the blaze file holds ones")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--date-obs", default=DEFAULT_DATE, help="DATE-OBS (ISO, UTC); names the file")
    parser.add_argument("--object", default="SIMULATED", help="target name (TNG OBS TARG NAME)")
    parser.add_argument("--grid", required=True, help="grid store URI (local directory or s3://)")
    parser.add_argument("--out", required=True, help="output .fits path, or a directory")
    parser.add_argument("--device", default="cpu", help="torch device for the rendering")


def run(args: argparse.Namespace) -> int:
    exposure = Exposure(args.teff, args.logg, args.mh, args.vsini, snr=None if args.noiseless else args.snr,
                        rv=args.rv, berv=args.berv, blaze=not args.no_blaze, seed=args.seed,
                        date_obs=args.date_obs, object_name=args.object)
    try:
        files = E2dsSimulator(args.grid, device=args.device).write(args.out, exposure)
    except (OutsideGridError, StorageError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    print(files.e2ds)
    print(files.blaze)
    return 0

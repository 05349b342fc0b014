"""Synthesise the (Teff, log g, [M/H]) grid at v sin i = 0 into a grid store (Ray tasks, resumable).

Every node with an ATLAS9 model is synthesised with PySME (Gaia-ESO atomic lines, linemake
MgH/CH/C2/CN), R = 115,000, continuum-normalised, on the fine log-uniform wavelength grid; nodes
without a model are recorded as 'missing'. A rerun skips finished nodes. Runs on a local Ray
(default) or on the cluster in RAY_ADDRESS (as under `ray job submit`). Sources are downloaded
from PyPI once and cached under $SURVEY_ESTIMATOR_CACHE (default ~/.cache/survey-estimator).

examples:
  survey-estimator build-grid --teff 5000 6000 --logg 4 5 --mh -0.5 0 --num-cpus 2
  survey-estimator build-grid --out s3://bucket/grids/v1 --no-molecules
  survey-estimator build-grid --backend analytic --out /tmp/toy-grid      # seconds, for demos
"""
from __future__ import annotations

import argparse
import logging

from ..labels import LOGG, MH, TEFF

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..synth.backend import DEFAULT_RESOLUTION, DEFAULT_VMIC_KMS

    parser.add_argument("--out", default=None, help="grid store URI: local dir or s3://bucket/prefix "
                        "(default: <cache>/grids/default)")
    parser.add_argument("--teff", nargs=2, type=float, metavar=("MIN", "MAX"), default=[TEFF.start, TEFF.stop],
                        help=f"Teff range in K (default {TEFF.start:g} {TEFF.stop:g})")
    parser.add_argument("--logg", nargs=2, type=float, metavar=("MIN", "MAX"), default=[LOGG.start, LOGG.stop],
                        help=f"log g range in dex (default {LOGG.start:g} {LOGG.stop:g})")
    parser.add_argument("--mh", nargs=2, type=float, metavar=("MIN", "MAX"), default=[MH.start, MH.stop],
                        help=f"[M/H] range in dex (default {MH.start:g} {MH.stop:g})")
    parser.add_argument("--molecules", action=argparse.BooleanOptionalAction, default=True,
                        help="include MgH, CH, C2, CN lines (default on; ~2-4x the cost)")
    parser.add_argument("--vmic", type=float, default=DEFAULT_VMIC_KMS,
                        help=f"microturbulence in km/s (default {DEFAULT_VMIC_KMS:g}; ATLAS9 models used 2)")
    parser.add_argument("--resolution", type=float, default=DEFAULT_RESOLUTION, help="instrumental R (default 115000)")
    parser.add_argument("--backend", choices=("pysme", "analytic"), default="pysme",
                        help="pysme (real synthesis) or analytic (toy lines for tests and demos)")
    parser.add_argument("--atmospheres", metavar="FILE", help="your own ATLAS9 decks (concatenated, .gz ok) "
                        "instead of roland's grid")
    parser.add_argument("--atomic-lines", metavar="FILE", help="your own atomic list in Turbospectrum format "
                        "instead of the Gaia-ESO list")
    parser.add_argument("--molecular-lines", metavar="FILE", nargs="+", help="your own molecular lists in "
                        "MOOG format instead of linemake's")
    parser.add_argument("--num-cpus", type=int, default=None, help="at most this many nodes synthesised at once "
                        "(and the CPUs of a local Ray); default: all the cluster's CPUs")
    parser.add_argument("--nodes-per-task", type=int, default=3, help="nodes per Ray task (default 3)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace):
    """The :class:`BuildConfig` described by parsed arguments (downloads default sources)."""
    from ..synth.backend import BackendConfig
    from ..synth.build import BuildConfig, GridRanges
    from ..synth.sources import cache_dir, prepare_sources

    sources = ()
    if args.backend == "pysme":
        sources = prepare_sources(args.atmospheres, args.atomic_lines, args.molecular_lines, molecules=args.molecules)
    backend = BackendConfig(name=args.backend, vmic_kms=args.vmic, molecules=args.molecules,
                            resolution=args.resolution, sources=sources)
    return BuildConfig(
        out=args.out or str(cache_dir() / "grids" / "default"),
        backend=backend,
        ranges=GridRanges(tuple(args.teff), tuple(args.logg), tuple(args.mh)),
        nodes_per_task=args.nodes_per_task,
        num_cpus=args.num_cpus,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from ..synth.build import build_grid

    report = build_grid(config_from_args(args))
    print(report.summary())
    print(f"grid store: {report.uri}")
    return 1 if report.failed else 0

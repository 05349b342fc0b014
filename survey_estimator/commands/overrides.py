"""The options of ``inspect`` and ``estimate`` that override what a file says or what was assumed
about it (:class:`~survey_estimator.observation.Overrides`)."""
from __future__ import annotations

import argparse
import sys

from ..instruments.registry import names
from ..observation import Overrides


def add_override_arguments(parser: argparse.ArgumentParser, every: str = "the spectrum") -> None:
    """``--instrument``, ``--resolution``, ``--medium``, ``--frame``, ``--rv`` and
    ``--normalised``/``--not-normalised`` (``every`` names what they apply to in the help)."""
    group = parser.add_argument_group("overrides", f"what {every} is, whatever the file says or would be assumed")
    group.add_argument("--instrument", metavar="NAME", default=None,
                       help=f"spectrograph of {every} (known: {', '.join(names())}; any other name is kept, read generically)")
    group.add_argument("--resolution", type=float, default=None, metavar="R",
                       help=f"resolving power of {every} (default: header card, else instrument record, else assumed "
                            "and flagged RESOLUTION_ASSUMED)")
    group.add_argument("--medium", choices=("air", "vacuum"), default=None,
                       help="medium of the wavelengths (default: cards, else the format's convention, else air, flagged MEDIUM_ASSUMED)")
    group.add_argument("--frame", choices=("rest", "barycentric", "observatory"), default=None,
                       help="frame of the wavelengths: rest (no shift), barycentric (the star's RV is removed) or "
                            "observatory (the header's BERV, then the RV) (default: SPECSYS, else the format's, else barycentric)")
    group.add_argument("--rv", type=float, default=None, metavar="KMS",
                       help="the star's barycentric RV (km/s) to remove, instead of the header's or a measured one")
    norm = group.add_mutually_exclusive_group()
    norm.add_argument("--normalised", dest="normalised", action="store_true", default=None,
                      help="the flux is already continuum-normalised (default: judged from the flux)")
    norm.add_argument("--not-normalised", dest="normalised", action="store_false",
                      help="the flux is not continuum-normalised")


def overrides_from_args(args: argparse.Namespace) -> Overrides | None:
    """The :class:`Overrides` the parsed options give; None (the reason printed to stderr) for an
    impossible value or combination (e.g. ``--rv`` with ``--frame rest``): the command exits 2."""
    try:
        return Overrides(instrument=args.instrument, resolution=args.resolution, medium=args.medium, frame=args.frame,
                         rv_kms=args.rv, normalised=args.normalised)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None

"""The ``survey-estimator`` console command: one sub-command per job.

Each sub-command lives in ``survey_estimator/commands/<name>.py`` and exposes
``add_arguments(parser)`` and ``run(args) -> int``; ``jobs/<name>.py`` calls the same module so that
``ray job submit -- python jobs/<name>.py`` and ``survey-estimator <name>`` are one program.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS: dict[str, str] = {
    "build-grid": "build_grid",
    "simulate": "simulate",
    "inspect": "inspect",
    "train": "train",
    "evaluate": "evaluate",
    "catalogue": "catalogue",
    "query": "query",
    "estimate": "estimate",
    "crb": "crb",
    "register": "register",
    "demo": "demo",
}


def _module(name: str):
    return importlib.import_module(f"survey_estimator.commands.{COMMANDS[name]}")


def available() -> list[str]:
    """Sub-commands whose modules exist in this installation."""
    out = []
    for name, mod in COMMANDS.items():
        if importlib.util.find_spec(f"survey_estimator.commands.{mod}") is not None:
            out.append(name)
    return out


def build_parser(name: str) -> argparse.ArgumentParser:
    mod = _module(name)
    parser = argparse.ArgumentParser(
        prog=f"survey-estimator {name}",
        description=(mod.__doc__ or "").strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    mod.add_arguments(parser)
    return parser


HTTP_CLIENT_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")
"""At DEBUG these print request headers and signatures (key id, session token): kept at INFO even with -v."""


def configure_logging(verbose: bool = False) -> None:
    """Root logging at INFO (DEBUG with ``-v``), the :data:`HTTP_CLIENT_LOGGERS` never below INFO."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for name in HTTP_CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


def run_command(name: str, argv: list[str] | None = None) -> int:
    """Parse ``argv`` for sub-command ``name`` and run it; used by ``jobs/*.py`` too."""
    args = build_parser(name).parse_args(argv)
    configure_logging(args.verbose)
    return int(_module(name).run(args) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = available()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in names:
        lines = []
        for n in names:
            doc = (_module(n).__doc__ or "").strip().splitlines()
            lines.append(f"  {n:<12} {doc[0] if doc else ''}")
        print("usage: survey-estimator COMMAND [options]   (COMMAND --help for its options)\n\ncommands:")
        print("\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    return run_command(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())

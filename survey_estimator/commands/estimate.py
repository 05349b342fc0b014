"""Estimate Teff, log g, [M/H] and v sin i of spectra on disk: one catalogue row per file.

Each FILE (HARPS-N/HARPS e2ds, ESPRESSO S2D, s1d or ADP table; plain or gzip) is read,
preprocessed and estimated exactly as the catalogue job does it, and printed as one row with the
catalogue's columns (docs/catalogue.md): an aligned table, or one JSON object a line with --json.
A file that cannot be read becomes an error row naming the reason; the others still get
estimates. Old-DRS e2ds files find their blaze (``DRS BLAZE FILE``) beside them or one night
folder away, as ``inspect`` does (the one lookup, ``instruments.blaze.find_blaze``), or take
--blaze. --instrument, --resolution, --medium, --frame, --rv and --normalised/--not-normalised
say what every FILE is, over what its header says or what would be assumed.

The model is --model (models:/NAME@ALIAS, models:/NAME/VERSION, s3:// or local bundle folder),
by default the bundle shipped in survey_estimator/models/production (or $SURVEY_ESTIMATOR_BUNDLE),
else models:/stellar-estimator@production from the MLflow registry ($MLFLOW_TRACKING_URI).

The network's estimate is the first guess of a maximum-likelihood fit of the forward model
(docs/model-card.md) whenever the model's grid is reachable: the grid the bundle records, the
packed grid shipped with the package, or --grid; --no-fit gives the network alone. Columns
nn_teff, ... keep the network's values; method, chi2_red and model_error describe the fit.

Exit status: 0 all rows ok, 1 some error row, 2 no usable model or bad arguments.

examples:
  survey-estimator estimate HARPS.2003-12-13T06-19-48.371_e2ds_A.fits ADP.2014-09-16T11-04-45.123.fits
  survey-estimator estimate --json --model models:/stellar-estimator/3 spectra/*.fits > rows.jsonl
  survey-estimator estimate --no-fit spectrum.fits                 # the network alone (milliseconds)
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import sys
from collections.abc import Iterator, Sequence

import pyarrow as pa

from ..storage import StorageError, is_s3, redact
from .overrides import add_override_arguments, overrides_from_args

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="spectra (e2ds, S2D, echelle image, 1D FITS image, FITS table, text; plain or .gz)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    parser.add_argument("--model", default=None,
                        help="models:/NAME@ALIAS, models:/NAME/VERSION, s3:// or local bundle folder "
                             "(default: the shipped bundle, else models:/stellar-estimator@production)")
    parser.add_argument("--no-dae", action="store_true", help="estimate without the denoiser")
    parser.add_argument("--blaze", metavar="FILE", default=None,
                        help="blaze file for old-DRS e2ds inputs (default: the DRS BLAZE FILE found beside each "
                             "or one night folder away)")
    parser.add_argument("--batch-size", type=int, default=16, help="spectra per model call")
    add_fit_arguments(parser)
    add_override_arguments(parser, every="every FILE")


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    """--grid and --no-fit (estimate and catalogue)."""
    parser.add_argument("--grid", default=None, metavar="URI",
                        help="grid for the likelihood fit: store folder, s3:// store or packed .npz "
                             "(default: the model's grid, else the packed grid shipped for its grid id)")
    parser.add_argument("--no-fit", action="store_true", help="the network's estimate alone, no likelihood fit")


# -- inputs ---------------------------------------------------------------------------------------
def archive_objects(paths: Sequence[str]) -> list:
    """One :class:`~survey_estimator.catalogue.inventory.ArchiveObject` per path, as the catalogue
    lists local files; a path that cannot be stat'ed keeps an empty ETag (its read fails into an
    error row)."""
    from ..catalogue.inventory import ArchiveObject, stat_local
    from ..catalogue.schema import night_from_key

    out = []
    for p in paths:
        try:
            full, etag, size = stat_local(p)
        except OSError:
            full, etag, size = os.path.abspath(p), "", 0
        out.append(ArchiveObject(full, etag, size, night_from_key(full)))
    return out


# -- estimation -----------------------------------------------------------------------------------
def estimate_tables(paths: Sequence[str], ref, use_dae: bool = True, blaze_file: str | None = None,
                    batch_size: int = 16, fit=None, resolution: float | None = None,
                    overrides=None) -> Iterator[pa.Table]:
    """Catalogue tables (:data:`~survey_estimator.catalogue.schema.SCHEMA`) for ``paths``, in order,
    ``batch_size`` files at a time: the catalogue's read stage (``read_one`` per file, stacked by
    :func:`~survey_estimator.catalogue.rows.to_batch`) and model stage (``Predictor``, with
    :class:`~survey_estimator.catalogue.predict.FitOptions` ``fit``) run in this process. Blaze files are looked up beside ``paths`` and one night folder away
    (:func:`~survey_estimator.instruments.blaze.local_blaze_index`); ``resolution`` and
    ``overrides`` (:class:`~survey_estimator.observation.Overrides`) apply to every file.

    Raises:
        ModelNotFoundError: the model of ``ref`` cannot be loaded.
    """
    from tqdm import tqdm

    from ..catalogue.predict import Predictor
    from ..catalogue.read import ReadOptions, read_one
    from ..catalogue.rows import to_batch
    from ..instruments.blaze import local_blaze_index

    objects = archive_objects(paths)
    opts = ReadOptions(blaze=local_blaze_index(paths), blaze_file=blaze_file, retries=1, resolution=resolution,
                       overrides=overrides)
    predictor = Predictor(ref, use_dae=use_dae, fit=fit)
    with tqdm(total=len(objects), unit="file", desc="estimate", disable=None, file=sys.stderr) as bar:
        for i in range(0, len(objects), batch_size):
            chunk = objects[i : i + batch_size]
            yield predictor(to_batch([read_one(o, opts) for o in chunk]))
            bar.update(len(chunk))


# -- output ---------------------------------------------------------------------------------------
def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dt.datetime):
        return v.isoformat()
    if isinstance(v, list):
        return [_json_value(x) for x in v]
    return v


def json_rows(table: pa.Table) -> list[dict]:
    """Rows of a catalogue table as JSON-ready dicts (catalogue column order; nulls and non-finite
    numbers as None, timestamps as ISO 8601 strings)."""
    return [{k: _json_value(v) for k, v in row.items()} for row in table.to_pylist()]


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.5f}" if abs(v) >= 1e4 else f"{v:.6g}"
    if isinstance(v, list):
        return "[" + ",".join("-" if x is None else f"{x:.3g}" for x in v) + "]"
    if isinstance(v, dt.datetime):
        return v.isoformat(timespec="seconds")
    return str(v)


def format_table(table: pa.Table) -> str:
    """An aligned text table: a header of column names, then one line per row."""
    names = table.column_names
    cells = [[_cell(v) for v in row.values()] for row in table.to_pylist()]
    widths = [max([len(n)] + [len(r[j]) for r in cells]) for j, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..models.resolve import ModelNotFoundError, resolve_model
    from ..catalogue.predict import FitOptions
    from ..catalogue.schema import STATUS_OK

    overrides = overrides_from_args(args)
    if overrides is None:
        return 2
    if args.batch_size < 1:
        print("error: --batch-size must be at least 1", file=sys.stderr)
        return 2
    remote = [f for f in args.files + [args.blaze or ""] if is_s3(f)]
    if remote:
        print(f"error: estimate reads local files ({remote[0]} is not); catalogue object storage with "
              "`survey-estimator catalogue --archive s3://...`", file=sys.stderr)
        return 2
    if args.blaze and not os.path.isfile(args.blaze):
        print(f"error: blaze file {args.blaze} does not exist", file=sys.stderr)
        return 2
    tables = []
    try:
        ref = resolve_model(args.model)
        for table in estimate_tables(args.files, ref, use_dae=not args.no_dae,
                                     blaze_file=os.path.abspath(args.blaze) if args.blaze else None,
                                     batch_size=args.batch_size, fit=FitOptions(not args.no_fit, args.grid),
                                     overrides=overrides):
            if args.json:
                for row in json_rows(table):
                    print(json.dumps(row), flush=True)
            tables.append(table)
    except (ModelNotFoundError, StorageError) as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    result = pa.concat_tables(tables)
    if not args.json:
        print(format_table(result))
    n_bad = sum(1 for s in result.column("status").to_pylist() if s != STATUS_OK)
    if n_bad:
        log.warning("%d of %d files could not be estimated (see the error column)", n_bad, len(result))
    return 1 if n_bad else 0

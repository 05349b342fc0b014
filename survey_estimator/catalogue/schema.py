"""The catalogue's Parquet schema: a contract that tests, queries and users rely on.

One row per (archive object, ETag, model version). Every column is declared once in
:data:`COLUMNS` with its Arrow type, unit and description; :data:`SCHEMA` is built from it and
docs/catalogue.md repeats it. ``night`` is the Hive partition column (``night=YYYY-MM-DD/``).

Flags: the ``flags`` column is an int64 bitmask. Bits 0-31 are the preprocessing flags exactly as
:class:`survey_estimator.preprocess.Flag` defines them (low S/N, orders missing, RV measured, ...);
bits 32 and up are
:class:`CatalogueFlag`, set by the catalogue from the prediction and the model input.
:func:`flag_names` decodes a value into names from both.
"""
from __future__ import annotations

import datetime as dt
import enum
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..instruments.registry import INSTRUMENTS, from_file_name, lookup
from ..labels import LABEL_AXES, LABEL_HI, LABEL_LO, LABEL_NAMES, LABEL_UNITS

SCHEMA_VERSION = "catalogue/3"
PARTITION_COLUMN = "night"
STATUS_OK = "ok"
STATUS_ERROR = "error"
COV_SIZE = len(LABEL_NAMES) ** 2


LISTING, HEADER, READ, MODEL = "listing", "header", "read", "model"
"""Origins of a column: the archive listing, the file's header (both carried by the read stage),
the read stage's own work, the model stage."""


@dataclass(frozen=True)
class Column:
    """One catalogue column: name, Arrow type, unit ('' when none), description and origin.

    ``origin`` says which stage fills it: :data:`LISTING`, :data:`HEADER` and :data:`READ`
    columns come out of the read stage (the row contract of
    :mod:`survey_estimator.catalogue.rows` is derived from them), :data:`MODEL` columns are
    added by the model stage. ``flags`` is a read column that the model stage adds bits to.
    """

    name: str
    type: pa.DataType
    unit: str
    description: str
    origin: str = MODEL


def _label_columns() -> list[Column]:
    cols = []
    for name, axis in zip(LABEL_NAMES, LABEL_AXES):
        unit = LABEL_UNITS[name]
        cols.append(Column(name, pa.float64(), unit, f"Estimated {name} (physical units; grid {axis.start:g}..{axis.stop:g}): "
                                                    "the likelihood fit's maximum when `method` is 'fit', else the network's posterior mean."))
        cols.append(Column(f"{name}_err", pa.float64(), unit, f"1-sigma uncertainty of {name} (physical units): the fit's "
                                                              "inverse-Fisher sigma, or the network's calibrated sigma."))
    return cols


def _network_columns() -> list[Column]:
    cols = []
    for name in LABEL_NAMES:
        unit = LABEL_UNITS[name]
        cols.append(Column(f"nn_{name}", pa.float64(), unit, f"The network's posterior mean of {name} (the fit's first guess)."))
        cols.append(Column(f"nn_{name}_err", pa.float64(), unit, f"The network's calibrated 1-sigma of {name}."))
    return cols


FIT_COLUMNS: tuple[Column, ...] = (
    Column("method", pa.string(), "", "Where the estimate comes from: 'fit' (maximum-likelihood fit of the forward model, "
                                      "started from the network) or 'network' (no grid reachable, --no-fit, FIT_FAILED or BEYOND_FIT_GRID); null for error rows."),
    Column("chi2_red", pa.float64(), "", "Reduced chi^2 of the best fit with the noise alone (about 1 when the model describes "
                                         "the spectrum to the noise; real stars at high S/N sit far above 1, see model_error)."),
    Column("model_error", pa.float64(), "", "Relative model error added to the noise in the likelihood, var + (model_error * model)^2: "
                                            "0 when not needed; a few % for real FGK stars; above the POOR_FIT threshold the star is not like the grid."),
    Column("fit_rv_kms", pa.float64(), "km/s", "Radial-velocity residual fitted with the labels (on top of rv_kms)."),
    Column("fit_iterations", pa.int64(), "", "Levenberg-Marquardt iterations of the fit (all passes)."),
    Column("fit_converged", pa.bool_(), "", "The fit met its convergence test."),
    Column("grid_id", pa.string(), "", "Id of the grid whose forward model the fit used (null for method 'network')."),
)


COLUMNS: tuple[Column, ...] = (
    Column("source_uri", pa.string(), "", "Full URI of the archive object (s3://bucket/key or absolute local path).", LISTING),
    Column("etag", pa.string(), "", "The object's ETag as listed (S3), or 'local-<size>-<mtime_ns>' for local files; a changed file gets new rows.", LISTING),
    Column("size_bytes", pa.int64(), "byte", "Object size as listed.", LISTING),
    Column("night", pa.string(), "", "Observing night YYYY-MM-DD (partition column): the calendar date of the local noon that starts the night, i.e. date(UTC + longitude/15 h - 12 h) at the observatory. From the observation date; for error rows from the date in the file name, else the night the file was catalogued (never null).", READ),
    Column("object", pa.string(), "", "Target name from the header.", HEADER),
    Column("instrument", pa.string(), "", "Instrument (e.g. HARPS-N, HARPS, ESPRESSO).", HEADER),
    Column("drs_version", pa.string(), "", "Data-reduction pipeline version that wrote the file.", HEADER),
    Column("ra_deg", pa.float64(), "deg", "Right ascension (ICRS) in degrees.", HEADER),
    Column("dec_deg", pa.float64(), "deg", "Declination (ICRS) in degrees.", HEADER),
    Column("mjd_obs", pa.float64(), "d", "Modified Julian date of the exposure start (UTC).", HEADER),
    Column("bjd", pa.float64(), "d", "Barycentric Julian date (TDB) from the header, when present.", HEADER),
    Column("exptime_s", pa.float64(), "s", "Exposure time in seconds.", HEADER),
    Column("berv_kms", pa.float64(), "km/s", "Barycentric Earth radial velocity applied.", HEADER),
    Column("rv_kms", pa.float64(), "km/s", "Stellar radial velocity applied (header value, or measured by cross-correlation: see flags); null when none was applied, e.g. an unreliable measurement (RV_UNRELIABLE).", HEADER),
    Column("snr", pa.float64(), "", "Signal-to-noise ratio: median over the 8 canonical orders.", READ),
    *_label_columns(),
    Column("cov", pa.list_(pa.float64()), "physical", "Full 4x4 covariance in physical units, row-major over (teff, logg, mh, vsini): a list of 16 float64 (reshape(4, 4)); null for error rows. The fit's inverse Fisher matrix (continuum and RV marginalised) for method 'fit'."),
    *FIT_COLUMNS,
    *_network_columns(),
    Column("flags", pa.int64(), "", "Bitmask: bits 0-31 preprocessing flags, bits 32+ catalogue flags (see flag table).", READ),
    Column("status", pa.string(), "", "'ok' (estimates present) or 'error' (estimates null, see error).", READ),
    Column("error", pa.string(), "", "For error rows: the reason (file and cause); null for ok rows. Never holds credentials.", READ),
    Column("error_class", pa.string(), "", "For error rows the retry class: 'permanent' (the file is bad; not retried), 'transient' (storage, timeout, memory, lost task; retried by the next run) or 'unexpected' (a bug; retried once code_version or preprocessing_version changes); null for ok rows.", READ),
    Column("code_version", pa.string(), "", "Version of the code that wrote the row: package version + hash of its sources.", READ),
    Column("model_name", pa.string(), "", "Name of the model bundle (registry name for models:/ URIs)."),
    Column("model_version", pa.string(), "", "Model version: the registry version number, or a content hash for a local bundle."),
    Column("preprocessing_version", pa.string(), "", "Version of the preprocessing (readers + layout + normalisation) that made the model input.", READ),
    Column("processed_at", pa.timestamp("us", tz="UTC"), "", "When this row was computed (UTC)."),
)

COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
SCHEMA: pa.Schema = pa.schema(
    [pa.field(c.name, c.type, metadata={"unit": c.unit, "description": c.description}) for c in COLUMNS],
    metadata={"survey_estimator.schema": SCHEMA_VERSION},
)
DATA_SCHEMA: pa.Schema = pa.schema([f for f in SCHEMA if f.name != PARTITION_COLUMN], metadata=SCHEMA.metadata)
"""Schema of the Parquet files themselves (the partition column lives in the directory names)."""


CATALOGUE_FLAG_SHIFT = 32


class CatalogueFlag(enum.IntFlag):
    """Flags the catalogue adds to the preprocessing flags (bits 32 and up of ``flags``)."""

    OUTSIDE_GRID = 1 << 32
    EXTRAPOLATED = 1 << 33
    MOSTLY_MASKED = 1 << 34
    NONFINITE = 1 << 35
    READ_ERROR = 1 << 36
    UNFAMILIAR = 1 << 37
    FIT_FAILED = 1 << 38
    POOR_FIT = 1 << 39
    AT_GRID_EDGE = 1 << 40
    BEYOND_FIT_GRID = 1 << 41


CATALOGUE_FLAG_DOCS: dict[CatalogueFlag, str] = {
    CatalogueFlag.OUTSIDE_GRID: "A posterior mean lies outside the label range the model was trained on (its grid span; Table 1 for older bundles), "
                                "or the fit's optimum needs a grid node without a spectrum.",
    CatalogueFlag.EXTRAPOLATED: "The mean is inside that range but its 1-sigma interval crosses an edge of it for some label.",
    CatalogueFlag.MOSTLY_MASKED: "More than half of the 8 x 4096 input pixels are masked.",
    CatalogueFlag.NONFINITE: "The model returned a non-finite mean or sigma (values kept as NaN).",
    CatalogueFlag.READ_ERROR: "The file could not be read or preprocessed (status 'error').",
    CatalogueFlag.UNFAMILIAR: "Some sigma exceeds the largest the model gave on its validation spectra (S/N 10-200): "
                              "the spectrum is unlike anything it was trained on (e.g. an M dwarf below the grid).",
    CatalogueFlag.FIT_FAILED: "The likelihood fit gave no finite optimum or covariance: the row holds the network's estimate (method 'network').",
    CatalogueFlag.POOR_FIT: "The fit needed a model error above its threshold (model_error): the forward model cannot describe "
                            "this star (not like the grid: e.g. an M dwarf, a binary, a bad spectrum); treat the values with suspicion.",
    CatalogueFlag.AT_GRID_EDGE: "The fit ended on an edge of its grid (Teff, log g, [M/H], or v sin i at its maximum): the truth may lie beyond.",
    CatalogueFlag.BEYOND_FIT_GRID: "The network's estimate lies more than 2 sigma outside the fit grid's Teff, log g or [M/H] range, so it was "
                                   "not fitted (method 'network'); a grid that covers the star (--grid) fits it.",
}


def catalogue_flags(mean: np.ndarray, sigma: np.ndarray, mask: np.ndarray,
                    bounds: tuple[np.ndarray, np.ndarray] | None = None,
                    sigma_limit: np.ndarray | None = None) -> np.ndarray:
    """Catalogue flags for a batch (low S/N, missing orders, RV measured are preprocessing flags).

    Args:
        mean: (B, 4) physical posterior means.
        sigma: (B, 4) physical 1-sigma uncertainties.
        mask: (B, 8, 4096) bool, True = usable pixel.
        bounds: (lo (4,), hi (4,)) label range the model was trained on
            (``ModelBundle.label_bounds``); None = the Table-1 axes.
        sigma_limit: (4,) largest sigma seen on validation spectra (``ModelBundle.sigma_limits``).

    Returns:
        (B,) int64 of :class:`CatalogueFlag` bits.
    """
    if bounds is None:
        bounds = (LABEL_LO, LABEL_HI)
    lo, hi = (np.asarray(b, dtype=np.float64) for b in bounds)
    out = np.zeros(len(mean), dtype=np.int64)
    finite = np.isfinite(mean).all(axis=1) & np.isfinite(sigma).all(axis=1)
    with np.errstate(invalid="ignore"):
        outside = ((mean < lo) | (mean > hi)).any(axis=1)
        near = (((mean - sigma) < lo) | ((mean + sigma) > hi)).any(axis=1) & ~outside
    out |= np.where(outside, int(CatalogueFlag.OUTSIDE_GRID), 0)
    out |= np.where(near, int(CatalogueFlag.EXTRAPOLATED), 0)
    out |= np.where(mask.reshape(len(mask), -1).mean(axis=1) < 0.5, int(CatalogueFlag.MOSTLY_MASKED), 0)
    out |= np.where(~finite, int(CatalogueFlag.NONFINITE), 0)
    if sigma_limit is not None:
        with np.errstate(invalid="ignore"):
            out |= np.where((sigma > np.asarray(sigma_limit)).any(axis=1), int(CatalogueFlag.UNFAMILIAR), 0)
    return out


def _attribute_docs(cls) -> dict[str, str]:
    """Attribute docstrings (the string literal after ``NAME = ...``) of a class, from its source."""
    import ast
    import inspect

    try:
        body = ast.parse(inspect.getsource(cls)).body[0].body
    except (OSError, TypeError, SyntaxError):
        return {}
    docs = {}
    for stmt, nxt in zip(body, body[1:]):
        if isinstance(stmt, ast.Assign) and isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
            docs[stmt.targets[0].id] = " ".join(str(nxt.value.value).split())
    return docs


def flag_table() -> list[tuple[int, str, str]]:
    """(bit value, name, description) for every named bit: preprocessing bits, then catalogue bits."""
    from ..preprocess import Flag

    docs = _attribute_docs(Flag)
    rows = [(int(m), m.name, docs.get(m.name, "")) for m in Flag]
    rows += [(int(m), m.name, CATALOGUE_FLAG_DOCS[m]) for m in CatalogueFlag]
    return rows


def flag_names(value: int) -> list[str]:
    """Names of the bits set in a ``flags`` value (unknown bits as ``bitN``)."""
    value = int(value)
    names, known = [], 0
    for bit, name, _ in flag_table():
        if value & bit and bit & (bit - 1) == 0:
            names.append(name)
            known |= bit
    rest = value & ~known
    return names + [f"bit{i}" for i in range(64) if rest >> i & 1]


# --- nights -------------------------------------------------------------------------------------

OBSERVATORY_LONGITUDE_DEG: dict[str, float] = {r.name.upper(): r.lon_deg for r in INSTRUMENTS if r.lon_deg is not None}
"""East longitude (degrees) of each instrument's observatory, for the local-noon night rule: from
the instrument records (:mod:`survey_estimator.instruments.registry`)."""

_KEY_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2})[-:](\d{2})[-:](\d{2}(?:\.\d+)?)")


def night_of(when: dt.datetime, instrument: str | None = None) -> str:
    """Observing night (YYYY-MM-DD) of a UTC time: the date of the local noon that starts it.

    Local mean solar time at the observatory (the instrument record's longitude) is UTC +
    longitude/15 h; the night runs from local noon to the next local noon and is named after the
    date it starts on. Instruments without a known site use longitude 0 (UTC noon).
    """
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    lon = lookup(instrument).lon_deg or 0.0
    local = when + dt.timedelta(hours=lon / 15.0) - dt.timedelta(hours=12)
    return local.date().isoformat()


def night_from_mjd(mjd: float, instrument: str | None = None) -> str | None:
    """Night of a modified Julian date (UTC); None when ``mjd`` is missing or not finite."""
    if mjd is None or not np.isfinite(mjd):
        return None
    when = dt.datetime(1858, 11, 17) + dt.timedelta(days=float(mjd))
    return night_of(when, instrument)


def night_from_key(key: str) -> str | None:
    """Night from an archive file name holding an ISO time (``HARPN.2016-01-08T02-30-21.236_...``).

    The observatory is that of the instrument whose record's ``file_tag`` the name holds
    (:func:`~survey_estimator.instruments.registry.from_file_name`: HARPN, HARPS, ESPRESSO); None
    when the name holds no date.
    """
    base = key.rsplit("/", 1)[-1]
    m = _KEY_DATE.search(base)
    if not m:
        return None
    try:
        when = dt.datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}:{m.group(3)}:{m.group(4)}")
    except ValueError:
        return None
    return night_of(when, from_file_name(base).name)


def night_now() -> str:
    """The current night at longitude 0 (for error rows whose observation date is unknown)."""
    return night_of(dt.datetime.now(dt.timezone.utc))


def columns_markdown() -> str:
    """The column table of docs/catalogue.md (kept identical by a test)."""
    lines = ["| column | type | unit | description |", "|---|---|---|---|"]
    lines += [f"| `{c.name}` | {c.type} | {c.unit} | {c.description} |" for c in COLUMNS]
    return "\n".join(lines)


def flags_markdown() -> str:
    """The flag table of docs/catalogue.md (kept identical by a test)."""
    lines = ["| bit | set by | name | meaning |", "|---|---|---|---|"]
    lines += [f"| {b.bit_length() - 1} | {'preprocessing' if b < 1 << CATALOGUE_FLAG_SHIFT else 'catalogue'} | `{n}` | {d} |"
              for b, n, d in flag_table()]
    return "\n".join(lines)


def empty_table() -> pa.Table:
    """A table with the catalogue schema and no rows."""
    return SCHEMA.empty_table()


def update_docs(path: str) -> None:
    """Rewrite the column and flag tables of docs/catalogue.md from :data:`COLUMNS` and the flags."""
    with open(path) as f:
        doc = f.read()
    for header, table in (("| column | type | unit | description |", columns_markdown()),
                          ("| bit | set by | name | meaning |", flags_markdown())):
        start = doc.index(header)
        end = doc.find("\n\n", start)
        doc = doc[:start] + table + (doc[end:] if end >= 0 else "\n")
    with open(path, "w") as f:
        f.write(doc)


if __name__ == "__main__":  # python -m survey_estimator.catalogue.schema docs/catalogue.md
    import sys

    update_docs(sys.argv[1] if len(sys.argv) > 1 else "docs/catalogue.md")

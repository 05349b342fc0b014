"""The row contract between the read stage and the model stage.

The read stage (:mod:`survey_estimator.catalogue.read`) makes one row per archive file and hands
batches of them to the model stage (:mod:`survey_estimator.catalogue.predict`), through Ray Data
or in-process (``estimate``). :data:`FIELDS` is what such a batch holds:

* the catalogue columns the read stage fills (origin listing, header or read in
  :data:`survey_estimator.catalogue.schema.COLUMNS`), in schema order, derived from the schema:
  strings as object arrays (None = null), float64 (NaN = null), int64;
* the model inputs, not written: ``resolution`` (float64 resolving power, NaN unknown), ``x``
  (float32 (2, 8, 4096): normalised flux - 1 and the usable-pixel mask) and ``ivar`` (float32
  (8, 4096): inverse variance of the normalised flux, 0 where masked).

:func:`new_row` makes one row (by default an error row with null metadata), :func:`to_batch`
stacks rows into column arrays, :func:`check_batch` validates a batch and :func:`arrow_columns`
converts its catalogue columns to Arrow.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..layout import N_ORDERS, N_PIXELS
from .schema import COLUMNS, HEADER, LISTING, MODEL, STATUS_ERROR, Column

X_SHAPE = (2, N_ORDERS, N_PIXELS)
"""Per-row shape of ``x``: (flux - 1, mask) x 8 orders x 4096 pixels."""
IVAR_SHAPE = (N_ORDERS, N_PIXELS)
"""Per-row shape of ``ivar``: 8 orders x 4096 pixels."""


class BatchError(ValueError):
    """A batch or row that breaks the row contract (a missing, unknown or mistyped column)."""


@dataclass(frozen=True)
class Field:
    """One column of a read batch.

    Attributes:
        name: column name.
        dtype: numpy dtype of the column array (object: strings, None = null).
        shape: per-row shape (() for scalars).
        default: value of an error row (arrays: zeros of ``shape``).
        column: the catalogue column it is written as; None for model inputs.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int, ...] = ()
    default: object = None
    column: Column | None = None

    def empty(self):
        """The error-row value (a fresh zero array for array fields)."""
        return np.zeros(self.shape, self.dtype) if self.shape else self.default

    def coerce(self, value):
        """``value`` as this field's scalar type: str or None; float (NaN when not a number); int."""
        if self.dtype == object:
            return None if value is None else str(value)
        return as_float(value) if self.dtype.kind == "f" else int(value)

    def problem(self, values, n: int) -> str | None:
        """Why ``values`` is not this field's column for ``n`` rows, or None when it is.

        String columns may also come as numpy str arrays, or (from Ray Data, when every value
        is null) as float arrays of NaN."""
        if not isinstance(values, np.ndarray):
            return f"a {type(values).__name__}, not a numpy array"
        if values.shape != (n, *self.shape):
            return f"shape {values.shape}, expected {(n, *self.shape)}"
        if self.dtype == object:
            if values.dtype.kind in "OU" or (values.dtype.kind == "f" and np.isnan(values).all()):
                return None
        elif values.dtype == self.dtype:
            return None
        return f"dtype {values.dtype}, expected {'str (object)' if self.dtype == object else self.dtype}"


def as_float(value) -> float:
    """``value`` as a float; NaN when it is not a number (None included)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


_DTYPES = {pa.string(): np.dtype(object), pa.float64(): np.dtype(np.float64), pa.int64(): np.dtype(np.int64)}
_NULLS = {"O": None, "f": float("nan"), "i": 0}
"""Error-row values by dtype kind (no null for ints: flags 0, size_bytes 0); status is 'error'."""


def _field(c: Column) -> Field:
    dtype = _DTYPES[c.type]
    return Field(c.name, dtype, default=STATUS_ERROR if c.name == "status" else _NULLS[dtype.kind], column=c)


META_FIELDS: tuple[Field, ...] = tuple(_field(c) for c in COLUMNS if c.origin != MODEL)
"""The catalogue columns the read stage fills, in schema order."""
HEADER_FIELDS: tuple[Field, ...] = tuple(f for f in META_FIELDS if f.column.origin == HEADER)
"""The metadata the read stage takes from the file (object, instrument, ..., rv_kms)."""
LISTING_FIELDS: tuple[Field, ...] = tuple(f for f in META_FIELDS if f.column.origin == LISTING)
"""What the archive listing says of a file (source_uri, etag, size_bytes)."""
INPUT_FIELDS: tuple[Field, ...] = (
    Field("resolution", np.dtype(np.float64), default=float("nan")),
    Field("x", np.dtype(np.float32), X_SHAPE),
    Field("ivar", np.dtype(np.float32), IVAR_SHAPE),
)
"""The model inputs (not written)."""
FIELDS: tuple[Field, ...] = META_FIELDS + INPUT_FIELDS
NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
_BY_NAME = {f.name: f for f in FIELDS}


def new_row(**values) -> dict:
    """One read row: an error row (status 'error', null metadata, zero ``x``/``ivar``) updated
    with ``values``.

    Raises:
        BatchError: a name that is not a field of the contract.
    """
    unknown = sorted(set(values) - _BY_NAME.keys())
    if unknown:
        raise BatchError(f"not a read-row field: {', '.join(unknown)} (fields: {', '.join(NAMES)})")
    row = {f.name: f.empty() for f in FIELDS}
    row.update(values)
    return row


def to_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    """Column arrays of the contract's dtypes from rows (``x`` stacked to (n, 2, 8, 4096),
    ``ivar`` to (n, 8, 4096)), checked by :func:`check_batch`.

    Raises:
        BatchError: a row lacks a field or has one the contract does not know, or a value does
            not fit its field.
    """
    for i, r in enumerate(rows):
        if r.keys() != _BY_NAME.keys():
            missing, extra = sorted(_BY_NAME.keys() - r.keys()), sorted(r.keys() - _BY_NAME.keys())
            raise BatchError(f"row {i}: missing {missing or 'nothing'}, unknown {extra or 'nothing'}")
    out: dict[str, np.ndarray] = {}
    for f in FIELDS:
        vals = [r[f.name] for r in rows]
        if f.shape:
            try:
                out[f.name] = np.stack(vals).astype(f.dtype, copy=False) if vals else np.zeros((0, *f.shape), f.dtype)
            except ValueError as exc:
                raise BatchError(f"column {f.name!r}: {exc}") from None
        elif f.dtype == object:
            out[f.name] = np.empty(len(vals), dtype=object)
            out[f.name][:] = vals
        else:
            out[f.name] = np.asarray(vals, dtype=f.dtype)
    check_batch(out)
    return out


def check_batch(batch: dict) -> int:
    """The number of rows of a read batch, after checking that it holds every field of the
    contract with its dtype and shape (extra columns are allowed).

    Raises:
        BatchError: naming the first missing or mistyped column.
    """
    missing = [name for name in NAMES if name not in batch]
    if missing:
        raise BatchError(f"read batch lacks column(s) {', '.join(missing)}")
    n = len(batch[NAMES[0]])
    for f in FIELDS:
        problem = f.problem(batch[f.name], n)
        if problem:
            raise BatchError(f"read batch column {f.name!r}: {problem}")
    return n


def arrow_columns(batch: dict) -> dict[str, pa.Array]:
    """The catalogue columns of a read batch as Arrow arrays of their schema types (NaN and
    non-string values, e.g. Ray's all-null NaN columns, become nulls)."""
    cols = {}
    for f in META_FIELDS:
        values, typ = batch[f.name], f.column.type
        if f.dtype == object:
            cols[f.name] = pa.array([v if isinstance(v, str) else None for v in values], typ)
        elif f.dtype.kind == "f":
            arr = np.asarray(values, dtype=np.float64)
            cols[f.name] = pa.array(arr, typ, mask=~np.isfinite(arr))
        else:
            cols[f.name] = pa.array(np.asarray(values, dtype=f.dtype), typ)
    return cols

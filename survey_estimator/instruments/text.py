"""Plain-text spectra (optionally gzipped): 2 or 3 numeric columns, wavelength, flux[, error].

Columns are separated by blanks or commas. Lines starting with ``#``, ``%``, ``!`` or ``;`` are
comments; a non-numeric line before the data may name the columns (``wave flux sigma``,
``lambda,flux,ivar``): a name says the medium ("wavelength_vac", "air") and whether the third
column is an error, a variance or an inverse variance (default: error). A comment mentioning
"vacuum" or "air" also sets the medium. Nothing else is known about such a file: the instrument is
"unknown", the medium air unless said, the frame assumed (the RV is measured) and the resolution
assumed unless given with ``--resolution``.
"""
from __future__ import annotations

import re

import numpy as np

from ..observation import Observation, ReadError
from . import columns, spectrum1d

COMMENT = ("#", "%", "!", ";")
MIN_ROWS = 100


def decode(name: str, raw: bytes, gzipped: bool) -> str:
    """``raw`` as text.

    Raises:
        ReadError: binary content (NUL bytes or invalid UTF-8 / Latin-1 control characters).
    """
    what = "gzip-compressed content is not a FITS file or a plain-text spectrum" if gzipped else "not a FITS file or a plain-text spectrum"
    head = raw[:4096]
    if b"\x00" in head:
        raise ReadError(name, f"{what} (starts with {raw[:16]!r})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    controls = sum(1 for ch in text[:4096] if ord(ch) < 32 and ch not in "\t\n\r\f\v")
    if controls > 2:
        raise ReadError(name, f"{what} (starts with {raw[:16]!r})")
    return text


def parse(name: str, text: str) -> tuple[np.ndarray, list[str], list[str]]:
    """Numeric rows as a (n_rows, n_columns) float array, the column names (if a header line gives
    them) and the comment lines.

    Raises:
        ReadError: no numeric rows, rows of different lengths.
    """
    rows, names, comments = [], [], []
    for line_no, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith(COMMENT):
            comments.append(line.lstrip("#%!; ").strip())
            continue
        fields = [f for f in re.split(r"[\s,]+", line) if f]
        try:
            rows.append([float(f) for f in fields])
        except ValueError:
            if rows:
                raise ReadError(name, f"not a plain-text spectrum: line {line_no} is not numeric ({line[:40]!r})") from None
            names = fields
            continue
        if len(rows[-1]) != len(rows[0]):
            raise ReadError(name, f"not a plain-text spectrum: line {line_no} has {len(rows[-1])} columns, the first data line {len(rows[0])}")
    if not rows:
        raise ReadError(name, "not a FITS file or a plain-text spectrum (no numeric rows)")
    if not names and comments:  # "# wave flux err" as the last comment line names the columns
        last = [f for f in re.split(r"[\s,]+", comments[-1]) if f]
        if len(last) == len(rows[0]) and all(not re.match(r"^[-+.\d]", f) for f in last):
            names = last
    return np.asarray(rows, dtype=np.float64), names, comments


def read(name: str, raw: bytes, gzipped: bool = False) -> Observation:
    """Read a plain-text spectrum into an :class:`Observation`.

    Raises:
        ReadError: binary content, one column (flux but no wavelength information), more than 3
            columns, fewer than :data:`MIN_ROWS` rows, and whatever :func:`spectrum1d.build` refuses.
    """
    data, names, comments = parse(name, decode(name, raw, gzipped))
    n_rows, n_cols = data.shape
    if n_cols == 1:
        raise ReadError(name, "missing wavelength solution: one column of flux, no wavelength information")
    if n_cols > 3:
        raise ReadError(name, f"not a plain-text spectrum: {n_cols} columns (expected wavelength, flux[, error])")
    if n_rows < MIN_ROWS:
        raise ReadError(name, f"only {n_rows} rows: too few pixels for a spectrum")
    notes = [f"plain text, {n_cols} columns" + (f" ({', '.join(names)})" if names else "")]
    wave_name = names[0] if names else ""
    medium = columns.medium_of(wave_name) if wave_name else None
    if medium is None:
        said = " ".join(comments).lower()
        medium = "vacuum" if re.search(r"\bvac(uum)?\b", said) else ("air" if re.search(r"\bair\b", said) else None)
    noise = {}
    if n_cols == 3:
        third = names[2] if len(names) == 3 else ""
        kind = "ivar" if third and columns.find([third], columns.IVAR) else (
            "variance" if third and columns.find([third], columns.VARIANCE) else "error")
        noise[kind] = data[:, 2]
    wave = data[:, 0]
    unit = None
    if wave_name and columns.is_log10(wave_name):
        wave, unit = 10.0**wave, "angstrom"
        notes.append(f"column {wave_name!r} holds log10(wavelength)")
    spec = spectrum1d.build(name, wave, data[:, 1], unit=unit, notes=notes, **noise)
    return spec.observation(name, "text", "unknown", medium=medium, resolution=None, resolution_source="assumed")

"""FITS binary tables of a merged spectrum: ESO Phase-3 ``ADP.*.fits`` (one row of array columns
``WAVE``, ``FLUX``, ``ERR``), the ESPRESSO / HARPS-N new-DRS ``S1D`` (one row per pixel:
``wavelength`` (vacuum), ``wavelength_air``, ``flux``, ``error``, ``quality``), iSpec tables
(``waveobs``, ``flux``, ``err``) and the like.

Columns are found by their common names (:mod:`.columns`; an air wavelength column is preferred
over a vacuum one); a table with a wavelength column and exactly one other floating-point column
not otherwise named uses that as the flux (noted). Units from ``TUNITn`` (else judged by the
values). Exactly one spectrum per file: two tables with spectra, or several rows of array columns,
are refused.

Medium: from the wavelength column's name, else the header cards, else the format's convention
(Phase-3 and old-DRS products: air; the new-DRS S1D's plain ``wavelength`` column: vacuum), else
assumed air. Frame: ``SPECSYS``, else the DRS convention
(barycentric), else assumed (and the RV measured).
"""
from __future__ import annotations

import numpy as np
from astropy.io import fits

from ..observation import Observation, ReadError
from . import columns, spectrum1d
from .detect import Cards, spectrum_tables
from .metadata import common, frame_from_cards, medium_from_cards, pipeline


def _table(name: str, hdul: fits.HDUList) -> fits.BinTableHDU:
    """The one table holding a spectrum.

    Raises:
        ReadError: no table with a wavelength column (flux but no wavelength information), or two.
    """
    found = spectrum_tables(hdul)
    if len(found) > 1:
        raise ReadError(name, f"the file holds {len(found)} spectrum tables (HDUs {', '.join(map(str, found))}); give one spectrum per file")
    if found:
        return hdul[found[0]]
    tables = [h for h in hdul if isinstance(h, fits.BinTableHDU)]
    cols = ", ".join(c for t in tables for c in t.columns.names)
    raise ReadError(name, f"missing wavelength solution: no wavelength column in the table (columns: {cols}; "
                          f"expected one of {', '.join(columns.WAVE[:8])}, ...)")


def _columns(name: str, table: fits.BinTableHDU) -> dict[str, str | None]:
    """Column name (as written) for wave, flux, error, variance, ivar, quality.

    Raises:
        ReadError: no flux column and no single unnamed candidate.
    """
    names = list(table.columns.names)
    found = {
        "wave": columns.find(names, columns.WAVE),
        "flux": columns.find(names, columns.FLUX),
        "error": columns.find(names, columns.ERROR),
        "variance": columns.find(names, columns.VARIANCE),
        "ivar": columns.find(names, columns.IVAR),
        "quality": columns.find(names, columns.QUALITY),
    }
    if found["flux"] is None:
        used = {v for v in found.values() if v}
        known_wave = {columns.key(n) for n in columns.WAVE}
        floats = [c.name for c in table.columns
                  if c.name not in used and columns.key(c.name) not in known_wave and c.format[-1] in "DE"]
        if len(floats) != 1:
            raise ReadError(name, f"no flux column: columns are {', '.join(names)}; expected one of "
                                  f"{', '.join(columns.FLUX[:6])}, ... (or exactly one other floating-point column)")
        found["flux"] = floats[0]
    return found


def _arrays(name: str, table: fits.BinTableHDU, cols: dict) -> dict[str, np.ndarray | None]:
    """The columns' values as 1D arrays: the one row of an array table, or every row of a table
    with one row per pixel.

    Raises:
        ReadError: an empty table, or several rows of array columns (several spectra).
    """
    data = table.data
    if data is None or len(data) == 0:
        raise ReadError(name, "empty spectrum table (no rows)")
    repeat = np.asarray(data[cols["flux"]]).ndim > 1 or np.asarray(data[cols["flux"]][0]).size > 1
    if repeat and len(data) > 1:
        raise ReadError(name, f"the table holds {len(data)} spectra (rows of array columns); give one spectrum per file")
    out = {}
    for k, c in cols.items():
        if c is None:
            out[k] = None
            continue
        v = np.asarray(data[c][0] if repeat else data[c])
        out[k] = v.reshape(-1)
    return out


def _unit(table: fits.BinTableHDU, column: str) -> str | None:
    i = table.columns.names.index(column) + 1
    return table.header.get(f"TUNIT{i}") or None


def read(name: str, hdul: fits.HDUList, cards: Cards, instrument: str, blaze=None) -> Observation:
    """Read a spectrum table (already opened and checked) into an :class:`Observation`."""
    primary = hdul[0].header
    table = _table(name, hdul)
    cols = _columns(name, table)
    a = _arrays(name, table, cols)
    notes: list[str] = []
    if columns.find([cols["flux"]], columns.FLUX) is None:
        notes.append(f"flux taken from column {cols['flux']!r} (not a usual flux name)")
    wave, unit = a["wave"].astype(np.float64), _unit(table, cols["wave"])
    if columns.is_log10(cols["wave"]):
        wave, unit = 10.0**wave, "angstrom"
        notes.append(f"column {cols['wave']!r} holds log10(wavelength)")
    spec = spectrum1d.build(name, wave, a["flux"], error=a["error"], variance=a["variance"], ivar=a["ivar"],
                            quality=a["quality"], unit=unit, notes=notes)
    family, drs = pipeline(primary, cards)
    phase3 = str(primary.get("PRODCATG", "") or "").upper().startswith("SCIENCE.SPECTRUM")
    medium = columns.medium_of(cols["wave"]) or medium_from_cards(table.header) or medium_from_cards(primary)
    frame = frame_from_cards(primary, table.header)
    convention = family is not None or phase3
    if phase3 and not family:
        drs = dict(drs_version=str(cards.get("DRS VERSION") or primary.get("PROCSOFT") or "phase3"),
                   bjd=cards.float("DRS BJD"), berv_kms=cards.float("DRS BERV"), rv_kms=cards.float("DRS CCF RVC"))
    if phase3 and primary.get("SNR") is not None:
        drs["snr"] = np.array([float(primary["SNR"])])
    return spec.observation(name, "table", instrument, medium=medium, frame=frame, convention=convention,
                            medium_default="vacuum" if family == "new-DRS" else "air",
                            **common(primary, cards, instrument), **drs)

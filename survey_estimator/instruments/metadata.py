"""Header metadata shared by every reader: target, pointing, times, exposure, S/N cards."""
from __future__ import annotations

import re

import numpy as np
from astropy.io import fits

from .detect import Cards

RESOLUTION = {"HARPS": 115000.0, "HARPS-N": 115000.0}
"""Resolving power per instrument; ESPRESSO depends on its mode (see :func:`resolution`)."""
ESPRESSO_RESOLUTION = {"SINGLEHR": 140000.0, "MULTIMR": 70000.0, "SINGLEUHR": 190000.0}


def resolution(instrument: str, cards: Cards) -> float:
    """Resolving power of the spectrograph mode (ESPRESSO: ``INS MODE``; default HR 140,000)."""
    if instrument == "ESPRESSO":
        mode = str(cards.get("INS MODE", "SINGLEHR")).upper()
        return ESPRESSO_RESOLUTION.get(mode, 140000.0)
    return RESOLUTION[instrument]


def _float(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def common(header: fits.Header, cards: Cards, instrument: str) -> dict:
    """Observation keyword arguments common to all formats.

    HARPS-N quirks handled: no OBJECT card (target in ``TNG OBS TARG NAME``), RA/DEC in hours
    (``RA-DEG``/``DEC-DEG`` used instead).
    """
    obj = header.get("OBJECT") or cards.get("OBS TARG NAME") or ""
    if instrument == "HARPS-N" or "RA-DEG" in header:
        ra, dec = _float(header.get("RA-DEG")), _float(header.get("DEC-DEG"))
    else:
        ra, dec = _float(header.get("RA")), _float(header.get("DEC"))
    return dict(
        object=str(obj).strip(),
        ra_deg=ra,
        dec_deg=dec,
        date_obs=(str(header["DATE-OBS"]).strip() if header.get("DATE-OBS") else None),
        mjd_obs=_float(header.get("MJD-OBS")),
        exptime_s=_float(header.get("EXPTIME")),
        resolution=resolution(instrument, cards),
    )


def order_snr(header: fits.Header, pattern: str, first: int = 0) -> np.ndarray | None:
    """Per-order S/N from cards matching ``pattern`` (a regex with one group for the order number).

    Args:
        pattern: e.g. ``r"(?:ESO|TNG) DRS SPE EXT SN(\\d+)$"`` (old DRS, counted from 0) or
            ``r"(?:ESO|TNG) QC ORDER(\\d+) SNR$"`` (new DRS, counted from 1: pass ``first=1``).
    Returns:
        float array indexed by row (NaN where missing), or None if no card matches.
    """
    rx = re.compile(pattern)
    found = {}
    for key in header:
        m = rx.match(key)
        if m:
            found[int(m.group(1)) - first] = _float(header[key])
    if not found:
        return None
    out = np.full(max(found) + 1, np.nan)
    for i, v in found.items():
        if i >= 0 and v is not None:
            out[i] = v
    return out


def old_drs(header: fits.Header, cards: Cards) -> dict:
    """Observation fields from the old-DRS cards (``HIERARCH TNG``/``ESO DRS ...``) shared by e2ds
    and s1d products: DRS version, BJD, BERV (km/s), the CCF RV (km/s) and per-order S/N
    (``DRS SPE EXT SN{n}``, n from 0)."""
    return dict(
        drs_version=str(cards.get("DRS VERSION", "old-DRS")),
        bjd=cards.float("DRS BJD"),
        berv_kms=cards.float("DRS BERV"),
        rv_kms=cards.float("DRS CCF RVC"),
        snr=order_snr(header, r"(?:ESO|TNG) DRS SPE EXT SN(\d+)$", first=0),
    )

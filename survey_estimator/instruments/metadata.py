"""Header metadata shared by every reader: target, pointing, times, exposure, S/N cards, and what
the header (or the spectrograph's record, :mod:`.registry`) says about resolution, wavelength medium and frame."""
from __future__ import annotations

import re

import numpy as np
from astropy.io import fits

from .detect import Cards
from .registry import lookup

RESOLUTION_CARDS = ("SPEC_RES", "RESOLUTN", "RESOLVPW", "RESOLUTION", "RESOLV", "SPECRES")
"""Header cards that give the resolving power lambda/dlambda (ESO Phase 3: ``SPEC_RES``)."""
FRAMES = {"BARYCENT": "barycentric", "HELIOCEN": "barycentric", "TOPOCENT": "observatory", "SOURCE": "rest"}
"""FITS ``SPECSYS`` values (WCS paper III) and the frames they mean (heliocentric differs from
barycentric by < 0.013 km/s)."""


def _header_resolution(header: fits.Header) -> float | None:
    for key in RESOLUTION_CARDS:
        v = _float(header.get(key))
        if v is not None and 1000 < v < 2e6:
            return v
    return None


def resolution(instrument: str, cards: Cards, header: fits.Header | None = None) -> tuple[float | None, str]:
    """Resolving power and where it came from: a header card (:data:`RESOLUTION_CARDS`, "header"),
    else the instrument's record (:meth:`~.registry.Instrument.resolving_power`: "instrument", or
    "assumed" when the record's value needs a card the file lacks; ``(None, "assumed")`` when no
    record knows: the caller assumes a value)."""
    header = cards.header if header is None else header
    r = _header_resolution(header)
    if r is not None:
        return r, "header"
    return lookup(instrument).resolving_power(cards)


def medium_from_cards(header: fits.Header) -> str | None:
    """"air" / "vacuum" where a card says so (``CTYPE1`` AWAV / WAVE / ...VAC..., ``AIRORVAC``,
    ``VACUUM``), else None."""
    ctype = str(header.get("CTYPE1", "") or "").strip().upper()
    if ctype.split("-")[0] == "AWAV" or "AIR" in ctype:
        return "air"
    if ctype.split("-")[0] == "WAVE" or "VAC" in ctype:  # FITS WCS III: WAVE is vacuum wavelength
        return "vacuum"
    airorvac = str(header.get("AIRORVAC", "") or header.get("WAVEMED", "") or "").strip().lower()
    if airorvac.startswith("air"):
        return "air"
    if airorvac.startswith("vac"):
        return "vacuum"
    vac = header.get("VACUUM")
    if isinstance(vac, bool):
        return "vacuum" if vac else "air"
    return None


def frame_from_cards(*headers: fits.Header) -> str | None:
    """Wavelength frame from the first ``SPECSYS`` card among ``headers``, else None."""
    for h in headers:
        v = str(h.get("SPECSYS", "") or "").strip().upper()
        if v in FRAMES:
            return FRAMES[v]
    return None


def _float(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def common(header: fits.Header, cards: Cards, instrument: str) -> dict:
    """Observation keyword arguments common to all formats.

    The pointing comes from the record's :attr:`~.registry.Instrument.radec_cards` (HARPS-N writes
    RA/DEC in hours, degrees in ``RA-DEG``/``DEC-DEG``), else the first of ``RA-DEG``/``DEC-DEG``,
    ``RA-D``/``DEC-D`` (Magellan) present, else ``RA``/``DEC``. The target is ``OBJECT``, else
    ``OBS TARG NAME`` (HARPS-N). Includes ``resolution`` and ``resolution_source``.
    """
    obj = header.get("OBJECT") or cards.get("OBS TARG NAME") or ""
    ra_key, dec_key = lookup(instrument).radec_cards or next(
        ((r, d) for r, d in (("RA-DEG", "DEC-DEG"), ("RA-D", "DEC-D")) if r in header), ("RA", "DEC"))
    ra, dec = _float(header.get(ra_key)), _float(header.get(dec_key))
    r, r_source = resolution(instrument, cards, header)
    return dict(
        object=str(obj).strip(),
        ra_deg=ra,
        dec_deg=dec,
        date_obs=(str(header["DATE-OBS"]).strip() if header.get("DATE-OBS") else None),
        mjd_obs=_float(header.get("MJD-OBS")),
        exptime_s=_float(header.get("EXPTIME")),
        resolution=r,
        resolution_source=r_source,
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


def new_drs(header: fits.Header, cards: Cards) -> dict:
    """Observation fields from the new-DRS cards (HARPS-N DRS 2.x/3.x, ESPRESSO pipeline) shared by
    S2D and S1D products: pipeline id, ``QC BJD``, ``QC BERV`` (km/s), ``QC CCF RV`` (km/s,
    barycentric) and per-order S/N (``QC ORDER{n} SNR``, n from 1)."""
    return dict(
        drs_version=str(cards.get("PRO REC1 PIPE ID") or cards.get("DRS VERSION") or "new-DRS"),
        bjd=cards.float("QC BJD"),
        berv_kms=cards.float("QC BERV"),
        rv_kms=cards.float("QC CCF RV"),
        snr=order_snr(header, r"(?:ESO|TNG) QC ORDER(\d+) SNR$", first=1),
    )


def pipeline(header: fits.Header, cards: Cards) -> tuple[str | None, dict]:
    """Which DRS family wrote ``header`` and its fields: ("old-DRS", :func:`old_drs`) when it has
    ``DRS BERV``/``DRS VERSION`` cards, ("new-DRS", :func:`new_drs`) with ``QC BERV`` or a
    ``PRO REC1 PIPE ID``, else (None, {}). Both families write 1D products in the barycentric frame,
    in air unless a column or extension says vacuum."""
    if cards.has("QC BERV") or cards.has("PRO REC1 PIPE ID"):
        return "new-DRS", new_drs(header, cards)
    if cards.has("DRS BERV") or cards.has("DRS VERSION"):
        return "old-DRS", old_drs(header, cards)
    return None, {}

"""Open a FITS source (path, bytes or file-like; gzip by magic bytes) and decide what it holds.

Everything is decided by content, never by file name: the instrument from ``INSTRUME`` (or the
``HIERARCH TNG`` / ``HIERARCH ESO`` card prefix), science vs calibration from ``DPR CATG`` /
``OBS-TYPE`` / ``PRO CATG``, and the format from the HDU structure.
"""
from __future__ import annotations

import gzip
import io
import logging
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from astropy.io import fits

from ..observation import ReadError

log = logging.getLogger(__name__)

Source = Union[str, Path, tuple[str, Union[bytes, BinaryIO]]]
"""A path, or ``(name, bytes)`` / ``(name, file-like)`` for data read from object storage."""

GZIP_MAGIC = b"\x1f\x8b"
FITS_MAGIC = b"SIMPLE  ="
BLOCK = 2880

INSTRUMENTS = {"HARPS": "ESO", "HARPS-N": "TNG", "ESPRESSO": "ESO"}
"""Supported instruments and their hierarchical card prefix."""
_ALIASES = {"HARPS": "HARPS", "HARPN": "HARPS-N", "HARPS-N": "HARPS-N", "HARPS_N": "HARPS-N", "ESPRESSO": "ESPRESSO"}
SPECTRUM_PRODUCTS = ("S2D_A", "S2D_BLAZE_A", "S1D_A", "E2DS_A", "SCIENCE.SPECTRUM")
"""``PRO CATG`` / ``PRODCATG`` values of products that hold a science spectrum."""


def source_name(source: Source) -> str:
    """The name used in messages for ``source``."""
    if isinstance(source, tuple):
        return str(source[0])
    return str(source)


def read_bytes(source: Source) -> tuple[str, bytes]:
    """Return ``(name, raw bytes)``, gunzipped when the content starts with the gzip magic.

    Raises:
        ReadError: missing or unreadable file, empty content, corrupt gzip.
    """
    name = source_name(source)
    try:
        if isinstance(source, tuple):
            data = source[1]
            raw = data if isinstance(data, (bytes, bytearray, memoryview)) else data.read()
        else:
            raw = Path(source).read_bytes()
    except OSError as exc:
        raise ReadError(name, f"cannot read file ({exc.strerror or exc})") from exc
    raw = bytes(raw)
    if not raw:
        raise ReadError(name, "empty file (0 bytes)")
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ReadError(name, f"corrupt or truncated gzip data ({exc})") from exc
        if not raw:
            raise ReadError(name, "empty file (gzip of nothing)")
        if raw[: len(FITS_MAGIC)] != FITS_MAGIC:
            raise ReadError(name, "gzip-compressed content is not a FITS file")
    elif raw[: len(FITS_MAGIC)] != FITS_MAGIC:
        raise ReadError(name, f"not a FITS file (starts with {raw[:16]!r})")
    return name, raw


def open_fits(source: Source) -> tuple[str, fits.HDUList]:
    """Open ``source`` fully in memory and check that no HDU is cut short.

    Returns:
        (name, HDUList) with all headers parsed; data are read on access.
    Raises:
        ReadError: not FITS, truncated, or corrupt headers.
    """
    name, raw = read_bytes(source)
    if len(raw) < BLOCK:
        raise ReadError(name, f"truncated FITS file ({len(raw)} bytes, less than one 2880-byte header block)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdul = fits.open(io.BytesIO(raw), memmap=False, lazy_load_hdus=False)
            for i in range(len(hdul)):
                info = hdul.fileinfo(i)
                if info["datLoc"] + info["datSpan"] > len(raw) + BLOCK - 1:
                    raise ReadError(name, f"truncated FITS file (HDU {i} needs {info['datLoc'] + info['datSpan']} bytes, file has {len(raw)})")
    except ReadError:
        raise
    except Exception as exc:  # astropy raises many types for corrupt headers
        raise ReadError(name, f"corrupt or truncated FITS file ({type(exc).__name__}: {exc})") from exc
    return name, hdul


@dataclass(frozen=True)
class Cards:
    """Header lookup that tries the instrument's hierarchical prefix, then the other one.

    ``cards.get("DRS BERV")`` finds ``HIERARCH TNG DRS BERV`` or ``HIERARCH ESO DRS BERV``.
    """

    header: fits.Header
    prefix: str

    def get(self, key: str, default=None):
        for p in (self.prefix, "ESO" if self.prefix == "TNG" else "TNG"):
            full = f"{p} {key}"
            if full in self.header:
                return _clean(self.header[full], default)
        return _clean(self.header.get(key, default), default) if key in self.header else default

    def float(self, key: str) -> float | None:
        v = self.get(key)
        try:
            v = float(v)
        except (TypeError, ValueError):
            return None
        return v if np.isfinite(v) else None

    def has(self, key: str) -> bool:
        return self.get(key) is not None


def _clean(value, default):
    if value is None or isinstance(value, fits.card.Undefined):
        return default
    if isinstance(value, str):
        value = value.strip()
        if value.lower() in ("", "nan"):
            return default
    return value


def identify_instrument(name: str, header: fits.Header) -> str:
    """Canonical instrument name ("HARPS", "HARPS-N", "ESPRESSO") from the primary header.

    Raises:
        ReadError: a foreign instrument, or no way to tell.
    """
    raw = str(header.get("INSTRUME", "") or "").strip().upper()
    if raw:
        if raw not in _ALIASES:
            raise ReadError(name, f"foreign instrument {raw!r} (supported: {', '.join(INSTRUMENTS)})")
        return _ALIASES[raw]
    keys = list(header.keys())
    if any(k.startswith("TNG ") for k in keys):
        return "HARPS-N"
    raise ReadError(name, "no INSTRUME card and no HARPS/HARPS-N/ESPRESSO header cards: foreign or unknown instrument")


def check_science(name: str, header: fits.Header, cards: Cards) -> None:
    """Refuse calibration frames and products that are not spectra (CCF, blaze, wave, ...).

    Raises:
        ReadError: with the header values that tell.
    """
    catg = str(cards.get("DPR CATG", "") or "").upper()
    dpr_type = str(cards.get("DPR TYPE", "") or "")
    if catg and catg != "SCIENCE":
        raise ReadError(name, f"calibration frame, not a science spectrum (DPR CATG={catg!r}, DPR TYPE={dpr_type!r})")
    obs_type = str(header.get("OBS-TYPE", "") or "").strip().upper()
    if obs_type and obs_type != "SCIENCE":
        raise ReadError(name, f"calibration frame, not a science spectrum (OBS-TYPE={obs_type!r})")
    pro = str(cards.get("PRO CATG", "") or header.get("PRODCATG", "") or "").strip().upper()
    if pro and pro not in SPECTRUM_PRODUCTS:
        raise ReadError(name, f"not a spectrum product (PRO CATG={pro!r}; expected one of {', '.join(SPECTRUM_PRODUCTS)})")


def detect_format(name: str, hdul: fits.HDUList) -> str:
    """Which reader fits this HDU structure: "adp", "s2d", "e2ds" or "s1d".

    Raises:
        ReadError: no spectrum data, missing wavelength extension or cards, wrong shape.
    """
    names = {h.name.upper() for h in hdul}
    for hdu in hdul[1:]:
        if isinstance(hdu, fits.BinTableHDU):
            cols = {c.upper() for c in hdu.columns.names}
            if {"WAVE", "FLUX"} <= cols:
                return "adp"
    if "SCIDATA" in names:
        if not any(n.startswith("WAVEDATA") for n in names):
            raise ReadError(name, "missing wavelength solution: SCIDATA without WAVEDATA_* extension")
        return "s2d"
    primary = hdul[0]
    naxis = int(primary.header.get("NAXIS", 0))
    if naxis == 0 or primary.data is None:
        raise ReadError(name, f"no spectrum data (extensions: {', '.join(h.name for h in hdul)})")
    if naxis == 2:
        return "e2ds"
    if naxis == 1:
        return "s1d"
    raise ReadError(name, f"wrong shape: primary image has {naxis} axes {primary.data.shape} (expected a 1D or 2D spectrum)")

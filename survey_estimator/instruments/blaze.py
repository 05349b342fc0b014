"""The one blaze lookup: which blaze file an old-DRS e2ds needs, and where it is.

An e2ds names its blaze in the card of its instrument record (:attr:`Instrument.blaze_card`,
``DRS BLAZE FILE``), written with ':' in the time (``HARPS.2003-12-12T21:42:45.093_blaze_A.fits``)
while archives store it with '-' and often gzipped. :func:`find_blaze` looks that name up by its
:func:`blaze_key` in an index of blaze files: the archive listing's (the catalogue), or, for
local files, the folders of the spectra and their neighbouring ``YYYY-MM-DD`` night folders (the
DRS may use the previous night's calibration; :func:`local_blaze_index`). ``inspect``,
``estimate`` and the catalogue all go through it, so they find the same blaze for the same file.
"""
from __future__ import annotations

import datetime
import os
import re
from collections.abc import Iterable, Mapping

from astropy.io import fits

BLAZE_NAME = re.compile(r"_blaze_[A-Z]\.fits(\.gz)?$", re.I)
"""File names of blaze products (``*_blaze_A.fits``, optionally gzipped)."""


def blaze_key(name: str) -> str:
    """Lookup key of a blaze file name: base name, ':' as '-', without '.gz'."""
    return re.sub(r"\.gz$", "", str(name).rsplit("/", 1)[-1].strip()).replace(":", "-")


def is_blaze_name(name: str) -> bool:
    """Whether a file name is a blaze product's."""
    return bool(BLAZE_NAME.search(name))


def blaze_index(uris: Iterable[str]) -> dict[str, str]:
    """Blaze key -> URI of the blaze products among ``uris`` (later ones win on equal keys)."""
    return {blaze_key(u): u for u in uris if is_blaze_name(u.rsplit("/", 1)[-1])}


def _neighbour_nights(folder: str) -> list[str]:
    """The previous and next night folders of a folder named ``YYYY-MM-DD`` that exist."""
    try:
        night = datetime.date.fromisoformat(os.path.basename(folder))
    except ValueError:
        return []
    days = (night - datetime.timedelta(days=1), night + datetime.timedelta(days=1))
    return [p for p in (os.path.join(os.path.dirname(folder), d.isoformat()) for d in days) if os.path.isdir(p)]


def local_blaze_index(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """:func:`blaze_index` of the files in the folders of ``paths`` and in their neighbouring
    night folders (absolute paths; unreadable folders are skipped)."""
    folders: set[str] = set()
    for p in paths:
        folder = os.path.dirname(os.path.abspath(p))
        folders.update([folder, *_neighbour_nights(folder)])
    found = []
    for folder in sorted(folders):
        try:
            found += [os.path.join(folder, n) for n in sorted(os.listdir(folder))]
        except OSError:
            continue
    return blaze_index(f for f in found if os.path.isfile(f))


def blaze_named(header: fits.Header) -> str | None:
    """The blaze file name the primary ``header`` names in its instrument's ``blaze_card``, or None."""
    from .detect import Cards, card_prefix, identify_instrument

    record, _name, _note = identify_instrument(header)
    if record.blaze_card is None:
        return None
    value = Cards(header, card_prefix(record, header)).get(record.blaze_card)
    return str(value) if value else None


def find_blaze(spectrum: str | os.PathLike, header: fits.Header, index: Mapping[str, str] | None = None) -> str | None:
    """The blaze file of the spectrum ``spectrum`` with primary ``header``: the one lookup.

    Args:
        spectrum: the spectrum's path or URI.
        header: its primary header (the blaze card is read from it, :func:`blaze_named`).
        index: blaze key -> URI of the blaze files to choose from (an archive listing); None: the
            local files beside ``spectrum`` and one night folder away (:func:`local_blaze_index`).
    Returns:
        the blaze file's path or URI, or None (no blaze card, or no such file).
    """
    name = blaze_named(header)
    if name is None:
        return None
    if index is None:
        index = local_blaze_index([spectrum]) if os.path.isfile(spectrum) else {}
    return index.get(blaze_key(name))

"""A targeted FITS header scan: the cards the readers need, straight from the raw bytes.

astropy parses every card of a header into objects (~3,000 cards in an old-DRS e2ds, ~10 ms),
and the readers then look up a few dozen of them. :func:`scan_header` only splits the header into
its 80-character cards and indexes them by keyword; a card's value is parsed when it is looked up
(and kept). :class:`CardIndex` answers the lookups the readers make of an ``astropy.io.fits.Header``
(``h[key]``, ``h.get``, ``key in h``, ``h.keys()``, iteration) with the same values: ``bool``,
``int``, ``float``, ``complex``, ``str`` (trailing blanks removed, ``''`` undoubled, ``CONTINUE``
long strings joined), None for an empty value (as ``Header`` gives), and the value's text for
a value astropy cannot parse (the bare ``nan`` of old HARPS headers: astropy raises on it until
its silent fix, which opening a file in :func:`.detect.fits_from_bytes` triggers, makes it that
text). Commentary cards (``COMMENT``,
``HISTORY``, blank keywords) are not indexed. Where a keyword repeats, the first card wins, as
in astropy. tests/test_fastfits.py checks this card for card against astropy on every real file.

:func:`primary_image` reads a file whose only content is a primary image (the old-DRS e2ds and
blaze products) without astropy: its header and its data as a numpy view of the bytes.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

CARD = 80
BLOCK = 2880
_COMMENTARY = ("", "COMMENT", "HISTORY")
_STRING = re.compile(r"'((?:[^']|'')*)'")
_INT = re.compile(r"[+-]?\d+$")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[DE][+-]?\d+)?$", re.I)
_COMPLEX = re.compile(r"\(\s*([^,]+?)\s*,\s*([^)]+?)\s*\)$")
_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


def _number(text: str):
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text.upper().replace("D", "E"))
    return None


class CardIndex(Mapping):
    """Header lookups over the raw cards of one header (see the module docstring).

    Args:
        cards: the header's cards, 80-character strings, in order, up to (not including) ``END``.
    """

    def __init__(self, cards: list[str]):
        self._cards = cards
        self._index: dict[str, int] = {}
        self._values: dict[str, object] = {}
        for i, card in enumerate(cards):
            key = self._keyword(card)
            if key is not None and key not in self._index:
                self._index[key] = i

    @staticmethod
    def _keyword(card: str) -> str | None:
        """The keyword a value card is looked up by (upper case, ``HIERARCH`` dropped), or None
        for commentary and ``CONTINUE`` cards."""
        if card[:9] == "HIERARCH " and "=" in card:
            return card[9:card.index("=")].strip().upper()
        key = card[:8].strip().upper()
        if key in _COMMENTARY or key == "CONTINUE" or card[8:10] != "= ":
            return None
        return key

    @staticmethod
    def _normal(key: str) -> str:
        key = key.strip().upper()
        return key[9:].strip() if key.startswith("HIERARCH ") else key

    def _parse(self, i: int):
        card = self._cards[i]
        text = card[card.index("=") + 1:] if card[:9] == "HIERARCH " else card[10:]
        stripped = text.strip()
        if stripped.startswith("'"):
            m = _STRING.match(stripped)
            if m is None:
                return stripped.split("/", 1)[0].strip()
            value = m.group(1).replace("''", "'")
            while value.endswith("&") and i + 1 < len(self._cards) and self._cards[i + 1][:8] == "CONTINUE":
                i += 1
                m = _STRING.match(self._cards[i][8:].strip())
                value = value[:-1] + (m.group(1).replace("''", "'") if m else "")
            return value.rstrip()
        token = stripped.split("/", 1)[0].strip()
        if not token:
            return None
        if token in ("T", "F"):
            return token == "T"
        value = _number(token)
        if value is None and (m := _COMPLEX.match(token)):
            re_, im = _number(m.group(1)), _number(m.group(2))
            value = None if re_ is None or im is None else complex(re_, im)
        return token if value is None else value

    def card(self, key: str) -> str:
        """The raw 80-character card ``key`` is read from (its first card for a long string).

        Raises:
            KeyError: no such keyword."""
        return self._cards[self._index[self._normal(key)]]

    def __getitem__(self, key: str):
        k = self._normal(key)
        if k not in self._values:
            self._values[k] = self._parse(self._index[k])
        return self._values[k]

    def __contains__(self, key) -> bool:
        return isinstance(key, str) and self._normal(key) in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


@lru_cache(maxsize=16)
def card_values(cards: str) -> tuple:
    """The values of ``cards``, a string of whole 80-character value cards (no ``CONTINUE``), in
    their order, as :class:`CardIndex` gives them; kept for the last few strings (the exposures of
    a night repeat their calibration cards)."""
    index = CardIndex([cards[i:i + CARD] for i in range(0, len(cards), CARD)])
    return tuple(index[index._keyword(cards[i:i + CARD])] for i in range(0, len(cards), CARD))


def scan_header(raw: bytes | memoryview, offset: int = 0) -> tuple[CardIndex, int]:
    """Index the header starting at byte ``offset`` of ``raw``.

    Returns:
        (the header's :class:`CardIndex`, the byte offset where its data begin: the end of the
        2880-byte block holding ``END``).
    Raises:
        ValueError: no ``END`` card before the bytes end.
    """
    cards = []
    pos = offset
    while pos + BLOCK <= len(raw):
        block = bytes(raw[pos:pos + BLOCK]).decode("latin-1")
        pos += BLOCK
        for j in range(0, BLOCK, CARD):
            card = block[j:j + CARD]
            if card[:8] == "END     ":
                return CardIndex(cards), pos
            cards.append(card)
    raise ValueError("no END card: truncated FITS header")


def data_bytes(header: Mapping) -> int:
    """Size (bytes, before padding to 2880) of the data that follow ``header``."""
    naxis = int(header.get("NAXIS", 0))
    if naxis == 0:
        return 0
    n = 1
    for k in range(1, naxis + 1):
        n *= int(header[f"NAXIS{k}"])
    return abs(int(header["BITPIX"])) // 8 * int(header.get("GCOUNT", 1)) * (int(header.get("PCOUNT", 0)) + n)


@dataclass(frozen=True)
class PrimaryImage:
    """A file holding only a primary image: its header and its data.

    Attributes:
        header: the primary header (:class:`CardIndex`).
        data: the image, shape (NAXIS2, NAXIS1) for 2D, big-endian as stored; a read-only view of the bytes.
    """

    header: CardIndex
    data: np.ndarray


def primary_image(raw: bytes) -> PrimaryImage | None:
    """The primary image of ``raw`` when that is all the file holds (no extension, no scaling,
    every data byte present), else None: the caller reads such files with astropy."""
    try:
        header, start = scan_header(raw)
        size = data_bytes(header)
        dtype = _DTYPES.get(int(header["BITPIX"]))
        naxis = int(header["NAXIS"])
        shape = tuple(int(header[f"NAXIS{k}"]) for k in range(naxis, 0, -1))
    except (ValueError, KeyError, TypeError):
        return None
    end = start + -(-size // BLOCK) * BLOCK
    if (dtype is None or size == 0 or len(raw) < start + size or raw[end:end + 8] == b"XTENSION"
            or header.get("BSCALE", 1) != 1 or header.get("BZERO", 0) != 0 or header.get("GROUPS") is True):
        return None
    data = np.frombuffer(raw, dtype=dtype, count=size // np.dtype(dtype).itemsize, offset=start).reshape(shape)
    return PrimaryImage(header, data)

"""Model atmospheres between the ATLAS9 nodes, for spectra synthesised at labels off the grid.

The grid itself never interpolates atmospheres (a node without a deck is recorded missing). To
test how well the grid's multilinear interpolation stands for a star whose labels fall between
nodes, the evaluation synthesises spectra at such labels directly with PySME; their atmospheres
come from here.

Method (the standard one for Kurucz and MARCS grids, e.g. Masseron's ``interpol_modeles`` and
SME's own grid interpolation, done on an optical-depth scale): every Castelli-Kurucz ODFNEW deck
has its 72 layers at the same Rosseland optical depths (log tau_Ross = -6.875 ... +2.0 in 0.125;
checked on the decks used here), so the structure is interpolated layer by layer, trilinearly in
(Teff, log g, [M/H]) over the eight surrounding decks: log RHOX, T, log P, log XNE, log ABROSS,
ACCRAD, VTURB, FLXCNV, VCONV, VELSND, and PRADK. The header is the nearest deck's, with TEFF,
GRAVITY and the ABUNDANCE SCALE (10^[M/H]) set to the target.
"""
from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import numpy as np

from ..labels import GRID_AXES
from .backend import MissingAtmosphere
from .pysme_backend import PysmeBackend

LOG_COLUMNS = (0, 2, 3, 4)
"""RHOX, P, XNE, ABROSS: interpolated in log10 (they span many decades over depth)."""


def parse_deck(deck: str) -> tuple[list[str], np.ndarray, float, list[str]]:
    """(header lines, (72, 10) structure, PRADK, trailing lines) of one ATLAS9 deck."""
    lines = deck.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("READ DECK6"))
    n = int(lines[i].split()[2])
    table = np.array([[float(v) for v in line.split()] for line in lines[i + 1 : i + 1 + n]])
    rest = lines[i + 1 + n :]
    pradk = float(rest[0].split()[1]) if rest and rest[0].startswith("PRADK") else 0.0
    return lines[: i + 1], table, pradk, rest[1:]


def _format(header: list[str], table: np.ndarray, pradk: float, trailer: list[str]) -> str:
    rows = [f" {r[0]:.8E} {r[1]:8.1f} {r[2]:.3E} {r[3]:.3E} {r[4]:.3E} {r[5]:.3E} {r[6]:.3E}"
            + "".join(f" {v:.3E}" for v in r[7:]) for r in table]
    return "\n".join([*header, *rows, f"PRADK {pradk:.4E}", *trailer]) + "\n"


def interpolate_deck(decks: dict[tuple[float, float, float], str], teff: float, logg: float, mh: float) -> str:
    """An ATLAS9 deck at (``teff`` K, ``logg`` dex, ``mh`` dex) from the eight surrounding node decks.

    Args:
        decks: node labels (Teff, log g rounded to 0.01, [M/H]) -> deck text.
    Raises:
        MissingAtmosphere: a surrounding node has no deck, or the labels are outside Table 1.
    """
    target = (float(teff), float(logg), float(mh))
    cell, frac = [], []
    for value, axis in zip(target, GRID_AXES):
        nodes = np.asarray(axis.values, dtype=np.float64)
        if not nodes[0] <= value <= nodes[-1]:
            raise MissingAtmosphere(f"{value:g} is outside the grid's {axis.name} range {nodes[0]:g}-{nodes[-1]:g}")
        i = int(np.clip(np.searchsorted(nodes, value, side="right") - 1, 0, len(nodes) - 2))
        cell.append((nodes[i], nodes[i + 1]))
        frac.append((value - nodes[i]) / (nodes[i + 1] - nodes[i]))
    table = np.zeros((72, 10))
    pradk = 0.0
    nearest, best = None, -1.0
    for bits in itertools.product((0, 1), repeat=3):
        w = float(np.prod([f if b else 1 - f for f, b in zip(frac, bits)]))
        key = (cell[0][bits[0]], round(cell[1][bits[1]], 2), cell[2][bits[2]])
        if w == 0.0:
            continue
        if key not in decks:
            raise MissingAtmosphere(f"no ATLAS9 model at {key} to interpolate {target}")
        header, t, p, trailer = parse_deck(decks[key])
        if t.shape != table.shape:
            raise MissingAtmosphere(f"the ATLAS9 deck at {key} has {t.shape[0]} layers, not 72")
        t = t.copy()
        t[:, LOG_COLUMNS] = np.log10(np.maximum(t[:, LOG_COLUMNS], 1e-300))
        table += w * t
        pradk += w * p
        if w > best:
            nearest, best = (header, trailer), w
    table[:, LOG_COLUMNS] = 10 ** table[:, LOG_COLUMNS]
    header, trailer = list(nearest[0]), nearest[1]
    header[0] = f"TEFF   {teff:.0f}.  GRAVITY {logg:.5f} LTE "
    header[1] = re.sub(r"\[[+-]?\d+\.\d+a?\]", f"[{mh:+.3f}]", header[1])
    for k, line in enumerate(header):
        if line.startswith("ABUNDANCE SCALE"):
            header[k] = re.sub(r"ABUNDANCE SCALE\s+[\d.]+", f"ABUNDANCE SCALE {10**mh:9.5f}", line)
    return _format(header, table, pradk, trailer)


class BetweenNodesBackend(PysmeBackend):
    """The grid's PySME backend (same line lists, abundances, vmic, R and wavelengths) with
    atmospheres interpolated by :func:`interpolate_deck` at labels between the nodes."""

    def atmosphere(self, teff: float, logg: float, mh: float):
        from pysme.atmosphere.krzfile import KrzFile

        key = (float(teff), round(float(logg), 2), float(mh))
        if key in self.decks:
            return super().atmosphere(teff, logg, mh)
        path = os.path.join(self._tmp, f"{os.getpid()}-between.krz")
        Path(path).write_text(interpolate_deck(self.decks, teff, logg, mh))
        atmo = KrzFile(path, source=f"ATLAS9 interpolated at {teff:g}/{logg:g}/{mh:+g}")
        atmo.method = "embedded"
        return atmo


__all__ = ["interpolate_deck", "parse_deck", "BetweenNodesBackend"]

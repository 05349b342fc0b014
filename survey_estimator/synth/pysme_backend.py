"""PySME synthesis of one grid node: ATLAS9 model at the node, Gaia-ESO atoms (+ linemake
molecules), v sin i = 0, Gaussian instrumental profile at R, continuum-normalised, on the fine grid.

Choices (FACTS section 3 pitfalls), all recorded in the manifest via :meth:`PysmeBackend.physics`:

- abundances: ``sme.abund = Abund.solar()`` is set BEFORE ``sme.monh`` (setting abund resets monh);
- model atmospheres: the ATLAS9 deck of the node itself (no interpolation; no deck ->
  :class:`MissingAtmosphere`), read by PySME's ``KrzFile`` ('embedded' method: nothing downloaded);
- Gaia-ESO isotope components (species code ``Z.AAA``) carry no isotopic fraction: log10 of the
  solar fraction (:data:`ISOTOPE_FRACTIONS`) is added to log gf; the same for linemake molecular
  isotopologues (C, N, Mg isotopes; a 12C13C line gets 2 f12 f13);
- van der Waals: GES values < 0 are log gamma6 and > 20 ABO sigma.alpha (SME reads both the same
  way); values in (0, 20) are Unsold enhancement factors, which SME would misread as a linear
  gamma6 (the line vanishes), so they become 0, i.e. SME's own Unsold approximation WITHOUT the
  factor (3102 weak, mostly rare-earth lines in this range);
- radiative damping: GES gives gamma_rad linear (s^-1); SME gets log10; no Stark constants (0);
- wavelengths stay in air (``medium='air'``), like the output grid;
- vmic from the config (default 1.0 km/s, see :data:`.backend.DEFAULT_VMIC_KMS`), vmac = 0;
- numerical accuracy from ``config.synthesis`` (:class:`.backend.SynthesisSettings`: accrt, accwi,
  mu angles, fixed or adaptive transfer grid, line selection), recorded per node, not in the grid id.

PySME runs fully offline here: the SME library ships in the wheel and the embedded atmosphere
needs no atmosphere grid download (checked).
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from .backend import BackendConfig, MissingAtmosphere, SynthesisError, base_physics
from .sources import atlas_model_labels, split_atlas_models, turbospectrum_blocks

log = logging.getLogger(__name__)

ISOTOPE_FRACTIONS: dict[int, dict[int, float]] = {
    1: {1: 0.999885, 2: 0.000115},
    3: {6: 0.0759, 7: 0.9241},
    6: {12: 0.9893, 13: 0.0107},
    7: {14: 0.99636, 15: 0.00364},
    12: {24: 0.7899, 25: 0.1000, 26: 0.1101},
    29: {63: 0.6915, 65: 0.3085},
    56: {130: 0.00106, 132: 0.00101, 134: 0.02417, 135: 0.06592, 136: 0.07854, 137: 0.11232, 138: 0.71698},
    57: {138: 0.0009, 139: 0.9991},
    59: {141: 1.0},
    60: {142: 0.27152, 143: 0.12174, 144: 0.23798, 145: 0.08293, 146: 0.17189, 148: 0.05756, 150: 0.05638},
    62: {144: 0.0307, 147: 0.1499, 148: 0.1124, 149: 0.1382, 150: 0.0738, 152: 0.2675, 154: 0.2275},
    63: {151: 0.4781, 153: 0.5219},
}
"""Solar-system (IUPAC) isotopic abundance fractions by atomic number and mass number."""

ELEMENTS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm "
    "Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U"
).split()
ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4}


def isotope_fraction(z: int, mass: int) -> float:
    """Solar fraction of isotope ``mass`` of element ``z`` (ValueError when unknown)."""
    try:
        return ISOTOPE_FRACTIONS[z][mass]
    except KeyError:
        raise ValueError(f"no isotopic fraction for Z={z} A={mass}: add it to ISOTOPE_FRACTIONS") from None


# -- line lists ----------------------------------------------------------------------------------
def read_turbospectrum(path: str, details: bool = False):
    """Turbospectrum/Gaia-ESO atomic list -> pandas DataFrame in PySME 'short' columns.

    Block header ``'Z.AAA' ion n`` then ``'El ION  LTE'``; each line: air wavelength (A), lower
    excitation (eV), log gf, vdW (see module docstring), g_up, gamma_rad (s^-1), ...
    Returns the frame and counters ``{"unsold_factor_lines": n, "isotope_lines": n}``.
    ``details`` adds the list's own fields for line-data studies (``bench/solar_residual.py``):
    ``vdw_raw`` (the vdW field as written), ``orb`` (the two orbital markers), ``levels`` (the
    level text) and ``gf_ges`` (log gf without the isotope fraction).
    """
    rows, extra, counts = [], [], {"unsold_factor_lines": 0, "isotope_lines": 0}
    for code, _, label_line, body in turbospectrum_blocks(Path(path).read_text()):
        code = code.strip()
        label = label_line.strip().strip("'").split()
        z = int(float(code))
        ion = ROMAN[label[1]]
        mass = int(round((float(code) - z) * 1000))
        dlog = math.log10(isotope_fraction(z, mass)) if mass else 0.0
        species = f"{ELEMENTS[z - 1]} {ion}"
        for ln in body:
            p = ln.split()
            wl, chi, loggf, vdw, grad = float(p[0]), float(p[1]), float(p[2]), float(p[3]), float(p[5])
            if details:
                q = ln.split("'")
                extra.append((vdw, (q[1].strip() + q[3].strip()) if len(q) > 4 else "", q[5] if len(q) > 6 else "", loggf))
            if 0 < vdw < 20:
                vdw = 0.0
                counts["unsold_factor_lines"] += 1
            counts["isotope_lines"] += bool(mass)
            rows.append((species, z, ion, wl, chi, loggf + dlog, math.log10(grad) if grad > 0 else 0.0, 0.0, vdw))
    frame = _frame(rows)
    for k, name in enumerate(("vdw_raw", "orb", "levels", "gf_ges") if details else ()):
        frame[name] = [e[k] for e in extra]
    return frame, counts


def read_moog(path: str):
    """MOOG/linemake molecular list -> DataFrame (PySME 'short' columns), isotopologue-scaled.

    Columns: wavelength (A, air), species code ``AB.0xxyy`` (e.g. 607.01214 = 12C14N,
    106.00113 = 1H13C), excitation (eV), log gf, D0, comment."""
    rows = []
    for ln in Path(path).read_text().splitlines():
        p = ln.split()
        if len(p) < 4:
            continue
        wl, code, chi, loggf = float(p[0]), p[1], float(p[2]), float(p[3])
        whole, _, frac = code.partition(".")
        mol = int(whole)
        z1, z2 = divmod(mol, 100)
        frac = frac.ljust(5, "0")
        m1, m2 = int(frac[1:3] or 0), int(frac[3:5] or 0)
        name = _molecule_name(z1, z2)
        dlog = 0.0
        if m1 and m2:
            f = isotope_fraction(z1, m1) * isotope_fraction(z2, m2)
            if z1 == z2 and m1 != m2:
                f *= 2  # 12C13C and 13C12C
            dlog = math.log10(f)
        rows.append((f"{name} 1", mol, 1, wl, chi, loggf + dlog, 0.0, 0.0, 0.0))
    return _frame(rows)


def _molecule_name(z1: int, z2: int) -> str:
    a, b = ELEMENTS[z1 - 1], ELEMENTS[z2 - 1]
    if a == b:
        return f"{a}2"
    if a == "H":  # linemake writes hydrides as 1xx (e.g. 112 = MgH)
        return f"{b}H"
    return f"{a}{b}"


def _frame(rows):
    import pandas as pd

    cols = ["species", "atom_number", "ionization", "wlcent", "excit", "gflog", "gamrad", "gamqst", "gamvw"]
    df = pd.DataFrame(rows, columns=cols)
    df["lande"] = 0.0
    df["depth"] = 1.0
    df["reference"] = ""
    return df


# -- backend ---------------------------------------------------------------------------------------
class PysmeBackend:
    """PySME synthesis on the fine grid; loads atmospheres and line lists once."""

    def __init__(self, config: BackendConfig):
        import pandas as pd
        from pysme.linelist.linelist import LineList

        logging.getLogger("pysme").setLevel(logging.WARNING)
        self.config = config
        self.wave = config.wave()
        atm = config.source("atmospheres")
        atoms = config.source("atomic_lines")
        if len(atm) != 1 or len(atoms) != 1:
            raise SynthesisError("the PySME backend needs one atmosphere file and one atomic line list "
                                 "(build the config with survey_estimator.synth.sources.prepare_sources)")
        self.decks = {}
        for deck in split_atlas_models(Path(atm[0].path).read_text()):
            lab = atlas_model_labels(deck)
            if lab:
                self.decks.setdefault(lab, deck)
        frames = []
        atomic, self.counts = read_turbospectrum(atoms[0].path)
        frames.append(atomic)
        mol = config.source("molecular_lines")
        if config.molecules:
            if not mol:
                raise SynthesisError("molecules requested but no molecular line list given")
            frames += [read_moog(s.path) for s in mol]
        lines = pd.concat(frames, ignore_index=True).sort_values("wlcent", ignore_index=True)
        self.n_lines = {"atomic": int(len(atomic)), "molecular": int(len(lines) - len(atomic))}
        self.linelist = LineList(lines, lineformat="short", medium="air")
        self._tmp = tempfile.mkdtemp(prefix="se-pysme-")
        log.info("PySME backend: %d atmospheres, %d atomic + %d molecular lines", len(self.decks),
                 self.n_lines["atomic"], self.n_lines["molecular"])

    def physics(self) -> dict:
        from importlib import metadata

        return dict(
            base_physics(self.config, self.wave),
            synthesis={
                "code": "pysme-astro", "version": metadata.version("pysme-astro"),
                "instrumental_profile": "gauss", "vmac_kms": 0.0, "vsini_kms": 0.0,
                "abundances": "Abund.solar() scaled by [M/H] (set abund before monh)",
                "atmosphere": "ATLAS9 deck at the node (no interpolation), KrzFile embedded",
                "vdw_unsold_factor_lines": "GES vdW in (0,20) -> 0 (SME Unsold, factor dropped)",
                "isotopes": "log10 solar isotopic fraction added to log gf (GES components, molecules)",
                "n_lines": self.n_lines, "unsold_factor_lines": self.counts["unsold_factor_lines"],
            },
        )

    def synthesis_settings(self) -> dict:
        """The numerical accuracy settings (not part of the grid id; see :class:`SynthesisSettings`)."""
        return self.config.synthesis.describe()

    def atmosphere(self, teff: float, logg: float, mh: float):
        """PySME KrzFile of the node's ATLAS9 deck; MissingAtmosphere when there is none."""
        from pysme.atmosphere.krzfile import KrzFile

        deck = self.decks.get((float(teff), round(float(logg), 2), float(mh)))
        if deck is None:
            raise MissingAtmosphere(f"no ATLAS9 model at Teff={teff:g} K, log g={logg:g}, [M/H]={mh:+g} "
                                    f"in {self.config.source('atmospheres')[0].name}")
        path = os.path.join(self._tmp, f"{os.getpid()}.krz")
        Path(path).write_text(deck)
        atmo = KrzFile(path, source=f"ATLAS9 {teff:g}/{logg:g}/{mh:+g}")
        atmo.method = "embedded"
        return atmo

    def synthesize(self, teff: float, logg: float, mh: float) -> np.ndarray:
        from pysme.abund import Abund
        from pysme.sme import SME_Structure
        from pysme.synthesize import synthesize_spectrum

        atmo = self.atmosphere(teff, logg, mh)
        sme = SME_Structure()
        sme.abund = Abund.solar()  # first: assigning abund resets monh
        sme.teff, sme.logg, sme.monh = float(teff), float(logg), float(mh)
        sme.vmic, sme.vmac, sme.vsini = float(self.config.vmic_kms), 0.0, 0.0
        sme.atmo = atmo
        sme.linelist = self.linelist
        sme.wran = [[float(self.wave[0]), float(self.wave[-1])]]
        sme.wave = [self.wave]
        sme.iptype, sme.ipres = "gauss", float(self.config.resolution)
        sme.cscale_flag, sme.vrad_flag = "none", "none"
        settings = self.config.synthesis
        sme.accrt, sme.accwi = float(settings.accrt), float(settings.accwi)
        sme.mu = settings.mu()
        sme.line_select_almax_threshold = settings.select_threshold
        sme.line_select_almax_use_bins = bool(settings.select_bins)
        wint = settings.transfer_wave(self.wave)
        if wint is not None:
            sme.wint = [wint]
        try:
            sme = synthesize_spectrum(sme)
        except Exception as exc:
            raise SynthesisError(f"PySME failed: {type(exc).__name__}: {exc}") from exc
        flux = np.asarray(sme.synth[0], dtype=np.float64)
        if flux.shape != self.wave.shape:
            raise SynthesisError(f"PySME returned {flux.shape} points, expected {self.wave.shape}")
        if not (np.all(np.isfinite(flux)) and 0 < flux.max() < 1.2):
            raise SynthesisError(f"PySME returned an implausible spectrum (max {np.nanmax(flux):.3g})")
        return flux.astype(np.float32)


__all__ = ["PysmeBackend", "read_turbospectrum", "read_moog", "isotope_fraction", "ISOTOPE_FRACTIONS"]

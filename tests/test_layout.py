"""The canonical layout against the real HARPS-N coefficient table (survey_estimator/data/ORIGIN.md)."""
import numpy as np
import pytest

from survey_estimator.layout import (
    N_ORDERS,
    N_PIXELS,
    canonical_wave,
    harpn_reference_coefficients,
    resample_to_layout,
    wavelength_solution,
)


def test_shipped_coefficients_are_the_real_table():
    coeffs, degree = harpn_reference_coefficients()
    assert degree == 3 and coeffs.size == 69 * 4
    # order 0: lambda(0) = c0 = 3874.08099385967 A (first row of the real table)
    assert coeffs[0] == pytest.approx(3874.08099385967)


def test_rows_36_to_43_span_the_band_as_in_facts():
    w = canonical_wave()
    assert w.shape == (N_ORDERS, N_PIXELS)
    spans = [(5026.2, 5082.7), (5068.1, 5125.0), (5110.6, 5168.1), (5153.9, 5211.9),
             (5198.0, 5256.4), (5242.7, 5301.7), (5288.3, 5347.8), (5334.7, 5394.7)]
    for row, (lo, hi) in zip(w, spans):
        assert row[0] == pytest.approx(lo, abs=0.06) and row[-1] == pytest.approx(hi, abs=0.06)
        assert np.all(np.diff(row) > 0)
    assert w.min() < 5050 and w.max() > 5350


def test_mg_b_5183_falls_in_row_39_near_pixel_1933():
    w = canonical_wave()
    rows = [i for i in range(N_ORDERS) if w[i, 0] < 5183.60 < w[i, -1]]
    assert rows == [3]  # row 39 of the e2ds
    pix = np.interp(5183.60, w[3], np.arange(N_PIXELS))
    assert pix == pytest.approx(1933, abs=1.0)


def test_zero_based_pixels_matter():
    """Evaluating with 1-based x shifts the wavelengths by one pixel (~0.014 A)."""
    coeffs, degree = harpn_reference_coefficients()
    c = coeffs.reshape(-1, 4)[39]
    one_based = np.polyval(c[::-1], 1.0)
    assert canonical_wave()[3, 0] == pytest.approx(c[0])
    assert abs(one_based - canonical_wave()[3, 0]) > 0.01


def test_wavelength_solution_rejects_bad_coefficient_count():
    with pytest.raises(ValueError):
        wavelength_solution(np.ones(7), 3)


def test_resample_identity_and_masking():
    w = canonical_wave()
    flux = 1 + 0.1 * np.sin(w)
    f, v, m = resample_to_layout(w, flux, variance=np.full_like(w, 0.01))
    assert m.all() and np.allclose(f, flux)
    # a 1D spectrum that covers only part of the band: the rest is masked, not zero
    wl = np.linspace(5100, 5200, 20000)
    f, v, m = resample_to_layout(wl, np.ones_like(wl))
    assert m.any() and not m.all()
    assert np.all(np.isnan(f[~m])) and np.allclose(f[m], 1.0)
    inside = (w >= 5100) & (w <= 5200)
    assert np.array_equal(m, inside & m) and m.sum() >= inside.sum() - 2


def test_resample_bad_pixels_propagate_to_mask():
    wl = np.linspace(5000, 5400, 40000)
    fl = np.ones_like(wl)
    fl[20000] = np.nan
    f, v, m = resample_to_layout(wl, fl)
    near = np.abs(canonical_wave() - wl[20000]) < (wl[1] - wl[0])
    assert not m[near].any()

"""The shared per-order normalisation (used by the sampler and by real-data preprocessing)."""
import numpy as np
import torch

from survey_estimator.layout import canonical_wave
from survey_estimator.normalise import model_input, normalise_numpy, normalise_orders


def _spectrum(seed=0):
    rng = np.random.default_rng(seed)
    w = canonical_wave()
    spec = np.ones_like(w)
    for c in rng.uniform(w.min(), w.max(), 400):
        spec *= 1 - 0.5 * np.exp(-0.5 * ((w - c) / 0.05) ** 2)
    x = np.linspace(-1, 1, w.shape[1])
    blaze = (1 - 0.6 * x**2)[None, :] * rng.uniform(0.5, 2.0, (w.shape[0], 1))
    return spec, blaze


def test_recovers_continuum_under_a_blaze_and_is_scale_free():
    spec, blaze = _spectrum()
    mask = np.ones(spec.shape, bool)
    norm, m = normalise_numpy(spec * blaze * 5000.0, mask)
    line_free = spec > 0.999
    assert m.all()
    assert abs(np.median(norm[line_free]) - 1.0) < 0.01
    norm2, _ = normalise_numpy(spec * blaze * 3.0, mask)
    assert np.allclose(norm, norm2, atol=1e-6)


def test_masked_pixels_become_continuum_and_stay_masked():
    spec, blaze = _spectrum(1)
    mask = np.ones(spec.shape, bool)
    mask[2, 100:300] = False
    flux = spec * blaze
    flux[2, 100:300] = np.nan
    flux[5, 7] = -50.0  # a wild pixel: masked input stays out of the fit
    mask[5, 7] = False
    norm, m = normalise_numpy(flux, mask)
    assert not m[2, 100:300].any() and not m[5, 7]
    assert np.all(norm[~m] == 1.0) and np.isfinite(norm).all()


def test_batched_torch_matches_single_and_model_input_shape():
    spec, blaze = _spectrum(2)
    f = torch.tensor(np.stack([spec * blaze, spec * blaze * 2]))
    m = torch.ones_like(f, dtype=torch.bool)
    nf, nm = normalise_orders(f, m)
    assert torch.allclose(nf[0], nf[1], atol=1e-6)
    x = model_input(nf.float(), nm)
    assert x.shape == (2, 2, 8, 4096)
    assert torch.all(x[:, 1] == 1) and x[:, 0].abs().max() <= 1.0


def test_empty_order_does_not_break():
    spec, blaze = _spectrum(3)
    mask = np.ones(spec.shape, bool)
    mask[0] = False
    norm, m = normalise_numpy(spec * blaze, mask)
    assert not m[0].any() and np.all(norm[0] == 1.0) and m[1:].all()

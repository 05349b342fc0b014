"""ModelBundle: save/load round trip, version checks, calibration, and loading without pickle."""
from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest
import torch

from survey_estimator.labels import LABEL_NAMES
from survey_estimator.layout import LAYOUT_VERSION
from survey_estimator.models import build_model
from survey_estimator.models.bundle import DAE_FILE, ESTIMATOR_FILE, MANIFEST, BundleError, ModelBundle
from survey_estimator.normalise import NORMALISATION_VERSION, model_input

PREP = "test-prep-v1"


def spectra(n: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    flux = 1 - 0.3 * torch.rand(n, 8, 4096, generator=g) ** 6
    mask = torch.rand(n, 8, 4096, generator=g) > 0.05
    return model_input(flux, mask)


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    torch.manual_seed(0)
    est = build_model("attention", {"head": "full"}, preset="tiny")
    dae = build_model("dae", preset="tiny")
    with torch.no_grad():  # untrained nets: make the DAE and the BN statistics non-trivial
        dae.out.weight.normal_(0, 0.3)
        for m in est.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return ModelBundle.create(
        est, name="tiny-attention", preprocessing_version=PREP, grid_id="grid-test", dae=dae,
        calibration={"teff": 1.5, "logg": 0.8}, metrics={"val_nll": -3.2}, commit="abc123",
    )


@pytest.fixture
def saved(bundle, tmp_path):
    return bundle.save(tmp_path / "bundle")


def test_round_trip_identical_predictions(bundle, saved):
    x = spectra(3)
    loaded = ModelBundle.load(saved, expect_preprocessing=PREP, device="cpu")
    for use_dae in (True, False):
        a, b = bundle.predict(x, use_dae=use_dae, batch_size=2), loaded.predict(x, use_dae=use_dae, batch_size=2)
        for field in ("mean", "sigma_raw", "sigma", "covariance"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    m = loaded.manifest
    assert (m.name, m.architecture, m.head, m.grid_id, m.git_commit) == ("tiny-attention", "attention", "full", "grid-test", "abc123")
    assert m.layout_version == LAYOUT_VERSION and m.normalisation_version == NORMALISATION_VERSION
    assert m.preprocessing_version == PREP and m.label_names == list(LABEL_NAMES)
    assert m.metrics == {"val_nll": -3.2} and m.dae["architecture"] == "dae"
    for name, ref in bundle.estimator.state_dict().items():
        assert torch.equal(loaded.estimator.state_dict()[name], ref), name


def test_prediction_units_and_calibration(bundle):
    p = bundle.predict(spectra(3), batch_size=64)
    assert p.mean.shape == (3, 4) and p.covariance.shape == (3, 4, 4) and p.mean.dtype == np.float64
    np.testing.assert_allclose(p.sigma, p.sigma_raw * np.array([1.5, 0.8, 1.0, 1.0]))
    np.testing.assert_allclose(np.sqrt(np.diagonal(p.covariance, axis1=1, axis2=2)), p.sigma)
    assert np.all(np.linalg.eigvalsh(p.covariance) > 0)
    assert np.all(np.abs(p.mean[:, 0] - 6625) < 3 * 3125)  # Teff in K around the grid centre
    x = spectra(3)
    with torch.no_grad():
        expected = bundle.scaler.denormalise(bundle.estimator.eval()(bundle.dae.eval().denoise(x)).mean).double().numpy()
    with_dae, without = bundle.predict(x), bundle.predict(x, use_dae=False)
    np.testing.assert_allclose(with_dae.mean, expected, rtol=1e-6)
    assert np.abs(with_dae.mean - without.mean).max() > 0, "use_dae must change the input"
    assert bundle.predict(spectra(0)).mean.shape == (0, 4)


def test_predict_batches_and_restores_training_mode(bundle):
    bundle.estimator.train()
    x = spectra(5)
    a, b = bundle.predict(x, batch_size=5), bundle.predict(x, batch_size=2)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-5, atol=1e-3)
    assert bundle.estimator.training
    bundle.estimator.eval()


def _edit_manifest(directory, **changes):
    path = directory / MANIFEST
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"layout_version": "harps-r40-46-v0"}, "layout"),
        ({"normalisation_version": "poly1-v0"}, "normalisation"),
        ({"preprocessing_version": "other-prep"}, "preprocessing"),
        ({"label_names": ["teff", "logg", "feh", "vsini"]}, "labels"),
        ({"format_version": 99}, "format"),
        ({"architecture": "transformer"}, "architecture"),
        ({"head": "diagonal"}, "head"),
    ],
)
def test_mismatched_bundles_are_refused(saved, changes, match):
    _edit_manifest(saved, **changes)
    with pytest.raises(BundleError, match=match):
        ModelBundle.load(saved, expect_preprocessing=PREP, device="cpu")


def test_layout_expectation_and_corrupt_weights(saved):
    with pytest.raises(BundleError, match="layout"):
        ModelBundle.load(saved, expect_layout="espresso-v1", expect_preprocessing=PREP)
    data = bytearray((saved / DAE_FILE).read_bytes())
    data[-4:] = b"\x00\x01\x02\x03"
    (saved / DAE_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        ModelBundle.load(saved, expect_preprocessing=PREP)
    (saved / DAE_FILE).unlink()
    with pytest.raises(BundleError, match="missing"):
        ModelBundle.load(saved, expect_preprocessing=PREP)


def test_loading_never_unpickles(saved, monkeypatch):
    # The weight files are safetensors: an 8-byte little-endian header size, then a JSON header.
    for name in (ESTIMATOR_FILE, DAE_FILE):
        raw = (saved / name).read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        assert header["__metadata__"]["architecture"] in ("attention", "dae")
    # A pickle left in the directory must not be touched, and no unpickler may run at all.
    (saved / "estimator.pt").write_bytes(pickle.dumps({"evil": True}))

    def refuse(*args, **kwargs):
        raise AssertionError("bundle loading must not unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = ModelBundle.load(saved, expect_preprocessing=PREP, device="cpu")
    assert loaded.predict(spectra(2)).mean.shape == (2, 4)


def test_bundle_without_dae_and_calibration_errors(tmp_path):
    est = build_model("resnet", preset="tiny")
    b = ModelBundle.create(est, name="r", preprocessing_version=PREP, grid_id="g")
    assert b.manifest.calibration == {n: 1.0 for n in LABEL_NAMES} and b.manifest.git_commit
    with pytest.raises(ValueError):
        b.set_calibration([1.0, 2.0])
    with pytest.raises(ValueError):
        b.set_calibration({"teff": -1.0})
    b.save(tmp_path)
    loaded = ModelBundle.load(tmp_path, expect_preprocessing=PREP, device="cpu")
    assert loaded.dae is None and not (tmp_path / DAE_FILE).exists()
    p = loaded.predict(spectra(2), use_dae=True)
    np.testing.assert_array_equal(p.sigma, p.sigma_raw)


def test_label_range_round_trip_and_default(bundle, tmp_path):
    lo, hi = bundle.label_bounds  # no range recorded: the Table-1 axes
    np.testing.assert_array_equal(lo, [3500, 0, -2.5, 0])
    np.testing.assert_array_equal(hi, [9750, 5, 0.5, 30])
    span = {"teff": [4000, 7000], "logg": [0, 5], "mh": [-2.5, 0.5], "vsini": [0, 30]}
    b = ModelBundle.create(bundle.estimator, name="ranged", preprocessing_version=PREP, grid_id="g", label_range=span)
    loaded = ModelBundle.load(b.save(tmp_path / "ranged"), expect_preprocessing=PREP, device="cpu")
    np.testing.assert_array_equal(loaded.label_bounds[0], [4000, 0, -2.5, 0])
    np.testing.assert_array_equal(loaded.label_bounds[1], [7000, 5, 0.5, 30])

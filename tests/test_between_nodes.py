"""Atmospheres between the ATLAS9 nodes and the between-node test spectra (issue 14's test the fit
did not make itself): interpolation on the common tau_Ross layers, PySME on an interpolated deck,
and the truth renderer against the forward model at a node."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from survey_estimator.evaluation.between_nodes import BetweenNodesConfig, SynthesisedSpectra, draw_labels
from survey_estimator.forward import ForwardModel
from survey_estimator.sampling.interpolation import GridInterpolator
from survey_estimator.synth import sources
from survey_estimator.synth.backend import BackendConfig, MissingAtmosphere
from survey_estimator.synth.interpolate import BetweenNodesBackend, interpolate_deck, parse_deck
from survey_estimator.synth.store import GridStore

CORNERS = [(t, g, m) for t in (5750.0, 6000.0) for g in (4.0, 4.5) for m in (-0.5, 0.0)]


@pytest.fixture(scope="module")
def decks() -> dict:
    """The eight real roland ATLAS9 decks around (5875, 4.25, -0.25)."""
    with gzip.open(sources._roland_file("atmos/kurucz_data.txt.gz"), "rt") as f:
        text = f.read()
    out = {}
    for deck in sources.split_atlas_models(text):
        lab = sources.atlas_model_labels(deck)
        if lab in CORNERS and lab not in out:
            out[lab] = deck
    assert len(out) == 8
    return out


def test_a_deck_at_a_node_is_that_node(decks):
    _, table, pradk, _ = parse_deck(interpolate_deck(decks, 5750, 4.5, 0.0))
    _, ref, ref_pradk, _ = parse_deck(decks[(5750.0, 4.5, 0.0)])
    np.testing.assert_allclose(table, ref, rtol=2e-3, atol=1e-12)
    assert pradk == pytest.approx(ref_pradk, rel=1e-3)


def test_midway_layers_are_the_mean_on_the_tau_scale(decks):
    text = interpolate_deck(decks, 5875, 4.5, 0.0)
    head, mid, _, _ = parse_deck(text)
    a, b = (parse_deck(decks[(t, 4.5, 0.0)])[1] for t in (5750.0, 6000.0))
    np.testing.assert_allclose(mid[:, 1], 0.5 * (a[:, 1] + b[:, 1]), atol=0.06)  # T, linear
    np.testing.assert_allclose(mid[:, 2], np.sqrt(a[:, 2] * b[:, 2]), rtol=2e-3)  # P, in log
    assert head[0].startswith("TEFF   5875.  GRAVITY 4.50000")
    third = parse_deck(interpolate_deck(decks, 5875, 4.25, -0.25))[0]
    assert "ABUNDANCE SCALE   0.56234" in "\n".join(third) and "[-0.250]" in third[1]
    # a layer-by-layer interpolation keeps T rising with depth
    assert np.all(np.diff(parse_deck(interpolate_deck(decks, 5900, 4.1, -0.4))[1][:, 1]) > 0)


def test_a_missing_corner_or_outside_labels_are_refused(decks):
    few = {k: v for k, v in decks.items() if k != (6000.0, 4.0, -0.5)}
    with pytest.raises(MissingAtmosphere, match="6000"):
        interpolate_deck(few, 5900, 4.2, -0.3)
    interpolate_deck(few, 5750, 4.2, -0.3)  # that corner has no weight at Teff 5750: fine
    with pytest.raises(MissingAtmosphere, match="outside"):
        interpolate_deck(decks, 3000, 4.2, -0.3)


def test_pysme_synthesises_between_nodes_with_the_grid_backend(decks, tmp_path, monkeypatch):
    """PySME on an interpolated atmosphere: the Mg b2 core at 5875 K lies between the two nodes'."""
    monkeypatch.setenv("SURVEY_ESTIMATOR_CACHE", str(tmp_path / "cache"))
    atm = tmp_path / "atm.txt"
    atm.write_text("".join(decks.values()))
    ges = tmp_path / "ges.txt"
    ges.write_text("""'  12.000            '    1         1
'Mg I    LTE'
  5183.604  2.717 -0.180 -7.370    5.0  1.00E+08 'x' 'y'   0.0    1.0 'Mg I b2'
""")
    backend = BetweenNodesBackend(BackendConfig(name="pysme", vmic_kms=1.0, molecules=False,
                                                sources=sources.prepare_sources(str(atm), str(ges), None, molecules=False)))
    i = int(np.argmin(np.abs(backend.wave - 5183.604)))
    depth = {t: 1 - float(backend.synthesize(t, 4.5, 0.0)[i]) for t in (5750.0, 5875.0, 6000.0)}
    assert min(depth[5750.0], depth[6000.0]) < depth[5875.0] < max(depth[5750.0], depth[6000.0])


def test_truth_renderer_at_a_node_equals_the_forward_model(tiny_grid):
    """The between-node spectra are rendered with the forward model's own physics: at a node and
    a v sin i node, from the node's fine spectrum, they equal the table's."""
    dense = GridStore(tiny_grid).load_dense()
    model = ForwardModel.from_interpolator(GridInterpolator.from_dense(dense), cache=False, progress=False)
    labels = np.array([[5500.0, 4.5, -0.5, 6.0]])
    i = tuple(int(np.argmin(np.abs(a - v))) for a, v in zip(dense.axes, labels[0]))
    truth = SynthesisedSpectra(dense.flux[i][None].astype(np.float64), labels, dense.wave, model)
    rv = torch.tensor([1.7])
    got = truth.spectra(torch.as_tensor(labels), rv).double()
    ref = model.spectra(torch.as_tensor(labels), rv).double()
    assert float((got - ref).abs().max()) < 2e-3  # the table's two resamplings vs one
    assert float((got - ref).pow(2).mean().sqrt()) < 2e-4
    twice = truth.rows(np.array([0, 0])).spectra(torch.as_tensor(labels).repeat(2, 1), rv.repeat(2)).double()
    assert twice.shape == (2, *got.shape[1:]) and torch.equal(twice[0], twice[1]) and torch.allclose(twice[0], got[0])
    # and the labels drawn for the test are inside cells, never on a node
    lab = draw_labels(model, BetweenNodesConfig(n=20, seed=1))
    assert bool(model.inside(torch.as_tensor(lab)).all())
    for a, ax in enumerate(dense.axes):
        assert np.min(np.abs(lab[:, a, None] - ax[None]), axis=1).min() > 0.1 * np.diff(ax).min()

"""The CPU-cheap estimator (``patch``): shapes, learning, selection by the training config and CLI,
and a bundle round trip through the resolver that ``estimate`` uses."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from survey_estimator.models import GaussianOutput, ModelBundle, PatchConfig, PatchEstimator, build_model, describe
from survey_estimator.models.resolve import load_bundle
from survey_estimator.training.components import build_networks
from survey_estimator.training.config import TrainConfig

from model_testing import O, P, make_input, training_losses


@pytest.mark.parametrize("head", ["diagonal", "full"])
def test_shapes_and_default_size(head):
    torch.manual_seed(0)
    net = PatchEstimator(PatchConfig(head=head)).eval()
    out = net(make_input(3))
    assert isinstance(out, GaussianOutput)
    assert out.mean.shape == (3, 4) and out.scale_tril.shape == (3, 4, 4)
    assert torch.all(torch.diagonal(out.scale_tril, dim1=-2, dim2=-1) > 0)
    assert net.orders[0].weight.shape == (O, (P // 32) * 16, 128)  # one dense layer per order
    with pytest.raises(ValueError, match="multiple"):
        PatchConfig(patch=48)


def test_orders_have_their_own_weights():
    torch.manual_seed(0)
    net = build_model("patch", {"input_size": [O, 512]}, preset="tiny").eval()
    x = make_input(1, pixels=512)
    base = net(x).mean
    for o in (0, 5):  # changing one order moves the output through that order's own layer
        y = x.clone()
        y[:, 0, o] += 0.3
        assert not torch.allclose(net(y).mean, base)


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    net = build_model("patch", {"head": "full", "input_size": [O, 512]}, preset="tiny").train()
    x = make_input(6, seed=1, pixels=512)
    y = torch.rand(6, 4, generator=torch.Generator().manual_seed(2)) * 2 - 1
    losses = training_losses(net, x, y, steps=20)
    assert losses[-1] < losses[0] - 1.0, losses


def test_selected_by_the_training_config_and_cli():
    from survey_estimator.commands.train import add_arguments
    import argparse

    nets = build_networks(TrainConfig(grid="unused", model="patch", head="full", preset="tiny"))
    assert describe(nets["estimator"])[0] == "patch" and nets["estimator"].config.head == "full"
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert p.parse_args(["--grid", "g", "--model", "patch"]).model == "patch"


def test_bundle_round_trip_through_the_resolver(tmp_path):
    from survey_estimator.preprocess import PREPROCESSING_VERSION

    torch.manual_seed(0)
    est = build_model("patch", {"head": "full"}, preset="tiny").eval()
    bundle = ModelBundle.create(est, name="tiny-patch", preprocessing_version=PREPROCESSING_VERSION, grid_id="grid-test")
    folder = bundle.save(tmp_path / "bundle")
    loaded = load_bundle(str(folder), device="cpu")
    assert loaded.manifest.architecture == "patch"
    x = make_input(3)
    a, b = bundle.predict(x, batch_size=2), loaded.predict(x, batch_size=2)
    for field in ("mean", "sigma", "covariance"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))

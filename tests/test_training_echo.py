"""The cheap-CPU training options: data echoing (training.echo: the feature buffer, the config's
checks, the pca net's features path, the loop's echoed steps on a real tiny grid) and the
beta-NLL's flag (its weights: test_models_heads.py)."""
from __future__ import annotations

import argparse

import pytest
import torch

from survey_estimator.models import build_model
from survey_estimator.training.config import TrainConfig
from survey_estimator.training.echo import FeatureBuffer
from survey_estimator.training.loop import EpochRunner, init_worker

from model_testing import O, make_input


def test_buffer_keeps_the_newest_samples_and_draws_only_what_it_holds():
    buf = FeatureBuffer(capacity=10, seed=0)
    with pytest.raises(RuntimeError, match="empty"):
        buf.sample(2)
    first = torch.arange(4.0).reshape(4, 1)
    buf.add(first.expand(4, 3), first)
    assert buf.size == 4
    _, labels = buf.sample(200)
    assert set(labels.flatten().tolist()) == {0.0, 1.0, 2.0, 3.0}  # nothing from the empty slots
    more = torch.arange(4.0, 12.0).reshape(8, 1)
    buf.add(more.expand(8, 3), more)  # 12 added into 10 slots: 0 and 1 are overwritten
    assert buf.size == 10
    assert sorted(buf.labels.flatten().tolist()) == list(map(float, range(2, 12)))
    features, labels = buf.sample(500)
    torch.testing.assert_close(features, labels.expand(500, 3))  # pairs stay together
    assert set(labels.flatten().tolist()) == set(map(float, range(2, 12)))
    twins = [FeatureBuffer(capacity=10, seed=3) for _ in range(2)]
    for twin in twins:
        twin.add(more.expand(8, 3), more)
    torch.testing.assert_close(twins[0].sample(7)[1], twins[1].sample(7)[1])  # seeded draws


def test_config_refuses_echo_where_no_fixed_front_end_holds_the_features():
    assert TrainConfig(grid="g", model="pca", echo=8).echo == 8
    for bad in (dict(model="resnet", echo=4), dict(model="pca", task="both", echo=4)):
        with pytest.raises(ValueError, match="fixed front end"):
            TrainConfig(grid="g", **bad)
    with pytest.raises(ValueError, match="echo_buffer"):
        TrainConfig(grid="g", model="pca", echo=2, batch_size=64, echo_buffer=32)
    with pytest.raises(ValueError, match="echo >= 1"):
        TrainConfig(grid="g", model="pca", echo=0)


def test_pca_net_on_its_features_gives_what_it_gives_on_the_input():
    torch.manual_seed(0)
    net = build_model("pca", {"input_size": [O, 256]}, preset="tiny")
    x = make_input(12, seed=1, pixels=256)
    net.fit_front_end(x)
    net.eval()
    z = net.features(x)
    assert z.shape == (12, O * net.config.components) and z.dtype == torch.float32
    torch.testing.assert_close(net(features=z).mean, net(x).mean, atol=0, rtol=0)
    with pytest.raises(TypeError, match="exactly one"):
        net(x, features=z)
    with pytest.raises(TypeError, match="exactly one"):
        net()


def test_echoed_epoch_takes_echo_steps_per_fresh_batch_and_learns(tiny_grid):
    cfg = TrainConfig(grid=tiny_grid, model="pca", preset="tiny", head="diag", steps_per_epoch=6, batch_size=16,
                      val_steps=1, echo=5, echo_buffer=64, lr=1e-3, epochs=2, nll_beta=0.5)
    nets, optimisers, _ = init_worker(cfg, torch.device("cpu"), rank=0)
    runner = EpochRunner(cfg, torch.device("cpu"), 0, nets, optimisers)
    val_before = runner.validate()["val/loss"]
    runner.train_epoch()
    adam = optimisers["estimator"]
    steps = {int(s["step"]) for s in adam.state.values()}
    assert steps == {cfg.steps_per_epoch * cfg.echo}  # 30 optimiser steps from 6 fresh batches
    assert runner.buffer.size == 64  # 96 fresh samples through a 64-sample buffer
    assert runner.buffer.features.shape[1] == O * nets["estimator"].config.components
    for _ in range(2):
        runner.train_epoch()
    # validated on fresh spectra, no buffer. Three epochs at lr 1e-3 bring it down by 3.6-5.6 for
    # seeds 0-5; longer, or at 3e-3, the 64-sample buffer is memorised and the fresh NLL spikes
    assert runner.validate()["val/loss"] < val_before - 1.0


def test_echo_flags_reach_the_config():
    from survey_estimator.commands.train import add_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = config_from_args(p.parse_args(["--grid", "g", "--model", "pca", "--no-dae", "--echo", "8",
                                         "--echo-buffer", "4096"]))
    assert (cfg.echo, cfg.echo_buffer) == (8, 4096)
    assert config_from_args(p.parse_args(["--grid", "g"])).echo == 1
    assert config_from_args(p.parse_args(["--grid", "g", "--nll-beta", "0.5"])).nll_beta == 0.5
    with pytest.raises(ValueError, match="nll_beta"):
        TrainConfig(grid="g", nll_beta=1.5)

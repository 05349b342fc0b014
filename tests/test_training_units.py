"""Training pieces without Ray: config, schedule, checkpoints, one worker's epoch on the tiny grid."""
from __future__ import annotations

import math

import pytest
import torch

from survey_estimator.cli import build_parser
from survey_estimator.commands.train import config_from_args
from survey_estimator.training.checkpoint import TrainState, load_checkpoint, read_state, save_checkpoint
from survey_estimator.training.components import build_networks, build_optimisers
from survey_estimator.training.config import TrainConfig
from survey_estimator.training.loop import EpochRunner, progress_line
from survey_estimator.training.schedule import lr_factor, set_epoch_lr


def test_config_defaults_are_the_seeds_and_bad_values_refused():
    c = TrainConfig(grid="g")
    assert (c.lr, c.dae_lr, c.lr_decay_epochs, c.lr_decay_factor) == (1e-4, 3e-4, 50, 0.1)
    assert c.head == "diagonal" and c.run_name.startswith("estimator-resnet-")
    assert TrainConfig(grid="g", head="diag").head == "diagonal"
    assert TrainConfig.from_dict(c.to_dict()) == c
    for bad in ({"task": "gan"}, {"model": "vit"}, {"head": "tri"}, {"snr_min": 50, "snr_max": 10},
                {"epochs": 0}, {"run_name": "a b/c"}):
        with pytest.raises(ValueError):
            TrainConfig(grid="g", **bad)


def test_cli_flags_reach_the_config():
    args = build_parser("train").parse_args([
        "--grid", "s3://b/grid", "--model", "attention", "--head", "full", "--dae", "--epochs", "7",
        "--steps-per-epoch", "3", "--batch-size", "5", "--snr-min", "15", "--snr-max", "150", "--lr", "2e-4",
        "--num-workers", "3", "--use-gpu", "false", "--storage", "s3://b/runs", "--run-name", "r1",
        "--register-name", "m", "--alias", "", "--preset", "tiny", "--seed", "4", "--lr-decay-epochs", "2",
        "--model-config", '{"dropout": 0.3}', "--eval-snr", "10", "50",
    ])
    c = config_from_args(args)
    assert (c.model, c.head, c.task, c.epochs, c.steps_per_epoch, c.batch_size) == ("attention", "full", "both", 7, 3, 5)
    assert (c.snr_min, c.snr_max, c.lr, c.num_workers, c.use_gpu) == (15, 150, 2e-4, 3, False)
    assert (c.storage, c.run_name, c.register_name, c.alias, c.preset, c.seed) == ("s3://b/runs", "r1", "m", "", "tiny", 4)
    assert c.model_overrides == {"dropout": 0.3} and c.eval_snr == (10.0, 50.0) and c.lr_decay_epochs == 2
    assert config_from_args(build_parser("train").parse_args(["--grid", "g", "--use-gpu", "auto"])).use_gpu is None


def test_lr_schedule_last_n_epochs():
    assert [lr_factor(e, 200, 50, 0.1) for e in (0, 149, 150, 199)] == [1, 1, 0.1, 0.1]
    assert [lr_factor(e, 4, 50, 0.1) for e in range(4)] == [1, 1, 0.1, 0.1]  # never more than the second half
    assert lr_factor(199, 200, 0, 0.1) == 1 and lr_factor(0, 1, 50, 0.1) == 1  # a 1-epoch run is not decayed
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert set_epoch_lr(opt, 1e-4, 160, 200, 50, 0.1) == pytest.approx(1e-5)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)


def test_checkpoint_round_trip_restores_weights_and_optimiser(tmp_path):
    cfg = TrainConfig(grid="g", task="both", preset="tiny")
    nets = build_networks(cfg)
    assert set(nets) == {"estimator", "dae"}
    opts = build_optimisers(cfg, nets)
    assert isinstance(opts["estimator"], torch.optim.Adam) and isinstance(opts["dae"], torch.optim.AdamW)
    x = torch.randn(2, 2, 8, 4096)
    loss = nets["estimator"](x).mean.sum() + nets["dae"](x).sum()
    loss.backward()
    for o in opts.values():
        o.step()
    state = TrainState(epoch=3, config=cfg.to_dict(), history=[{"a": 1.0}], starts=[0, 2])
    save_checkpoint(tmp_path / "ck", state, nets, opts)

    fresh = build_networks(cfg)
    fresh_opts = build_optimisers(cfg, fresh)
    got = load_checkpoint(tmp_path / "ck", fresh, fresh_opts)
    assert (got.epoch, got.starts, got.history) == (3, [0, 2], [{"a": 1.0}])
    for k in nets:
        for (n1, p1), (n2, p2) in zip(nets[k].state_dict().items(), fresh[k].state_dict().items()):
            assert n1 == n2 and torch.equal(p1, p2)
    assert fresh_opts["estimator"].state_dict()["state"][0]["step"] == 1
    assert read_state(tmp_path / "ck").epoch == 3
    with pytest.raises(KeyError):
        load_checkpoint(tmp_path / "ck", {"other": fresh["dae"]})


def test_one_worker_epoch_on_the_tiny_grid(tiny_grid):
    """Both networks step on sampler batches; validation repeats exactly (same spectra every epoch)."""
    cfg = TrainConfig(grid=tiny_grid, task="both", preset="tiny", steps_per_epoch=2, val_steps=1, batch_size=2)
    torch.manual_seed(0)
    nets = build_networks(cfg)
    opts = build_optimisers(cfg, nets)
    runner = EpochRunner(cfg, torch.device("cpu"), 0, nets, opts)
    before = {k: v.clone() for k, v in nets["estimator"].state_dict().items()}
    m = runner.train_epoch()
    assert set(m) >= {"train/loss", "train/dae_mse", "train/mae_teff", "train/mae_vsini"}
    assert all(math.isfinite(v) for v in m.values())
    changed = [k for k, v in nets["estimator"].state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert changed, "the estimator's weights did not move"
    v1, v2 = runner.validate(), runner.validate()
    assert v1 == v2 and "val/mae_teff" in v1 and 0 <= v1["val/mae_teff"] < 7000
    line = progress_line(0, 3, {**m, **v1, "lr": 1e-4, "samples_per_s_per_worker": 3.0, "epoch_s": 1.0})
    assert line.startswith("epoch 1/3") and "val MAE teff" in line


@pytest.mark.parametrize("amp", [True, False])
def test_cpu_steps_use_bf16_autocast_only_where_native_and_give_the_float32_loss(tiny_grid, amp):
    """Where oneDNN has bf16 kernels (this VM's AVX512-BF16) the estimator runs under bf16 autocast:
    its NLL on the same batch and weights is within bf16 rounding of the float32 one."""
    from survey_estimator.training.loop import bf16_autocast_helps

    cfg = TrainConfig(grid=tiny_grid, task="estimator", model="attention", preset="tiny", batch_size=4, amp=amp)
    torch.manual_seed(0)
    nets = build_networks(cfg)
    runner = EpochRunner(cfg, torch.device("cpu"), 0, nets, build_optimisers(cfg, nets))
    assert runner.amp == (amp and bf16_autocast_helps(torch.device("cpu")))
    batch = runner.sampler.sample(4, "train")
    nets["estimator"].eval()
    with torch.no_grad():
        loss = runner._step(batch.x, batch.clean, batch.labels, train=False)["nll"]
        runner.amp = False
        reference = runner._step(batch.x, batch.clean, batch.labels, train=False)["nll"]
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert float(loss) == pytest.approx(float(reference), rel=0.05)
    if not amp:
        assert float(loss) == float(reference)


def test_a_time_limit_ends_the_run_with_a_finished_reported_epoch(tiny_grid):
    from survey_estimator.training.loop import init_worker, run_epochs

    cfg = TrainConfig(grid=tiny_grid, task="estimator", preset="tiny", epochs=5, steps_per_epoch=1, val_steps=1,
                      batch_size=2, max_minutes=1e-6)
    nets, optimisers, state = init_worker(cfg, torch.device("cpu"), 0)
    reported = []
    run_epochs(cfg, torch.device("cpu"), 0, nets, optimisers, state, lambda m, s: reported.append(s.epoch))
    assert reported == [0] and state.epoch == 0 and len(state.history) == 1
    cfg.max_minutes = 0.0
    run_epochs(cfg, torch.device("cpu"), 0, nets, optimisers, state, lambda m, s: reported.append(s.epoch))
    assert reported == [0, 1, 2, 3, 4]


def test_dae_from_a_checkpoint_goes_in_front_of_an_estimator(tmp_path):
    from survey_estimator.models import build_model
    from survey_estimator.models.bundle import ModelBundle
    from survey_estimator.training.pipeline import dae_from_checkpoint

    cfg = TrainConfig(grid="g", task="dae", preset="tiny", dae_overrides={"widths": [4, 6]})
    torch.manual_seed(0)  # a 4-6 channel DAE can start with every ReLU dead (the identity) for some RNG states
    nets = build_networks(cfg)
    with torch.no_grad():
        nets["dae"].out.weight.normal_(0, 0.3)
    save_checkpoint(tmp_path / "dae", TrainState(epoch=0, config=cfg.to_dict()), nets, build_optimisers(cfg, nets))
    dae = dae_from_checkpoint(tmp_path / "dae")
    assert not dae.training and dae.config.widths == (4, 6)
    for k, v in nets["dae"].state_dict().items():
        assert torch.equal(dae.state_dict()[k], v), k

    torch.manual_seed(0)
    plain = ModelBundle.create(build_model("resnet", preset="tiny"), name="est", preprocessing_version="p", grid_id="g",
                               calibration=[2, 1, 1, 1])
    both = plain.with_dae(dae)
    assert plain.dae is None and plain.manifest.dae is None and both.manifest.dae["architecture"] == "dae"
    loaded = ModelBundle.load(both.save(tmp_path / "both"), expect_preprocessing="p", device="cpu")
    assert loaded.manifest.calibration == plain.manifest.calibration
    x = torch.randn(2, 2, 8, 4096) * 0.05
    x[:, 1] = 1.0
    assert (loaded.predict(x, use_dae=True).mean != loaded.predict(x, use_dae=False).mean).any()
    assert (loaded.predict(x, use_dae=False).mean == plain.predict(x).mean).all()

    est_cfg = TrainConfig(grid="g", task="estimator", preset="tiny")
    est_nets = build_networks(est_cfg)
    save_checkpoint(tmp_path / "est", TrainState(epoch=0, config=est_cfg.to_dict()), est_nets, {})
    with pytest.raises(KeyError, match="no DAE"):
        dae_from_checkpoint(tmp_path / "est")

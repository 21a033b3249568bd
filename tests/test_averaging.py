"""Weight averaging (--ema-decay): the bias-corrected EMA, and a run that validates, selects and saves it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from hybrid import fit, train
from hybrid.averaging import WeightAverage
from hybrid.config import TrainConfig


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_the_average_is_the_bias_corrected_ema_of_the_iterates():
    net, decay = _net(), 0.8
    average = WeightAverage(net, decay)
    iterates = []
    for step in range(4):
        with torch.no_grad():
            net[0].weight.add_(torch.randn(2, 3))
        iterates.append(net[0].weight.detach().clone())
        average.update(net)
        if step == 0:  # bias correction: the first average is the first iterate, not a shrunk copy of it
            assert torch.allclose(average.network[0].weight, iterates[0])
    raw = sum((1 - decay) * decay ** (len(iterates) - 1 - k) * w for k, w in enumerate(iterates))
    expected = raw / (1 - decay ** len(iterates))
    assert torch.allclose(average.network[0].weight, expected, atol=1e-6)
    assert average.steps == 4


def test_the_average_takes_the_buffers_and_is_never_trained():
    net = _net()
    average = WeightAverage(net, 0.99)
    net.train()
    net(torch.randn(8, 3))  # moves the BatchNorm running statistics
    average.update(net)
    assert torch.equal(average.network[1].running_mean, net[1].running_mean)
    assert not any(p.requires_grad for p in average.network.parameters())
    assert all(p.requires_grad for p in net.parameters())


def test_a_saved_average_loads_only_with_its_own_decay():
    net = _net()
    average = WeightAverage(net, 0.9)
    average.update(net)
    again = WeightAverage(net, 0.9)
    again.load_state_dict(average.state_dict())
    assert again.steps == 1
    with pytest.raises(ValueError, match="decay 0.9, this run 0.5"):
        WeightAverage(net, 0.5).load_state_dict(average.state_dict())


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_a_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        WeightAverage(_net(), decay)


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_the_config_refuses_a_decay_that_cannot_average(decay):
    with pytest.raises(ValueError, match="--ema-decay"):
        TrainConfig(ema_decay=decay)


def test_resuming_with_a_different_averaging_is_refused(tmp_path: Path):
    path = tmp_path / "last.pt"
    torch.save({"epoch": 0, "best": {}, "generator": torch.Generator().get_state()}, path)
    with pytest.raises(ValueError, match="without a weight average"):
        fit._resume(None, path, fit.Generators.seeded(0, fit.Distributed()), fit.Distributed(), WeightAverage(_net(), 0.9))


@pytest.mark.slow
def test_a_run_with_averaging_selects_and_saves_the_average(tmp_path, data_root):
    cfg = TrainConfig(data_root=str(data_root), epochs=2, max_train_samples=96, width_mult=0.1, stem_stride=2,
                      input_size=16, embed_dim=16, batch_size=32, n_bootstrap=0, threads=1, eval_batch_size=128,
                      quantum_head="dressed", feature_map="angle", ema_decay=0.9, figures=False)
    train.train(cfg, tmp_path / "run", progress=False)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    averaged = last["average"]["network"]
    raw = {k.removeprefix("network."): v for k, v in last["algorithm"].items() if k.startswith("network.")}
    assert averaged.keys() == raw.keys() == best["model"].keys()
    assert last["average"]["steps"] == cfg.epochs * math.ceil(96 / cfg.batch_size)
    assert not torch.equal(averaged["quantum.weight"], raw["quantum.weight"])  # the average, not the last iterate
    if best["epoch"] == cfg.epochs:  # the selected epoch's average is what best.pt holds (BN re-estimated on it)
        assert all(torch.equal(best["model"][k], averaged[k]) for k in averaged)
    else:  # an earlier average was selected: it differs from the last one
        assert not torch.equal(best["model"]["quantum.weight"], averaged["quantum.weight"])

"""`--init-from RUN`: a run that starts from another run's selected network (e.g. noise-aware fine-tuning)."""

from __future__ import annotations

import json

import pytest
import torch

from hybrid.checkpoints import load_checkpoint
from hybrid.config import TrainConfig
from hybrid.data import DataError
from hybrid.model import HybridNet
from hybrid.rundir import BEST_KEYS, CHECKPOINT, initialise_from


def _network(run, **changes):
    cfg = TrainConfig.load(run / "config.json")
    return HybridNet(TrainConfig(**(cfg.to_dict() | changes)).model_config(), 1, 2)


def test_the_network_starts_as_the_runs_selected_one_with_the_seed_in_the_path(tiny_run, tmp_path):
    (tmp_path / "seed3").symlink_to(tiny_run)
    network = _network(tiny_run, seed=3)
    assert initialise_from(network, str(tmp_path / "seed{seed}"), 3, 1, 2) == tmp_path / "seed3"
    saved = load_checkpoint(tiny_run / CHECKPOINT, "checkpoint", BEST_KEYS)["model"]
    for name, value in network.state_dict().items():
        torch.testing.assert_close(value, saved[name])


def test_a_missing_or_different_run_is_refused_with_the_reason(tiny_run, tmp_path):
    with pytest.raises(DataError, match="is missing; is it a finished run directory"):
        initialise_from(_network(tiny_run), str(tmp_path), 0, 1, 2)
    with pytest.raises(ValueError, match="not this run's architecture"):
        initialise_from(_network(tiny_run, n_qubits=3), str(tiny_run), 0, 1, 2)
    with pytest.raises(ValueError, match="takes 1 channels and 2 classes, this run's 3 and 2"):
        initialise_from(_network(tiny_run), str(tiny_run), 0, 3, 2)


def test_a_run_fine_tunes_from_another_and_records_where_it_started(tiny_run, tmp_path, data_root, caplog):
    from hybrid import train

    caplog.set_level("INFO", logger="hybrid.train")
    out = tmp_path / "tuned"
    assert train.main(["--epochs", "1", "--max-train-samples", "64", "--width-mult", "0.35", "--stem-stride", "2",
                       "--init-from", str(tiny_run), "--q-train-shots", "64", "--lr", "1e-4", "--n-bootstrap", "0",
                       "--eval-max-samples", "16", "--batch-size", "32", "--no-figures", "--quiet",
                       "--data-root", str(data_root), "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["init_from"] == str(tiny_run)
    assert f"network initialised from {tiny_run}" in caplog.text

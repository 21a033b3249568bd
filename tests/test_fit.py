"""The training loop: an interrupted run resumed from last.pt ends exactly where the uninterrupted one does."""

from __future__ import annotations

import pytest
import torch

from hybrid import train
from hybrid.config import TrainConfig

pytestmark = pytest.mark.slow  # trains


def test_resume_continues_exactly_as_the_uninterrupted_run(tmp_path, data_root):
    cfg = TrainConfig(data_root=str(data_root), epochs=2, max_train_samples=96, width_mult=0.1, stem_stride=2,
                      input_size=16, embed_dim=16, batch_size=32, n_bootstrap=0, threads=1, eval_batch_size=128)
    straight = train.train(cfg, tmp_path / "straight", progress=False)

    def crash(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.train(cfg, tmp_path / "resumed", progress=False, on_epoch_end=crash)
    torch.manual_seed(123)  # whatever the process did in between must not matter
    resumed = train.train(cfg, tmp_path / "resumed", progress=False, resume=True)
    for name in ("last.pt", "best.pt"):
        a = torch.load(tmp_path / "straight" / name, weights_only=True)
        b = torch.load(tmp_path / "resumed" / name, weights_only=True)
        states = ("algorithm", "algorithm") if name == "last.pt" else ("model", "model")
        for key, value in a[states[0]].items():
            assert torch.equal(b[states[1]][key], value), (name, key)
    assert resumed["domains"] == straight["domains"]
    lines = [(tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("straight", "resumed")]
    strip = [[line.rsplit(', "seconds"', 1)[0] for line in run] for run in lines]
    assert strip[0] == strip[1]

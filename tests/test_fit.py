"""The training loop: an interrupted run resumed from last.pt ends exactly where the uninterrupted one does."""

from __future__ import annotations

import pytest
import torch

from hybrid import fit, train
from hybrid.config import TrainConfig

pytestmark = pytest.mark.slow  # trains


TINY = dict(epochs=2, max_train_samples=96, width_mult=0.1, stem_stride=2, input_size=16, embed_dim=16,
            batch_size=32, n_bootstrap=0, threads=1, eval_batch_size=128, figures=False)


@pytest.mark.parametrize("selection,kept", [("auc", 1), ("last", 3)])
def test_selection_keeps_the_best_auc_epoch_or_the_last(tmp_path, data_root, monkeypatch, selection, kept):
    falling = iter([(0.9, 0.3), (0.8, 0.2), (0.7, 0.1)])  # validation AUC falls while its loss falls
    monkeypatch.setattr(fit, "validation_scores", lambda *args: next(falling))
    cfg = TrainConfig(data_root=str(data_root), **TINY | dict(epochs=3), selection=selection, eval_max_samples=8)
    train.train(cfg, tmp_path / "run", progress=False)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert best["epoch"] == kept and last["best"]["epoch"] == kept
    final = {key[len("network."):]: value for key, value in last["algorithm"].items() if key.startswith("network.")}
    same = all(torch.equal(best["model"][key], value) for key, value in final.items())
    assert same == (selection == "last")  # the saved network is the end of training only when "last" asks for it


@pytest.mark.parametrize("ema_decay", [0.0, 0.9], ids=["last-iterate", "weight-average"])
def test_resume_continues_exactly_as_the_uninterrupted_run(tmp_path, data_root, ema_decay):
    cfg = TrainConfig(data_root=str(data_root), **TINY, ema_decay=ema_decay)
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
    if ema_decay:  # the weight average goes on from where it was, over the same steps
        a, b = (torch.load(tmp_path / d / "last.pt", weights_only=True)["average"] for d in ("straight", "resumed"))
        assert a["steps"] == b["steps"] == 2 * 3  # 2 epochs of 96 images in batches of 32
        for key, value in a["network"].items():
            assert torch.equal(b["network"][key], value), key
    assert resumed["domains"] == straight["domains"]
    lines = [(tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("straight", "resumed")]
    strip = [[line.rsplit(', "seconds"', 1)[0] for line in run] for run in lines]
    assert strip[0] == strip[1]


def test_the_aux_distillation_and_shot_penalty_losses_are_recorded_per_epoch_only_when_they_train(tmp_path, data_root):
    import json

    marginal = dict(quantum_head="dressed", n_qubits=3, q_observables="z+zz", q_train_shots=64, q_shot_noise="marginal")
    for name, aux, distill, noise in (("plain", 0.0, 0.0, {}), ("aux", 0.5, 0.0, {}), ("distill", 0.5, 2.0, {}),
                                      ("marginal", 0.5, 0.0, marginal)):
        cfg = TrainConfig(data_root=str(data_root), **TINY | dict(epochs=1) | noise, aux_weight=aux, head_distill=distill,
                          eval_max_samples=8)
        train.train(cfg, tmp_path / name, progress=False)
        record = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[-1])
        assert ("aux_loss" in record) == bool(aux) and ("distill_loss" in record) == bool(distill)
        assert ("shot_penalty" in record) == bool(noise) and record.get("shot_penalty", 1.0) > 0
        if aux:  # the epoch's loss: the head's (and its shots' expected extra), the domain's, the aux's, the distillation's
            assert record["aux_loss"] > 0 and record.get("distill_loss", 1.0) > 0
            assert record["train_loss"] == pytest.approx(record["cls_loss"] + record.get("shot_penalty", 0.0)
                                                         + record["domain_loss"] + aux * record["aux_loss"]
                                                         + distill * record.get("distill_loss", 0.0))

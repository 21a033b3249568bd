"""Edges of training and evaluation a researcher meets: a diverged network, an interrupted run, another TTA's
threshold, center names with commas, classes a held-out center lacks, a full disk."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from hybrid import evaluate, train
from hybrid.data import DataError, DatasetBundle, Split, select_classes
from hybrid.metrics import domain_metrics

TINY = ["--input-size", "16", "--width-mult", "0.35", "--stem-stride", "2", "--epochs", "1", "--batch-size", "32",
        "--n-bootstrap", "0", "--threads", "1", "--quiet"]


@pytest.mark.parametrize("n_classes", [2, 3])
def test_scores_of_non_finite_probabilities_are_nan_not_invented(n_classes):
    y = np.arange(8) % n_classes
    probs = np.full((8, n_classes), 1.0 / n_classes)
    probs[2] = np.nan
    m = domain_metrics(y, probs, n_bootstrap=50)
    scores = ("auc", "auc_ci_low", "auc_ci_high", "sensitivity", "specificity", "accuracy", "balanced_accuracy")
    assert all(math.isnan(m[k]) for k in scores) and m["n"] == 8
    assert set(m) == set(domain_metrics(y, np.full((8, n_classes), 1.0 / n_classes), n_bootstrap=50))


@pytest.mark.slow
def test_a_diverging_run_stops_with_a_sentence_and_keeps_no_non_finite_epoch(tmp_path, data_root, capsys):
    out = tmp_path / "run"
    code = train.main(TINY + ["--epochs", "2", "--max-train-samples", "128", "--lr", "1e12", "--no-quantum",
                              "--data-root", str(data_root), "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and "training diverged in epoch" in err and "Lower --lr" in err and "Traceback" not in err
    for line in (out / "metrics.jsonl").read_text().splitlines():
        assert math.isfinite(json.loads(line)["val_loss"])  # nothing of the diverged epoch is recorded
    if (out / "best.pt").is_file():
        state = torch.load(out / "best.pt", weights_only=True)["model"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.slow
def test_another_tta_gets_its_own_threshold_as_training_chose_one_for_no_tta(tiny_run, capsys):
    report = json.loads((tiny_run / "report.json").read_text())
    assert report["tta"] != "none" and report["domains_no_tta"]
    assert evaluate.main(["--run", str(tiny_run), "--tta", "none", "--name", "no_tta_again"]) == 0
    result = json.loads((tiny_run / "eval_no_tta_again.json").read_text())
    for name, metrics in report["domains_no_tta"].items():
        again = result["domains"][name]
        assert again["threshold"] == pytest.approx(metrics["threshold"])
        assert (again["sensitivity"], again["specificity"]) == pytest.approx((metrics["sensitivity"],
                                                                              metrics["specificity"]))


@pytest.mark.slow
def test_a_run_stopped_before_its_final_evaluation_is_refused_before_any_prediction(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    best = torch.load(run / "best.pt", weights_only=False)
    torch.save(best | {"threshold": None}, run / "best.pt")  # what fit writes before the final evaluation
    assert evaluate.main(["--run", str(run), "--name", "early"]) == 2
    err = capsys.readouterr().err
    assert "no decision threshold yet" in err and "--resume" in err and "Traceback" not in err
    assert not (run / "eval_early.json").exists()


@pytest.mark.slow
def test_the_runs_own_file_with_commas_in_center_names_defaults_to_its_held_out_center(tmp_path):
    rng = np.random.default_rng(0)
    n = 180
    labels = rng.integers(0, 2, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 16, 16, 3), dtype=np.uint8)
    images[labels == 1, 4:12, 4:12] += 120
    names = np.array(["Vienna (ViDIR, AT)", "Vienna (modern, AT)", "Queensland (Rosendahl, AU)"])
    np.savez(tmp_path / "clinics.npz", images=images, labels=labels, center_ids=np.arange(n) % 3, center_names=names)
    run = tmp_path / "run"
    assert train.main(["--dataset", str(tmp_path / "clinics.npz"), "--test-centers", "2", *TINY,
                       "--out", str(run)]) == 0
    assert evaluate.main(["--run", str(run), "--data", str(tmp_path / "clinics.npz"), "--name", "own"]) == 0
    result = json.loads((run / "eval_own.json").read_text())
    assert list(result["domains"]) == ["real:Queensland (Rosendahl, AU)"]


def _bundle(test_labels: dict[str, list[int]], val_labels: list[int]) -> DatasetBundle:
    def split(labels):
        return Split(np.zeros((len(labels), 4, 4), dtype=np.uint8), np.array(labels, dtype=np.int64), None)

    return DatasetBundle(name="toy", train=split([0, 1, 2, 0, 1, 2]), val=split(val_labels), test=split([0, 1, 2]),
                         n_classes=3, n_channels=1, class_names=["a", "b", "c"], positive_class=1,
                         test_domains={k: split(v) for k, v in test_labels.items()}, center_names=None)


def test_classes_a_held_out_center_lacks_are_refused_before_training():
    with pytest.raises(DataError, match=r"held-out center\(s\) far hold no image of the classes b,c"):
        select_classes(_bundle({"near": [1, 2], "far": [0, 0]}, [0, 1, 2]), "b,c")
    kept = select_classes(_bundle({"near": [1, 2], "far": [0, 2]}, [0, 1, 2]), "b,c")
    assert list(kept.test_domains["far"].labels) == [1]


def test_a_validation_split_left_empty_by_the_classes_is_one_sentence():
    bundle = select_classes(_bundle({"near": [1, 2]}, [0, 0, 0]), "b,c")
    with pytest.raises(DataError, match="the validation split holds no image"):
        train.check_splits(bundle)


def test_a_line_the_disk_takes_only_part_of_is_an_error(tmp_path, monkeypatch):
    import os

    from hybrid import rundir

    monkeypatch.setattr(os, "write", lambda fd, data: len(data) - 3)
    with pytest.raises(OSError, match="only part of a line was written"):
        rundir.append_line(tmp_path / "results.jsonl", {"epoch": 1})


def test_a_run_is_marked_finished_only_after_its_training_is_logged_and_logged_once(tmp_path, monkeypatch):
    """A study skips a run once its report.json exists, so a kill just after it must not leave the training
    unlogged; a run killed before it resumes, reports again and keeps one training line (and every other line)."""
    from hybrid import rundir

    rundir.append_result(tmp_path, {"kind": "eval", "label": "exact"})
    report = {k: k for k in ("run", "config", "threshold", "tta", "domains", "unseen", "summary", "domains_no_tta",
                             "summary_no_tta")}
    monkeypatch.setattr("hybrid.reporting.write_markdown_report", lambda report, path: path.write_text("md"))

    def killed_at_the_marker(data, path):
        raise KeyboardInterrupt  # the kill lands where report.json would be written

    monkeypatch.setattr(train, "write_json", killed_at_the_marker)
    with pytest.raises(KeyboardInterrupt):
        train._write_report(tmp_path, report)
    assert not (tmp_path / "report.json").exists()
    assert [r["kind"] for r in rundir.read_lines(tmp_path / "results.jsonl")] == ["eval", "train"]
    monkeypatch.setattr(train, "write_json", rundir.write_json)
    train._write_report(tmp_path, report | {"summary": "resumed"})
    lines = rundir.read_lines(tmp_path / "results.jsonl")
    assert [(r["kind"], r.get("summary")) for r in lines] == [("eval", None), ("train", "resumed")]
    assert json.loads((tmp_path / "report.json").read_text())["summary"] == "resumed"


def test_ctrl_c_of_a_run_in_its_default_directory_names_that_directory_to_resume(tmp_path, monkeypatch, capsys):
    def one_epoch_then_ctrl_c(cfg, out, **kwargs):
        out.mkdir(parents=True)
        (out / "last.pt").write_bytes(b"an epoch")
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train, "train", one_epoch_then_ctrl_c)
    assert train.main(["--epochs", "3", "--quiet"]) != 0
    err = capsys.readouterr().err
    (run,) = (tmp_path / "runs").iterdir()
    assert f"saved in {run.relative_to(tmp_path) / 'last.pt'}" in err and "nothing is saved" not in err
    assert err.rstrip().endswith(f"--epochs 3 --quiet --out {run.relative_to(tmp_path)} --resume")


def test_an_error_while_a_domain_statistics_are_taken_restores_the_model(monkeypatch):
    from hybrid.config import ModelConfig
    from hybrid.inference import predict_probs
    from hybrid.model import HybridNet
    from hybrid.tta import TTA_METHODS

    model = HybridNet(ModelConfig(width_mult=0.35, stem_stride=2, embed_dim=16, quantum=False), 1, 2).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def half_prepared(self, x, forward=None):
        for bn in (m for m in self.model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.add_(1.0)  # statistics half re-estimated, then the process is interrupted
        raise KeyboardInterrupt

    monkeypatch.setattr(TTA_METHODS["adabn"], "prepare", half_prepared)
    with pytest.raises(KeyboardInterrupt):
        predict_probs(model, torch.zeros(4, 1, 16, 16), "adabn", 2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_coral_penalty_reaches_metrics_jsonl_as_the_other_optional_losses_do():
    from types import SimpleNamespace

    from hybrid.fit import _record

    record = _record(0, {"loss": 1.0, "coral_penalty": 0.25}, SimpleNamespace(learning_rate=lambda: 0.1), 0.9, 0.3,
                     1.0)
    assert record["coral_penalty"] == 0.25
    assert "coral_penalty" not in _record(0, {"loss": 1.0}, SimpleNamespace(learning_rate=lambda: 0.1), 0.9, 0.3, 1.0)


@pytest.mark.slow
def test_the_backend_is_closed_when_the_runs_model_cannot_be_built(tiny_run, monkeypatch):
    """On ibm_runtime get_backend opens a batch on the service; a model that fails to build must not leave it open."""
    from types import SimpleNamespace

    import backends
    import hybrid.model
    from hybrid.rundir import load_run

    closed = []
    monkeypatch.setattr(backends, "get_backend", lambda name, **options: SimpleNamespace(
        qpu_rate=None, layer_kwargs=lambda: {}, close=lambda: closed.append(name), exact=True))

    def broken(*args, **kwargs):
        raise ValueError("the checkpoint needs 5 qubits and the device has 4")

    monkeypatch.setattr(hybrid.model, "HybridNet", broken)
    with pytest.raises(ValueError, match="5 qubits"):
        load_run(tiny_run, "ibm_runtime")
    assert closed == ["ibm_runtime"]


def test_a_shot_sweep_scores_every_compared_run_on_the_first_runs_images(tmp_path):
    from hybrid.studies import shot_sweep

    asked = []

    def bench(run, specs, seed=None, **settings):
        asked.append(seed)
        used = {"exact_trained": 0, "noise_aware": 1}[run.name] if seed is None else seed  # each run's own seed
        row = {"auc": 0.9, "mae": 0.0, "sensitivity": 0.8, "seconds": 1.0}
        return {"rows": [{"backend": "exact"} | row] + [{"backend": s} | row for s in specs],
                "domains": ["tgt_blur"], "samples_per_domain": 10, "tta": "adabn", "seed": used}

    runs = [tmp_path / "exact_trained", tmp_path / "noise_aware"]
    result = shot_sweep.run_sweep(runs, ["aer"], [64], bench=bench)
    assert asked == [None, 0] and [r["seed"] for r in result["runs"]] == [0, 0]
    assert shot_sweep.run_sweep(runs, ["aer"], [64], bench=bench, seed=5)["runs"][1]["seed"] == 5


@pytest.mark.slow
def test_starting_from_another_seeds_network_is_said(tiny_run, caplog):
    from hybrid.rundir import initialise_from, load_run

    loaded = load_run(tiny_run)
    loaded.backend.close()
    shape = (loaded.checkpoint["in_channels"], loaded.checkpoint["n_classes"])
    initialise_from(loaded.model, str(tiny_run), 0, *shape)
    assert "was trained with seed" not in caplog.text
    initialise_from(loaded.model, str(tiny_run), 1, *shape)
    assert "was trained with seed 0, this run has seed 1" in caplog.text and "{seed}" in caplog.text


def _png_folder(root, mode: str, classes: tuple[str, ...]) -> None:
    from PIL import Image

    for center in ("a", "b"):
        for k, name in enumerate(classes):
            folder = root / center / name
            folder.mkdir(parents=True)
            for i in range(2):
                grey = np.full((8, 8), 40 * k + 10 * i, dtype=np.uint8)
                image = Image.fromarray(grey).convert(mode)
                if mode == "LA":
                    image.putalpha(Image.fromarray(np.full((8, 8), 30 * i + 5, dtype=np.uint8)))
                image.save(folder / f"{i}.png")


def test_grey_images_with_alpha_load_as_grey(tmp_path):
    from hybrid.images import load_center_folder

    _png_folder(tmp_path, "LA", ("0", "1"))
    splits = load_center_folder(tmp_path)
    assert {name: s.images.shape for name, s in splits.items()} == {"a": (4, 8, 8, 1), "b": (4, 8, 8, 1)}
    assert sorted(np.unique(splits["a"].images)) == [0, 10, 40, 50]  # the grey, not the alpha


def test_a_class_named_by_a_digit_is_that_class_not_that_id(tmp_path):
    from hybrid.images import load_center_folder

    _png_folder(tmp_path, "L", ("1", "0"))
    splits = load_center_folder(tmp_path, class_names=["1", "0"])
    grey_of = {int(label): int(image.mean()) for image, label in zip(splits["a"].images, splits["a"].labels)}
    assert grey_of[0] in (0, 10) and grey_of[1] in (40, 50)  # folder "1" (grey 0-10) is class 0, named "1"


def test_statistics_with_nothing_to_estimate_from_are_kept():
    from hybrid.batchnorm import estimate_batchnorm_statistics

    bn = torch.nn.BatchNorm1d(3)
    bn.running_mean.fill_(2.0)
    bn.running_var.fill_(5.0)
    bn.train()
    estimate_batchnorm_statistics([bn], bn, torch.randn(1, 3), batch_size=4)  # one sample: no chunk can run
    assert bn.running_mean.tolist() == [2.0] * 3 and bn.running_var.tolist() == [5.0] * 3 and bn.momentum == 0.1


def test_distributed_training_tolerates_an_encoder_that_gets_no_gradient(monkeypatch):
    """A detached head with no encoder loss (--head-grad-scale 0 --aux-weight 0 on a trained network) leaves the
    encoder out of the loss; DDP without find_unused_parameters fails at the second step."""
    import socket

    import torch.distributed as dist

    from hybrid.distributed import Distributed

    class Detached(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)

        def forward(self, x, y):
            return torch.nn.functional.cross_entropy(self.head(self.encoder(x).detach()), y)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        runner = Distributed(rank=0, world_size=2).wrap(Detached(), torch.device("cpu"), find_unused=True)
        for _ in range(2):
            runner(torch.randn(8, 4), torch.randint(0, 2, (8,))).backward()
    finally:
        dist.destroy_process_group()


def test_evaluating_a_run_still_in_its_first_epoch_says_so(tmp_path, capsys):
    """config.json and metrics.jsonl are written before the first best.pt: 'is it a run directory?' misled."""
    from hybrid.config import TrainConfig

    TrainConfig().save(tmp_path / "config.json")
    (tmp_path / "metrics.jsonl").write_text("")
    assert evaluate.main(["--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "has not saved a model yet" in err and f"--resume --out {tmp_path}" in err
    (tmp_path / "metrics.jsonl").unlink()  # not a training run's folder at all
    assert evaluate.main(["--run", str(tmp_path)]) == 2
    assert "a run directory written by hybrid.train?" in capsys.readouterr().err

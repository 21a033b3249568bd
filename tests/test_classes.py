"""`--classes mel,nv`: train, evaluate and analyse a class subset of a multi-center file (#13)."""

from __future__ import annotations

import json

import numpy as np
import torch

from hybrid import evaluate, subgroups, train

DX = np.array(["mel", "bcc", "nv", "bkl"])


def test_a_class_subset_trains_evaluates_and_analyses_on_the_same_images(tmp_path):
    rng = np.random.default_rng(0)
    n = 360
    labels = np.arange(n) % 4
    centers = (np.arange(n) // 4) % 3
    images = rng.integers(0, 60, (n, 16, 16, 3), dtype=np.uint8)
    images[labels == 0, 4:12, 4:12] += 120  # melanoma is learnable
    np.savez(tmp_path / "mc.npz", images=images, labels=labels, center_ids=centers,
             center_names=np.array(["a", "b", "c"]), label_names=DX)
    run = tmp_path / "run"
    assert train.main(["--dataset", str(tmp_path / "mc.npz"), "--classes", "mel,nv", "--test-centers", "c",
                       "--input-size", "16", "--width-mult", "0.1", "--stem-stride", "2", "--embed-dim", "16",
                       "--epochs", "1", "--batch-size", "32", "--n-bootstrap", "0", "--threads", "1", "--no-figures",
                       "--quiet", "--out", str(run)]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["data"]["class_names"] == ["mel", "nv"] and report["positive_class"] == 0
    held_out = (centers == 2) & np.isin(labels, [0, 2])
    assert report["domains"]["real:c"]["n"] == held_out.sum()
    assert torch.load(run / "best.pt", weights_only=True)["class_ids"] == [0, 2]
    # an external evaluation of the file scores the same images (labels read in the file's label space)
    assert evaluate.main(["--run", str(run), "--data", str(tmp_path / "mc.npz"), "--tta", "adabn",
                          "--name", "again"]) == 0
    again = json.loads((run / "eval_again.json").read_text())
    assert again["domains"]["real:c"]["n"] == held_out.sum()
    assert again["domains"]["real:c"]["auc"] == report["domains"]["real:c"]["auc"]
    # subgroups line the diagnosis array up with the kept images only
    assert subgroups.main(["--run", str(run), "--threads", "1"]) == 0
    result = json.loads((run / "subgroups_c.json").read_text())
    assert result["n"] == held_out.sum() and len(result["groups"]) == 2  # mel and nv, no other diagnosis

"""Shared fixtures: where the real data lives (CI sets HYBRID_DATA_ROOT to ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs the suite in 2 xdist workers on 2 cores: one torch thread each, inherited by the processes
    # the tests start (two threads per process stall badly when processes share the cores)
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """The Slurm tests first, the other files in their usual order (`make test` passes --no-loadscope-reorder).

    xdist's own order (files with the most tests first) left the Slurm file, the longest one, for last, with
    the other worker idle for two minutes (measured with --durations=0 on 2026-12-07); run first it overlaps
    the many short files instead."""
    items.sort(key=lambda item: item.path.name != "test_slurm.py")  # stable: every file keeps its order


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ.get("HYBRID_DATA_ROOT", REPO_ROOT.parent / "shared" / "data"))
    if not (root / "pneumoniamnist.npz").is_file():
        pytest.fail(
            f"real MedMNIST data not found under {root}; set HYBRID_DATA_ROOT to the folder "
            "holding pneumoniamnist.npz (CI uses ../shared/data)"
        )
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, data_root) -> Path:
    """A one-epoch PneumoniaMNIST run (300 images, width 0.35): for the tools that read a trained run."""
    from hybrid import train

    out = tmp_path_factory.mktemp("tiny_run")
    assert train.main(["--epochs", "1", "--max-train-samples", "300", "--width-mult", "0.35", "--stem-stride", "2",
                       "--n-bootstrap", "0", "--batch-size", "64", "--no-figures", "--quiet",
                       "--data-root", str(data_root), "--out", str(out)]) == 0
    return out


DX = ["mel", "bcc", "nv", "bkl"]  # diagnoses of the synthetic multi-center file; the first two are "malignant"


@pytest.fixture(scope="session")
def multicenter_run(tmp_path_factory):
    """A tiny run on a synthetic 3-center file whose diagnosis refines a malignant target."""
    from hybrid import train

    root = tmp_path_factory.mktemp("mc")
    rng = np.random.default_rng(0)
    n = 240
    labels = rng.integers(0, len(DX), n)
    malignant = (labels < 2).astype(np.uint8)
    images = rng.integers(0, 60, (n, 16, 16, 3), dtype=np.uint8)
    images[malignant == 1, 4:12, 4:12] += 120  # a learnable lesion
    np.savez(root / "mc.npz", images=images, labels=labels, malignant=malignant,
             center_ids=np.arange(n) % 3, center_names=np.array(["a", "b", "c"]), label_names=np.array(DX))
    out = root / "run"
    argv = ["--dataset", str(root / "mc.npz"), "--label-field", "malignant", "--test-centers", "c",
            "--input-size", "16", "--width-mult", "0.35", "--stem-stride", "2", "--epochs", "1",
            "--batch-size", "32", "--n-bootstrap", "20", "--threads", "1", "--no-figures", "--out", str(out), "--quiet"]
    assert train.main(argv) == 0
    return out


# the quick preset scores 624 images per center with 100 bootstraps; the tests need the path it takes, not precise AUCs
QUICK_STUDY_EVALUATION = {"eval_max_samples": 200, "n_bootstrap": 20}


def set_flags(overrides: dict) -> list[str]:
    """`hybrid.experiment --set KEY=VALUE` arguments for each override."""
    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]


QUICK_STUDY_SETS = set_flags(QUICK_STUDY_EVALUATION)


@pytest.fixture(scope="session")
def quick_study(tmp_path_factory, data_root):
    """The quick preset's erm and full plus a variant that fails, one seed, two worker processes.

    Built once per session (tests of the study runner and of the study report read it);
    returns (study directory, run_study's summary).
    """
    from dataclasses import replace

    from hybrid.studies import experiment

    out = tmp_path_factory.mktemp("quick_study")
    study = experiment.build_study("quick", seeds=1, variants=["erm", "full"],
                                   overrides={"data_root": str(data_root)} | QUICK_STUDY_EVALUATION)
    # the broken variant is submitted first; the others must still finish
    study = replace(study, variants={"broken": {"dataset": "nosuchmnist"}} | study.variants)
    return out, experiment.run_study(study, out, workers=2, progress=False)

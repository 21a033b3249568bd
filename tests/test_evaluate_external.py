"""`hybrid.evaluate --data FILE.npz` on a multi-center file the run never saw scores every center in it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hybrid import evaluate



@pytest.fixture(scope="module")
def clinics(tmp_path_factory):
    """Four external centers with the run's label field; each has its own brightness."""
    rng = np.random.default_rng(1)
    n = 160
    centers = np.arange(n) % 4
    malignant = rng.integers(0, 2, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 16, 16, 3), dtype=np.uint8) + (centers * 15)[:, None, None, None].astype(np.uint8)
    images[malignant == 1, 4:12, 4:12] += 120
    path = tmp_path_factory.mktemp("ext") / "clinics.npz"
    np.savez(path, images=images, malignant=malignant, labels=malignant, center_ids=centers,
             center_names=np.array(["north", "south", "east", "west"]))
    return path


def _evaluate(run, data, name, *extra):
    assert evaluate.main(["--run", str(run), "--data", str(data), "--name", name, *extra]) == 0
    return json.loads((run / f"eval_{name}.json").read_text())


@pytest.mark.slow  # uses the trained multi-center fixture
def test_every_center_of_an_external_file_is_its_own_domain(multicenter_run, clinics):
    result = _evaluate(multicenter_run, clinics, "ext_all")
    assert list(result["domains"]) == ["real:north", "real:south", "real:east", "real:west"]
    assert all(m["n"] == 40 for m in result["domains"].values())
    assert result["unseen"] == list(result["domains"]) and result["summary"]["auc"]["n_domains"] == 4
    # each center adapts with its own statistics: scoring one alone gives the same numbers
    alone = _evaluate(multicenter_run, clinics, "ext_east", "--centers", "east")
    assert list(alone["domains"]) == ["real:east"]
    assert alone["domains"]["real:east"]["auc"] == result["domains"]["real:east"]["auc"]


@pytest.mark.slow
def test_centers_option_chooses_some_and_names_the_valid_ones(multicenter_run, clinics, capsys):
    result = _evaluate(multicenter_run, clinics, "ext_two", "--centers", "south,3")
    assert list(result["domains"]) == ["real:south", "real:west"]
    assert evaluate.main(["--run", str(multicenter_run), "--data", str(clinics), "--centers", "mars"]) == 2
    err = capsys.readouterr().err
    assert "mars" in err and "north" in err and "Traceback" not in err
    assert evaluate.main(["--run", str(multicenter_run), "--centers", "south"]) == 2  # not a virtual center set
    err = capsys.readouterr().err
    assert "validation" in err and "add --data " + str(multicenter_run.parent / "mc.npz") in err  # the run's own file


@pytest.mark.slow
def test_the_runs_own_file_defaults_to_its_held_out_centers(multicenter_run, capsys):
    from hybrid.config import TrainConfig

    own = TrainConfig.load(multicenter_run / "config.json").dataset
    result = _evaluate(multicenter_run, own, "own_default")
    assert list(result["domains"]) == ["real:c"]  # trained on a and b, held out c
    asked = _evaluate(multicenter_run, own, "own_a", "--centers", "a,c")
    assert list(asked["domains"]) == ["train:a", "real:c"] and asked["unseen"] == ["real:c"]


@pytest.mark.slow
def test_the_table_counts_only_unseen_centers_and_names_the_file_it_wrote(multicenter_run, capsys):
    from hybrid.config import TrainConfig

    own = TrainConfig.load(multicenter_run / "config.json").dataset
    assert evaluate.main(["--run", str(multicenter_run), "--data", own, "--centers", "a,c", "--name", "own_ac"]) == 0
    out = capsys.readouterr().out
    mean_row = next(line for line in out.splitlines() if line.startswith("| **mean**"))
    assert "1 unseen" in mean_row  # train:a is scored but is no unseen center (it said "2 unseen")
    assert "1 unseen" in (multicenter_run / "eval_own_ac.md").read_text()
    assert f"written: {multicenter_run / 'eval_own_ac.md'}" in out


@pytest.mark.slow
def test_design_validation_centers_leave_the_held_out_clinic_out(multicenter_run):
    """The validation set is for choosing methods; the held-out real center is a reported one (it was scored as
    one of the 'unseen' validation centers, so hybrid.design's worst AUC could be the clinic's)."""
    assert evaluate.main(["--run", str(multicenter_run), "--centers", "validation", "--max-samples", "20",
                          "--name", "val"]) == 0
    result = json.loads((multicenter_run / "eval_val.json").read_text())
    assert result["unseen"] and all(name.startswith("val_") for name in result["unseen"])
    assert not any(name.startswith("real:") for name in result["domains"])


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", b"not an archive\n"], ids=["empty", "truncated",
                                                                                          "not_zip"])
def test_an_unreadable_npz_is_one_sentence(tmp_path, capsys, content):
    import shutil
    from pathlib import Path

    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "fixtures" / "legacy_run", run)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(content)
    before = sorted(p.name for p in run.iterdir())
    assert evaluate.main(["--run", str(run), "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.npz" in err and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written


def test_evaluations_of_other_data_or_centers_never_overwrite_each_other(multicenter_run, tmp_path, caplog):
    import shutil

    from hybrid.config import TrainConfig

    run = shutil.copytree(multicenter_run, tmp_path / "run")
    own = TrainConfig.load(run / "config.json").dataset
    stem = f"eval_{Path(own).stem}"
    assert evaluate.main(["--run", str(run), "--data", own, "--centers", "a"]) == 0
    first = json.loads((run / f"{stem}.json").read_text())
    assert first["inputs"] == {"data": str(Path(own).resolve()), "centers": "a"} and list(first["domains"]) == ["train:a"]
    assert evaluate.main(["--run", str(run), "--data", own, "--centers", "c"]) == 0  # it said the same file before
    assert json.loads((run / f"{stem}.json").read_text()) == first
    (other,) = [p for p in run.glob(f"{stem}_*.json")]
    assert list(json.loads(other.read_text())["domains"]) == ["real:c"] and "holds the evaluation of other" in caplog.text
    assert evaluate.main(["--run", str(run), "--data", own, "--centers", "c"]) == 0  # the same again: the same file
    assert sorted(p.name for p in run.glob(f"{stem}*.json")) == sorted([f"{stem}.json", other.name])


def test_another_dataset_with_more_classes_is_refused_before_scoring(tiny_run, capsys):
    assert evaluate.main(["--run", str(tiny_run), "--dataset", "retinamnist", "--max-samples", "8"]) == 2
    err = capsys.readouterr().err
    assert "--dataset retinamnist has labels [0, 1, 2, 3, 4] but the model was trained on 2 classes" in err


@pytest.mark.slow  # uses the trained multi-center fixture
def test_images_converted_to_the_runs_channels_are_named_in_a_warning(multicenter_run, clinics, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        _evaluate(multicenter_run, clinics, "ext_colour", "--centers", "east")
    assert "channels" not in caplog.text  # a colour run on colour images: nothing to say
    grey = tmp_path / "grey.npz"
    data = dict(np.load(clinics))
    np.savez(grey, **(data | {"images": data["images"].mean(axis=-1).astype(np.uint8)}))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _evaluate(multicenter_run, grey, "ext_grey", "--centers", "east,west")
    assert (f"{grey} (east, west): its grayscale images are repeated on three channels: the run was "
            "trained on colour") in caplog.text

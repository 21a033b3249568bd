"""`python -m hybrid.train --resume` never starts afresh silently and never turns a run into another one."""

from __future__ import annotations

import json

import pytest

from hybrid import train
from hybrid.config import ENVIRONMENT_FIELDS, TrainConfig

TINY = ["--epochs", "1", "--max-train-samples", "96", "--width-mult", "0.1", "--stem-stride", "2", "--input-size", "16",
        "--embed-dim", "16", "--batch-size", "32", "--n-bootstrap", "0", "--eval-max-samples", "32", "--no-figures",
        "--threads", "1", "--quiet"]


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_resume_without_last_checkpoint_is_refused_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main([*TINY, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume:") and "last.pt does not exist" in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.slow
def test_resume_with_other_options_is_refused_and_the_run_is_kept(tmp_path, data_root, capsys):
    out = tmp_path / "run"
    common = [*TINY, "--data-root", str(data_root), "--out", str(out)]
    assert train.main(common) == 0
    before = _files(out)
    assert train.main([*common, "--resume", "--width-mult", "0.35", "--lr", "0.01"]) == 2
    err = capsys.readouterr().err.strip()
    assert "differ from" in err and "width_mult (0.1 saved, 0.35 given)" in err and "lr (" in err
    assert "\n" not in err and _files(out) == before  # config.json, checkpoints and reports untouched
    (out / "config.json").write_text("{not json")
    assert train.main([*common, "--resume"]) == 2
    assert "could not be read" in capsys.readouterr().err
    (out / "config.json").write_bytes(before["config.json"])
    assert not list(out.glob("*.png")) and json.loads(before["report.json"])["figures"] == {}  # --no-figures
    assert "![" not in before["report.md"].decode()
    # where it runs may change, and whether it draws figures (the numbers stay)
    assert train.main([*common, "--resume", "--threads", "2", "--figures"]) == 0
    drawn = json.loads((out / "report.json").read_text())
    assert set(drawn["figures"]) == {"roc", "domain_auc", "training", "centers"}
    assert all((out / name).is_file() for name in drawn["figures"].values()) and "![" in (out / "report.md").read_text()
    assert {d: m["auc"] for d, m in drawn["domains"].items()} == pytest.approx(
        {d: m["auc"] for d, m in json.loads(before["report.json"])["domains"].items()}, abs=1e-12)
    # the command hybrid.evaluate gives for an unfinished run: the options not given are the run's own
    assert train.main(["--resume", "--out", str(out), "--data-root", str(data_root), "--quiet"]) == 0
    saved, resumed = (TrainConfig.from_dict(json.loads(before["config.json"])), TrainConfig.load(out / "config.json"))
    assert saved.differences(resumed, ignore=ENVIRONMENT_FIELDS) == []
    assert train.main(["--resume", "--out", str(out), "--quiet", "--lr", "0.5"]) == 2  # a given one must still match
    assert "lr (0.002 saved, 0.5 given)" in capsys.readouterr().err


@pytest.mark.parametrize("flag,value", [("--max-samples", "-5"), ("--max-samples", "0"), ("--batch-size", "0"),
                                        ("--batch-size", "two")])
def test_evaluate_refuses_counts_below_one(tmp_path, capsys, flag, value):
    from hybrid import evaluate

    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--run", str(tmp_path), flag, value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and flag in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_json_outputs_hold_null_not_nan(tmp_path):
    import json
    import math

    from hybrid.rundir import append_result, write_json

    record = {"auc": math.nan, "ci": [-math.inf, 0.5], "nested": {"x": math.inf}}
    write_json(record, tmp_path / "r.json")
    append_result(tmp_path, record)

    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"invalid JSON constant {name}"))

    assert strict((tmp_path / "r.json").read_text()) == {"auc": None, "ci": [None, 0.5], "nested": {"x": None}}
    assert strict((tmp_path / "results.jsonl").read_text().splitlines()[0])["auc"] is None

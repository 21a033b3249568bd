"""Security promises of #17: names from data never write outside the run directory, run outputs
follow the user's umask, and the IBM token reaches no output of any tool."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from hybrid import evaluate, experiment, report, train
from hybrid import subgroups as subgroups_cli

TOKEN = "planted-ibm-token-7f3a9c"
TINY = ["--epochs", "1", "--width-mult", "0.1", "--stem-stride", "2", "--input-size", "16", "--embed-dim", "16",
        "--batch-size", "32", "--n-bootstrap", "0", "--threads", "1", "--quiet"]
ESCAPING = ["../../escaped", "/tmp/absolute-center", "ok"]  # center names a hostile file could carry


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A multi-center run whose center names try to leave the run directory, trained under umask 027
    with an IBM token in the environment; returns (sandbox, run directory)."""
    sandbox = tmp_path_factory.mktemp("sandbox")
    rng = np.random.default_rng(0)
    n = 180
    labels = np.arange(n) % 2
    images = rng.integers(0, 60, (n, 16, 16), dtype=np.uint8)
    images[labels == 1, 4:12, 4:12] += 120
    data = sandbox / "data" / "hostile.npz"
    data.parent.mkdir()
    np.savez(data, images=images, labels=labels, center_ids=np.arange(n) % 3, center_names=np.array(ESCAPING))
    run = sandbox / "deep" / "er" / "run"
    old_umask, old_token = os.umask(0o027), os.environ.get("QISKIT_IBM_TOKEN")
    os.environ["QISKIT_IBM_TOKEN"] = TOKEN
    try:
        assert train.main([*TINY, "--dataset", str(data), "--test-centers", "../../escaped,/tmp/absolute-center",
                           "--out", str(run)]) == 0
        assert evaluate.main(["--run", str(run), "--data", str(data), "--tta", "none"]) == 0
        assert subgroups_cli.main(["--run", str(run), "--threads", "1"]) == 0
    finally:
        os.umask(old_umask)
        if old_token is None:
            os.environ.pop("QISKIT_IBM_TOKEN")
        else:
            os.environ["QISKIT_IBM_TOKEN"] = old_token
    return sandbox, run


def test_center_names_from_data_never_write_outside_the_run(hostile):
    sandbox, run = hostile
    written = {p for p in sandbox.rglob("*") if p.is_file()} - {sandbox / "data" / "hostile.npz"}
    assert written and all(run in p.parents for p in written), sorted(map(str, written))
    assert not Path("/tmp/absolute-center").exists() and not list(sandbox.parent.glob("*escaped*"))
    assert any(p.name.startswith("subgroups_") for p in written)


def test_outputs_follow_the_users_umask(hostile):
    _, run = hostile
    for path in [run, *run.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o027 == 0, (path, oct(mode))  # umask 027: nothing for others, nothing writable by group
        assert mode & stat.S_IRUSR, (path, oct(mode))  # and still the owner's to read


def test_ibm_token_reaches_no_file_and_no_output(hostile, tmp_path, monkeypatch, capsys, caplog):
    sandbox, run = hostile
    monkeypatch.setenv("QISKIT_IBM_TOKEN", TOKEN)
    # the study tools, with the token set: a dry run, a report on a study without runs, a refused input
    assert experiment.main(["--preset", "quick", "--dry-run", "--out", str(tmp_path / "study"), "--quiet"]) == 0
    assert report.main([str(tmp_path / "study")]) == 2
    assert train.main([*TINY, "--dataset", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "x")]) == 2
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err + caplog.text
    for folder in (sandbox, tmp_path):
        for path in folder.rglob("*"):
            if path.is_file():
                assert TOKEN.encode() not in path.read_bytes(), path

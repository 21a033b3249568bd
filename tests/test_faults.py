"""A training run killed at any moment resumes to the report of an uninterrupted run; Ctrl-C stops
with a line saying how to resume; a full disk is one sentence and leaves earlier files intact (#17).

The faults are injected by tests/fault_runner.py in a child process (SIGKILL cannot be caught, so
the process really dies), then the run resumes here with `--resume`.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hybrid import train

REPO = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "3", "--max-train-samples", "64", "--width-mult", "0.1", "--stem-stride", "2", "--input-size", "16",
        "--embed-dim", "16", "--batch-size", "32", "--n-bootstrap", "0", "--eval-max-samples", "48", "--no-figures",
        "--threads", "1", "--quiet"]
STEPS_PER_EPOCH = 2  # 64 images in batches of 32


def _argv(data_root: Path, out: Path) -> list[str]:
    return [*TINY, "--data-root", str(data_root), "--out", str(out)]


def _faulty(where: str, n: int, signal: str, argv: list[str]) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "tests" / "fault_runner.py"), where, str(n), signal, "--", *argv],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_report(run: Path, reference: Path) -> None:
    got, want = (json.loads((p / "report.json").read_text()) for p in (run, reference))
    assert got["domains"].keys() == want["domains"].keys() and got["run"]["best_epoch"] == want["run"]["best_epoch"]
    for domain, metrics in want["domains"].items():
        for key, value in metrics.items():
            if isinstance(value, float) and math.isfinite(value):
                assert got["domains"][domain][key] == pytest.approx(value, abs=1e-9), (domain, key)
    assert _metrics(run) == _metrics(reference)  # every epoch once, with the same values


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root) -> Path:
    out = tmp_path_factory.mktemp("faults") / "reference"
    assert train.main(_argv(data_root, out)) == 0
    return out


KILLS = [  # (where, at which occurrence): mid-epoch 2, inside epoch 2's checkpoint write, between epoch 2's
    # metrics line and its checkpoints, during the final evaluation
    ("step", STEPS_PER_EPOCH + 1), ("checkpoint", 3), ("metrics", 2), ("evaluation", 1)]


@pytest.mark.slow
@pytest.mark.parametrize("where,n", KILLS, ids=[k[0] for k in KILLS])
def test_sigkill_at_any_moment_resumes_to_the_uninterrupted_report(reference, tmp_path, data_root, where, n):
    run = tmp_path / "run"
    killed = _faulty(where, n, "KILL", _argv(data_root, run))
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (run / "report.json").exists()
    torch.load(run / "last.pt", weights_only=True)  # the checkpoint on disk is whole, whatever was being written
    assert train.main([*_argv(data_root, run), "--resume"]) == 0
    _assert_same_report(run, reference)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(reference, tmp_path, data_root):
    run = tmp_path / "run"
    stopped = _faulty("step", STEPS_PER_EPOCH + 1, "INT", _argv(data_root, run))
    assert stopped.returncode == 130 and "Traceback" not in stopped.stderr, stopped.stderr[-2000:]
    line = stopped.stderr.strip().splitlines()[-1]
    assert line.startswith("interrupted;") and "last.pt" in line and line.endswith("--resume")
    command = shlex.split(line.split("continue with: ", 1)[1])
    assert command[:3] == ["python", "-m", "hybrid.train"]
    assert train.main(command[3:]) == 0
    _assert_same_report(run, reference)


def test_ctrl_c_before_the_first_epoch_says_nothing_is_saved(tmp_path, data_root):
    stopped = _faulty("step", 1, "INT", _argv(data_root, tmp_path / "run"))
    assert stopped.returncode == 130 and "Traceback" not in stopped.stderr
    assert "nothing is saved; run the command again" in stopped.stderr.strip().splitlines()[-1]


def test_full_disk_is_one_sentence_and_keeps_the_earlier_checkpoint(tmp_path, data_root, monkeypatch, capsys):
    """Simulated ENOSPC where file systems report it late: from fsync, on epoch 2's last.pt."""
    real_fsync, calls = os.fsync, {"n": 0}

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("last.pt.tmp"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    run = tmp_path / "run"
    assert train.main(_argv(data_root, run)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: cannot write or read") and "No space left on device" in err[-1]
    assert "files written before are intact" in err[-1] and "Traceback" not in "\n".join(err)
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 0 and not list(run.glob("*.tmp"))
    assert [r["epoch"] for r in _metrics(run)] in ([1], [1, 2])
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert train.main([*_argv(data_root, run), "--resume"]) == 0


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 96 KiB tmpfs (root only): a real full disk."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the simulated ENOSPC test covers the behaviour")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_real_full_disk_is_one_sentence(small_tmpfs, data_root, capsys):
    run = small_tmpfs / "run"
    assert train.main(_argv(data_root, run)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "No space left on device" in err[-1] and "Traceback" not in "\n".join(err)
    json.loads((run / "config.json").read_text())  # what was written before the disk filled is whole
    for checkpoint in run.glob("*.pt"):
        torch.load(checkpoint, weights_only=True)

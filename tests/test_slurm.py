"""`hybrid.experiment --launcher slurm` against a real one-node Slurm (munge, slurmctld, slurmd).

The cluster is started by tests/slurm_cluster.py (CI installs the Debian packages first). Where
the daemons cannot start (not root, packages missing) the tests are skipped with that reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import slurm_cluster  # noqa: E402

from hybrid.studies import experiment  # noqa: E402
from hybrid.studies.runs import read_lines  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if os.geteuid() == 0 and slurm_cluster.missing_binaries():
        slurm_cluster.install()
    reason = slurm_cluster.unavailable()
    if reason:
        pytest.skip(f"no Slurm cluster for these tests: {reason}")
    cluster = slurm_cluster.SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


def study_command(out: Path, data_root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hybrid.experiment", "--preset", "quick", "--launcher", "slurm",
            "--cpus-per-task", "1", "--time", "10", "--poll-seconds", "1", "--data-root", str(data_root), "--out", str(out), "--quiet",
            *extra]


def run(cmd: list[str], timeout: float = 420) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def reports(out: Path, variant: str) -> dict:
    return json.loads((out / variant / "seed0" / "report.json").read_text())


def domain_aucs(report: dict) -> dict:
    return {name: d["auc"] for name, d in report["domains"].items()}


def test_slurm_study_matches_the_local_one(slurm, quick_study, data_root, tmp_path):
    local_out = quick_study[0]
    out = tmp_path / "study"
    done = run(study_command(out, data_root, "--variants", "erm,full"))
    assert done.returncode == 0, done.stderr
    assert "2 trained, 0 already finished, 0 failed" in done.stdout
    submissions = read_lines(out / "slurm_jobs.jsonl")
    assert [s["variant"] for s in submissions] == ["erm", "full"] and len({s["job_id"].split("_")[0] for s in submissions}) == 1
    assert all("_" in s["job_id"] and Path(s["log"]).is_file() for s in submissions)  # one job array, its logs
    for variant in ("erm", "full"):
        assert domain_aucs(reports(out, variant)) == pytest.approx(domain_aucs(reports(local_out, variant)), abs=1e-9)
    assert json.loads((out / "study.json").read_text())["invocations"][-1]["launcher"] == "slurm"
    status = run([sys.executable, "-m", "hybrid.experiment", "--status", str(out)])
    assert "2 finished, 0 running, 0 failed, 0 pending" in status.stdout
    again = run(study_command(out, data_root, "--variants", "erm,full"))  # nothing left to submit
    assert again.returncode == 0 and "0 trained, 2 already finished" in again.stdout
    assert len(read_lines(out / "slurm_jobs.jsonl")) == 2


def _start_and_wait_for_a_checkpoint(cmd: list[str], run_path: Path, out: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.time() + 300
    while not (run_path / "last.pt").is_file() or len(read_lines(run_path / "metrics.jsonl")) < 1:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the Slurm task never saved a checkpoint"
        time.sleep(0.1)
    return proc, read_lines(out / "slurm_jobs.jsonl")[-1]["job_id"]


def _uninterrupted(tmp_path: Path, data_root: Path, epochs: int) -> dict:
    study = experiment.build_study("quick", variants=["erm"], overrides={"data_root": str(data_root), "epochs": epochs})
    experiment.run_study(study, tmp_path / "reference", progress=False)
    return reports(tmp_path / "reference", "erm")


def test_scancelled_run_resumes_when_the_command_is_rerun(slurm, data_root, tmp_path):
    out, epochs = tmp_path / "study", 5
    cmd = study_command(out, data_root, "--variants", "erm", "--epochs", str(epochs))
    run_path = out / "erm" / "seed0"
    proc, job = _start_and_wait_for_a_checkpoint(cmd, run_path, out)
    subprocess.run(["scancel", job], check=True)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1 and f"Slurm job {job} ended without a report" in stderr
    (failure,) = read_lines(out / "failures.jsonl")
    assert failure["slurm_job"] == job and failure["variant"] == "erm"
    status = run([sys.executable, "-m", "hybrid.experiment", "--status", str(out)])
    assert "erm/seed0" in status.stdout and "0 finished, 0 running, 1 failed" in status.stdout

    resumed = run(cmd)
    assert resumed.returncode == 0 and "1 trained" in resumed.stdout, resumed.stderr
    assert "resuming from epoch" in (run_path / "train.log").read_text()
    assert [m["epoch"] for m in read_lines(run_path / "metrics.jsonl")] == list(range(1, epochs + 1))  # none twice
    assert len(read_lines(out / "slurm_jobs.jsonl")) == 2 and not (run_path / "running.json").exists()
    reference = _uninterrupted(tmp_path, data_root, epochs)
    assert domain_aucs(reports(out, "erm")) == pytest.approx(domain_aucs(reference), abs=1e-9)


def test_preempted_task_is_requeued_and_resumes(slurm, data_root, tmp_path):
    """USR2 is the signal Slurm sends before preemption or the time limit (submitit's --signal)."""
    out, epochs = tmp_path / "study", 5
    cmd = study_command(out, data_root, "--variants", "erm", "--epochs", str(epochs))
    run_path = out / "erm" / "seed0"
    proc, job = _start_and_wait_for_a_checkpoint(cmd, run_path, out)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    stdout, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0 and "1 trained, 0 already finished, 0 failed" in stdout, stderr
    assert "resuming from epoch" in (run_path / "train.log").read_text()
    assert len(read_lines(out / "slurm_jobs.jsonl")) == 1  # requeued by Slurm, not resubmitted
    assert [m["epoch"] for m in read_lines(run_path / "metrics.jsonl")] == list(range(1, epochs + 1))
    assert not (out / "failures.jsonl").exists()

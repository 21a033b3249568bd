"""`hybrid.experiment --launcher slurm` against a real one-node Slurm (munge, slurmctld, slurmd).

The cluster is started by tests/slurm_cluster.py (CI installs the Debian packages first). Where
the daemons cannot start (not root, packages missing) the tests are skipped with that reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import slurm_cluster  # noqa: E402
from conftest import QUICK_STUDY_SETS  # noqa: E402

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
    done = run(study_command(out, data_root, "--variants", "erm,full", *QUICK_STUDY_SETS))
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
    again = run(study_command(out, data_root, "--variants", "erm,full", *QUICK_STUDY_SETS))  # nothing left to submit
    assert again.returncode == 0 and "0 trained, 2 already finished" in again.stdout
    assert len(read_lines(out / "slurm_jobs.jsonl")) == 2


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the study command ended before {what}: {proc.communicate()}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _task_logs(out: Path) -> str:
    """What the tasks and the run logged: shown when the timing-dependent test fails."""
    files = sorted((out / "slurm").glob("*/*.err")) + sorted(out.glob("*/seed*/train.log"))
    return "\n".join(f"== {f}\n{f.read_text()[-3000:]}" for f in files)


def test_preempted_task_is_requeued_and_a_killed_one_resumes_on_rerun(slurm, data_root, tmp_path):
    """Preemption: USR2 is the signal Slurm sends before preemption or the time limit (submitit's
    --signal); the task checkpoints and Slurm requeues it. A task killed before its report
    ends for good; rerunning the command resumes it from last.pt."""
    out, epochs = tmp_path / "study", 3
    # the quick preset's full evaluation (TTA on and off, bootstraps) takes ~20 s: the window in which
    # the task is killed before its report
    cmd = study_command(out, data_root, "--variants", "erm", "--epochs", str(epochs))
    run_path = out / "erm" / "seed0"
    log = run_path / "train.log"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    _wait_for(lambda: (run_path / "last.pt").is_file() and len(read_lines(run_path / "metrics.jsonl")) >= 1,
              proc, "the first checkpoint")
    job = read_lines(out / "slurm_jobs.jsonl")[-1]["job_id"]
    # The task is paused while the status is read and USR2 is sent (it arrives on SIGCONT): on a fast CPU
    # (2026-12-04) the quick preset trained all three epochs in 1.5 s, before the status call returned.
    (marker,) = read_lines(run_path / "running.json")
    os.kill(marker["pid"], signal.SIGSTOP)
    try:
        status = run([sys.executable, "-m", "hybrid.experiment", "--status", str(out)])
        assert f"running   Slurm job {job}" in status.stdout and "0 finished, 1 running" in status.stdout
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
    finally:
        os.kill(marker["pid"], signal.SIGCONT)
    _wait_for(lambda: log.is_file() and "resuming from epoch" in log.read_text()
              and len(read_lines(run_path / "metrics.jsonl")) == epochs, proc, "the requeued task's last epoch")
    assert read_lines(out / "slurm_jobs.jsonl")[-1]["job_id"] == job  # requeued by Slurm, not resubmitted
    # now resuming or evaluating: the task process is killed (OOM killer, lost node) before its report.
    # SIGKILL to its pid rather than `scancel`, whose effect is not immediate: a CI run's evaluation
    # finished and wrote its report after the scancel
    (marker,) = read_lines(run_path / "running.json")
    os.kill(marker["pid"], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1 and f"Slurm job {job} ended without a report" in stderr, _task_logs(out)
    (failure,) = read_lines(out / "failures.jsonl")
    assert failure["slurm_job"] == job and failure["variant"] == "erm"
    status = run([sys.executable, "-m", "hybrid.experiment", "--status", str(out)])
    assert "erm/seed0" in status.stdout and "0 finished, 0 running, 1 failed" in status.stdout

    resumed = run(cmd)
    assert resumed.returncode == 0 and "1 trained" in resumed.stdout, resumed.stderr
    assert log.read_text().count("resuming from epoch") == 2
    assert [m["epoch"] for m in read_lines(run_path / "metrics.jsonl")] == list(range(1, epochs + 1))  # none twice
    assert len(read_lines(out / "slurm_jobs.jsonl")) == 2 and not (run_path / "running.json").exists()
    study = experiment.build_study("quick", variants=["erm"],
                                   overrides={"data_root": str(data_root), "epochs": epochs})
    experiment.run_study(study, tmp_path / "reference", progress=False)
    assert domain_aucs(reports(out, "erm")) == pytest.approx(domain_aucs(reports(tmp_path / "reference", "erm")),
                                                             abs=1e-9)


def test_a_task_that_fails_records_its_job_and_log_itself(slurm, data_root, tmp_path):
    from dataclasses import replace

    from hybrid.studies.launchers import SlurmLauncher

    study = experiment.build_study("quick", variants=["erm"], overrides={"data_root": str(data_root)})
    study = replace(study, variants={"broken": {"dataset": "nosuchmnist"}})
    out = tmp_path / "study"
    summary = experiment.run_study(study, out, progress=False,
                                   launcher=SlurmLauncher(out, cpus_per_task=1, time_min=5, poll_seconds=1))
    assert summary["failed"] == ["broken/seed0"] and not summary["finished"]
    (failure,) = read_lines(out / "failures.jsonl")  # written by the task, not repeated by the submitter
    assert "nosuchmnist" in failure["error"] and failure["traceback"]
    assert failure["slurm_job"] == read_lines(out / "slurm_jobs.jsonl")[0]["job_id"] and Path(failure["log"]).is_file()

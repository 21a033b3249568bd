"""What the study tools do when squeue does not answer: no verdict, never a duplicate submission.

A fake `squeue` on PATH plays the controller: it answers, says every id has left its memory (what real
squeue exits 1 with once a job is purged), or fails (controller unreachable). The real daemons are in
test_slurm.py.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from hybrid.config import TrainConfig
from hybrid.studies import experiment
from hybrid.studies.launchers import SlurmLauncher
from hybrid.studies.runs import RUNNING, RunJob, run_dir, slurm_queue, study_status

ANSWERS = {
    "queued": (0, "4242_0|RUNNING\n5000_0|PENDING\n", ""),
    "rerun queued": (0, "5000_0|PENDING\n", ""),
    "purged": (1, "", "slurm_load_jobs error: Invalid job id specified"),
    "down": (1, "", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"),
}


@pytest.fixture
def squeue(tmp_path, monkeypatch):
    """set(kind): the fake squeue on PATH answers as ANSWERS[kind] from then on."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}:/usr/bin:/bin")

    def set_answer(kind: str) -> None:
        code, stdout, stderr = ANSWERS[kind]
        script = folder / "squeue"
        script.write_text(f"#!/bin/sh\nprintf '{stdout}'\nprintf '{stderr}' >&2\nexit {code}\n")
        script.chmod(0o755)

    return set_answer


def test_the_queue_is_unknown_when_squeue_fails_and_empty_when_the_jobs_are_purged(squeue, monkeypatch):
    squeue("queued")
    assert slurm_queue(["4242_0", "5000_0", "77_1"]) == {"4242_0": "RUNNING", "5000_0": "PENDING"}
    squeue("purged")
    assert slurm_queue(["4242_0"]) == {}
    squeue("down")
    assert slurm_queue(["4242_0"]) is None
    assert slurm_queue([None, ""]) == {}  # no job to ask about: squeue is not called
    monkeypatch.setenv("PATH", "/nonexistent")
    assert slurm_queue(["4242_0"]) is None  # no squeue at all


def _submitted_study(out) -> tuple[SlurmLauncher, RunJob]:
    job = RunJob("erm", 0, TrainConfig(), run_dir(out, "erm", 0), 1)
    (out / "slurm_jobs.jsonl").write_text(json.dumps({"variant": "erm", "seed": 0, "job_id": "4242_0"}) + "\n")
    return SlurmLauncher(out, poll_seconds=0.01), job


def test_a_rerun_does_not_submit_again_when_squeue_does_not_answer(squeue, tmp_path, monkeypatch):
    launcher, job = _submitted_study(tmp_path)
    monkeypatch.setattr(SlurmLauncher, "submit", lambda self, jobs: pytest.fail(f"submitted {jobs}"))
    squeue("down")
    with pytest.raises(RuntimeError, match="squeue did not answer.*not submitting them again"):
        launcher.launch([job], lambda j, result: None)
    squeue("queued")  # 4242_0 is running: watched, not submitted
    launcher.wait = False
    launcher.launch([job], lambda j, result: None)


def test_the_watcher_gives_no_verdict_while_squeue_does_not_answer(squeue, tmp_path):
    launcher, job = _submitted_study(tmp_path)
    long_gone = {"4242_0": time.time() - 3600}  # past any grace: only the queue's silence keeps it waiting
    assert launcher._outcome(job, "4242_0", None, dict(long_gone)) is None
    verdict = launcher._outcome(job, "4242_0", {}, dict(long_gone))
    assert not verdict["ok"] and "ended without a report" in verdict["error"]


def test_status_says_unknown_without_squeue_and_follows_a_requeued_run_past_its_dead_job(squeue, tmp_path, capsys):
    study = experiment.build_study("quick", variants=["erm"], seeds=1)
    experiment._write_study(study, tmp_path, "first", 1, "slurm")
    path = run_dir(tmp_path, "erm", 0)
    path.mkdir(parents=True)
    # the task of job 4242_0 was killed (its marker stays); the rerun's submission 5000_0 is pending
    (path / RUNNING).write_text(json.dumps({"pid": 1, "host": "node1", "slurm_job": "4242_0"}) + "\n")
    (tmp_path / "slurm_jobs.jsonl").write_text("".join(
        json.dumps({"variant": "erm", "seed": 0, "job_id": j}) + "\n" for j in ("4242_0", "5000_0")))
    squeue("purged")  # neither listed: the dead job's marker names it
    assert study_status(tmp_path, [("erm", 0)])[0]["state"] == "pending"
    squeue("rerun queued")
    (row,) = study_status(tmp_path, [("erm", 0)])
    assert row["state"] == "pending" and row["detail"].startswith("Slurm job 5000_0 pending")
    squeue("down")
    assert experiment.print_status(tmp_path) == 0
    out = capsys.readouterr().out
    assert "unknown" in out and "squeue did not answer" in out and out.splitlines()[-1].endswith("1 unknown")


def test_loso_with_no_wait_leaves_the_selection_for_the_rerun(tmp_path, monkeypatch, capsys):
    """With --no-wait the fold runs are only queued when the command returns: selecting then would write
    'none' from missing folds. The selection is left to the rerun, which says so."""
    trained = []
    monkeypatch.setattr(experiment, "run_study", lambda study, out, **kw: trained.append(study.preset) or
                        {"finished": [], "skipped": [], "failed": []})
    monkeypatch.setattr(experiment, "select", lambda study, out: pytest.fail("selected from queued folds"))
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")  # as if sbatch were on PATH
    argv = ["--preset", "ham10000", "--variants", "erm", "--seeds", "1", "--validation", "loso", "--launcher",
            "slurm", "--no-wait", "--out", str(tmp_path)]
    assert experiment.main(argv) == 0
    out = capsys.readouterr().out
    assert trained == ["ham10000_loso", "ham10000"] and "rerun this command to write the selection" in out
    assert not (tmp_path / "selection.json").exists()


def test_a_submission_sbatch_refuses_is_one_sentence_and_leaves_no_pickled_calls(squeue, tmp_path, capsys, data_root):
    sbatch = tmp_path / "bin" / "sbatch"  # on the fixture's PATH: a login node whose controller is unreachable
    sbatch.write_text("#!/bin/sh\necho 'sbatch: fatal: Could not establish a configuration source' >&2\nexit 1\n")
    sbatch.chmod(0o755)
    out = tmp_path / "study"
    argv = ["--preset", "quick", "--variants", "erm", "--seeds", "1", "--launcher", "slurm", "--time", "10",
            "--data-root", str(data_root), "--out", str(out), "--quiet"]
    assert experiment.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") <= 1  # at most sbatch's own line above ours
    last = err.splitlines()[-1]
    assert last.startswith("error: sbatch refused the job array, nothing was submitted:")
    assert "Could not establish a configuration source" in last
    assert not [p for p in (out / "slurm").rglob("*") if p.is_file()]
    assert experiment.main(argv) == 2  # a retry adds nothing either
    assert not [p for p in (out / "slurm").rglob("*") if p.is_file()]


def test_slurm_options_are_checked_before_anything_is_written(tmp_path, monkeypatch, capsys, caplog):
    """Slurm options without --launcher slurm would train the whole study on this machine (a login node); a bad
    value is refused by a dry run too; a missing sbatch is found before study.json is written."""
    out = tmp_path / "study"
    base = ["--preset", "quick", "--variants", "erm", "--seeds", "1", "--out", str(out)]
    assert experiment.main(base + ["--partition", "cpu", "--time", "5"]) == 2
    assert "--partition, --time apply to --launcher slurm only" in capsys.readouterr().err
    for bad in (["--mem", "0"], ["--poll-seconds", "0"]):
        assert experiment.main(base + ["--launcher", "slurm", *bad, "--dry-run"]) == 2
        assert "--mem and --poll-seconds positive" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path / "no_slurm_here"))
    assert experiment.main(base + ["--launcher", "slurm", "--workers", "2"]) == 2
    assert "needs Slurm's sbatch on PATH" in capsys.readouterr().err
    assert "--workers 2 is not used with --launcher slurm" in caplog.text
    assert not out.exists()

"""One run of a study, wherever it executes: training it, marking it running, recording failures,
and reading its state back from the study directory.

The study directory is the only source of truth, so a launcher (a local process pool, a
Slurm array) can die without losing anything: a run is finished when its report.json parses,
running while its running.json names a live process or an active Slurm job, failed when
failures.jsonl holds its last failure, and pending otherwise (its last.pt, if any, resumes it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from hybrid.config import TrainConfig
from hybrid.rundir import append_line, read_lines

log = logging.getLogger("hybrid.experiment")

RUNNING = "running.json"
FAILURES = "failures.jsonl"
SLURM_JOBS = "slurm_jobs.jsonl"


@dataclass(frozen=True)
class RunJob:
    """Everything a worker needs to train one run (picklable: it travels to Slurm jobs)."""

    variant: str
    seed: int
    config: TrainConfig
    path: Path
    threads: int
    command: str | None = None

    @property
    def name(self) -> str:
        return f"{self.variant}/seed{self.seed}"


def run_dir(out: Path, variant: str, seed: int) -> Path:
    return Path(out) / variant / f"seed{seed}"


def seed_of(folder: str) -> int | None:
    """The seed of a run folder named as run_dir names it (seed3 -> 3); None for any other name."""
    match = re.fullmatch(r"seed(\d+)", folder)
    return int(match.group(1)) if match else None


def is_finished(path: Path) -> bool:
    """report.json is there and parses (a disk-full write can leave an empty one)."""
    try:
        return isinstance(json.loads((Path(path) / "report.json").read_text()), dict)
    except (OSError, ValueError):
        return False


def slurm_job_id() -> str | None:
    """This process's Slurm job id (array jobs as ARRAYID_TASK), or None outside Slurm."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


@contextlib.contextmanager
def running_marker(path: Path):
    """running.json in the run directory while the block runs; a killed process leaves it stale,
    which `run_state` recognises (dead pid, or a Slurm job no longer in the queue)."""
    marker = Path(path) / RUNNING
    marker.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": slurm_job_id(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            marker.unlink()


def run_one(cfg: TrainConfig, path: Path, threads: int, command: str | None = None) -> dict:
    """Train one run with its output in path/train.log; errors come back as data, not exceptions.

    Top-level so that spawned worker processes and Slurm jobs can import it.
    """
    from hybrid.reporting import format_table
    from hybrid.runtime import torch_settings
    from hybrid.train import summary_line, train

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    handler = logging.FileHandler(path / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    hybrid_log = logging.getLogger("hybrid")
    hybrid_log.addHandler(handler)
    old = hybrid_log.level, hybrid_log.propagate
    hybrid_log.setLevel(logging.INFO)
    hybrid_log.propagate = False  # epoch lines go to train.log, not over the study's progress bar
    try:
        with (running_marker(path), open(path / "train.log", "a") as fh, contextlib.redirect_stdout(fh),
              torch_settings(cfg.threads or threads)):
            report = train(cfg, path, progress=False, resume=True, command=command)
            print(format_table(report["domains"], report["summary"]) + "\n\n" + summary_line(report, path))
        auc = report["summary"]["auc"]
        return {"ok": True, "seconds": time.perf_counter() - started, "auc_mean": auc["mean"],
                "auc_worst": auc["worst"]}
    except Exception as exc:  # one bad run must not end the study
        return {"ok": False, "seconds": time.perf_counter() - started,
                "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    finally:
        hybrid_log.removeHandler(handler)
        hybrid_log.level, hybrid_log.propagate = old
        handler.close()


def record_failure(out: Path, job: RunJob, result: dict, **extra) -> None:
    line = {"variant": job.variant, "seed": job.seed, "run_dir": str(job.path),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")} | extra | {
        k: result.get(k) for k in ("error", "traceback", "seconds")}
    append_line(Path(out) / FAILURES, line)
    log.error("%s failed: %s (details in %s)", job.name, result.get("error"), Path(out) / FAILURES)


def slurm_queue(job_ids) -> dict[str, str] | None:
    """{job id: Slurm state} of the given jobs still in the queue (PENDING, RUNNING, REQUEUED, ...), or None
    when squeue did not answer (missing, timed out, controller unreachable): that is not "nothing queued", which
    would make a rerun submit queued runs again and a watcher declare running jobs gone.

    Array tasks are listed one per line (`-r`), as ARRAYID_TASK. No job ids: nothing is queued.
    """
    ids = sorted({str(j).split("_")[0] for j in job_ids if j})
    if not ids:
        return {}
    try:
        listing = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T", "--jobs=" + ",".join(ids)],
                                 capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.debug("squeue did not answer: %s", error)
        return None
    if listing.returncode != 0:
        # squeue refuses a list whose every id has left the controller's memory: then none is queued
        if "Invalid job id" in listing.stderr:
            return {}
        log.debug("squeue failed (exit %d): %s", listing.returncode, listing.stderr.strip()[-300:])
        return None
    states = dict(line.split("|", 1) for line in listing.stdout.split() if "|" in line)
    return {j: states[j] for j in map(str, job_ids) if j in states}


def _process_alive(marker: dict) -> bool:
    if marker.get("host") != socket.gethostname():
        return True  # another machine's process: trust the marker (its owner cleans it up)
    try:
        os.kill(int(marker["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def latest_slurm_jobs(out: Path) -> dict[str, dict]:
    """{run name: its latest submission record} from slurm_jobs.jsonl."""
    return {f"{r['variant']}/seed{r['seed']}": r for r in read_lines(Path(out) / SLURM_JOBS)}


def run_state(out: Path, variant: str, seed: int, queue: dict[str, str] | None, submissions: dict[str, dict],
              failures: dict[str, dict]) -> tuple[str, str]:
    """(finished | running | failed | pending | unknown, a detail) of one run, from the study directory and Slurm's
    queue (None: squeue did not answer, so a run with a Slurm job is unknown unless finished)."""
    path, name = run_dir(out, variant, seed), f"{variant}/seed{seed}"
    if is_finished(path):
        return "finished", ""
    marker = next(iter(read_lines(path / RUNNING)), None)
    # the newest submission first: a killed task leaves its marker naming its dead job while a rerun's job queues
    jobs = [str(j) for j in ((submissions.get(name) or {}).get("job_id"), (marker or {}).get("slurm_job")) if j]
    if queue is None and jobs:
        return "unknown", f"Slurm job {jobs[0]}: squeue did not answer, state unknown; {_progress(path)}"
    queue = queue or {}
    job = next((j for j in jobs if j in queue), (marker or {}).get("slurm_job") or (jobs or [None])[0])
    slurm_state = queue.get(str(job)) if job else None
    if slurm_state == "RUNNING" or (marker and not marker.get("slurm_job") and _process_alive(marker)):
        where = f"Slurm job {job}" if slurm_state else f"pid {marker['pid']} on {marker['host']}"
        return "running", f"{where}, {_progress(path)}"
    if slurm_state:
        return "pending", f"Slurm job {job} {slurm_state.lower()}, {_progress(path)}"
    if name in failures:
        return "failed", f"{failures[name].get('error')} ({failures[name].get('time')})"
    return "pending", _progress(path)


def _progress(path: Path) -> str:
    epochs = len(read_lines(path / "metrics.jsonl")) if (path / "last.pt").is_file() else 0
    return f"{epochs} epoch(s) saved, resumes from last.pt" if epochs else "not started"


def study_status(out: Path, runs: list[tuple[str, int]]) -> list[dict]:
    """One row per run: variant, seed, state and detail."""
    submissions = latest_slurm_jobs(out)
    queue = slurm_queue([r.get("job_id") for r in submissions.values()] +
                        [m.get("slurm_job") for v, s in runs for m in read_lines(run_dir(out, v, s) / RUNNING)])
    failures = {f"{r['variant']}/seed{r['seed']}": r for r in read_lines(Path(out) / FAILURES)}
    rows = []
    for variant, seed in runs:
        state, detail = run_state(out, variant, seed, queue, submissions, failures)
        rows.append({"variant": variant, "seed": seed, "state": state, "detail": detail})
    return rows

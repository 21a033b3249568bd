"""Where a study's runs execute: a registry of launchers (`--launcher local|slurm`).

A launcher gets the unfinished runs as `RunJob`s and calls `done(job, result)` for each as it
ends. Runs are idempotent (a run resumes from its last.pt and a finished one is never
retrained), so a launcher needs no bookkeeping of its own beyond the study directory:

- `local`: today's default, a spawn-context process pool on this machine (or the calling
  process itself for one worker).
- `slurm`: one Slurm job array through submitit. Each task trains one run; a task that Slurm
  preempts or times out is checkpointed and requeued by submitit and resumes from its last.pt.
  Tasks record their own failures, so nothing depends on the submitting shell staying alive.

Another engine (Ray, say) is one more class with `@register_launcher("name")`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from submitit.helpers import Checkpointable

from hybrid.cli import positive_int
from hybrid.registry import lookup, registrar
from hybrid.studies.runs import (FAILURES, SLURM_JOBS, RunJob, append_line, is_finished, latest_slurm_jobs,
                                 read_lines, record_failure, run_one, slurm_queue)

log = logging.getLogger("hybrid.experiment")

LAUNCHERS: dict[str, type["Launcher"]] = {}
register_launcher = registrar(LAUNCHERS, "launcher")
Done = Callable[[RunJob, dict], None]


def launcher_class(name: str) -> type["Launcher"]:
    return lookup(LAUNCHERS, name, "launcher")


class SlurmError(RuntimeError):
    """Slurm could not be asked or refused a submission: one sentence for the user, not a traceback."""


class Launcher:
    name = "base"

    def launch(self, jobs: list[RunJob], done: Done) -> None:
        raise NotImplementedError

    def threads_per_run(self, n_runs: int, cores: int) -> int:
        """Torch threads a run gets when --threads is not given."""
        return cores


def exit_with_parent(parent_pid: int, poll_seconds: float = 2.0) -> None:
    """Worker initializer: end the worker once the study process is gone.

    A study killed with SIGTERM/SIGKILL cannot shut its pool down, and its workers would
    go on training unattended; a watcher thread notices the new parent and exits.
    """
    import threading

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


@register_launcher("local")
@dataclass
class LocalLauncher(Launcher):
    """Runs on this machine: in this process (workers=1) or a spawn-context process pool."""

    workers: int = 1

    def threads_per_run(self, n_runs: int, cores: int) -> int:
        return max(1, cores // max(1, min(self.workers, n_runs)))

    def launch(self, jobs: list[RunJob], done: Done) -> None:
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool
        from multiprocessing import get_context

        n_workers = max(1, min(self.workers, len(jobs)))
        if n_workers == 1:
            for job in jobs:
                done(job, run_one(job.config, job.path, job.threads, job.command))
            return
        with ProcessPoolExecutor(n_workers, mp_context=get_context("spawn"), initializer=exit_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(run_one, j.config, j.path, j.threads, j.command): j for j in jobs}
            for future in as_completed(futures):
                try:
                    result = future.result()
                except BrokenProcessPool as exc:  # a worker was killed (e.g. out of memory)
                    result = {"ok": False, "error": f"worker process died: {exc}; rerun to retry"}
                done(futures[future], result)


class SlurmTask(Checkpointable):
    """What one array task runs. Checkpointable: on preemption or timeout submitit calls
    `checkpoint`, which resubmits the same call; the run then resumes from its last.pt."""

    def __call__(self, job: RunJob, out: str) -> dict:
        import submitit

        result = run_one(job.config, job.path, job.threads, job.command)
        if not result["ok"]:  # recorded here, so a dead submitting shell loses nothing
            env = submitit.JobEnvironment()
            record_failure(Path(out), job, result, slurm_job=env.job_id, log=str(env.paths.stderr))
        return result


@register_launcher("slurm")
@dataclass
class SlurmLauncher(Launcher):
    """A Slurm job array through submitit; logs in OUT/slurm/, submissions in OUT/slurm_jobs.jsonl."""

    out: Path
    partition: str | None = None
    time_min: int = 240
    cpus_per_task: int = 2
    gpus_per_task: int = 0
    mem_gb: float | None = None
    array_parallelism: int = 64
    max_requeues: int = 3  # how often a run that times out is requeued before it counts as failed
    wait: bool = True
    poll_seconds: float = 5.0  # how often the waiting command asks squeue

    @property
    def vanish_grace_seconds(self) -> float:
        """How long a job gone from the queue gets for its report to appear (shared storage lags)."""
        return max(3 * self.poll_seconds, 3.0)

    def threads_per_run(self, n_runs: int, cores: int) -> int:
        return self.cpus_per_task

    def executor(self):
        import submitit

        if shutil.which("sbatch") is None:
            raise ValueError("--launcher slurm needs Slurm's sbatch on PATH; run this on the cluster's login node")
        executor = submitit.SlurmExecutor(folder=Path(self.out) / "slurm" / "%j", max_num_timeout=self.max_requeues)
        params = dict(time=self.time_min, cpus_per_task=self.cpus_per_task, array_parallelism=self.array_parallelism,
                      job_name="hybrid-study", signal_delay_s=60)
        params |= {k: v for k, v in dict(partition=self.partition, gpus_per_task=self.gpus_per_task or None,
                                         mem=f"{self.mem_gb:g}GB" if self.mem_gb else None).items() if v is not None}
        executor.update_parameters(**params)
        return executor

    def launch(self, jobs: list[RunJob], done: Done) -> None:
        active = self._still_queued(jobs)
        for job in [j for j in jobs if j.name in active]:
            log.info("%s is already in Slurm as job %s (%s); not submitting it again", job.name, *active[job.name])
        todo = [j for j in jobs if j.name not in active]
        submitted = self.submit(todo) if todo else []
        watched = submitted + [(j, active[j.name][0]) for j in jobs if j.name in active]
        if self.wait and watched:
            self.watch(watched, done)

    def _still_queued(self, jobs: list[RunJob]) -> dict[str, tuple[str, str]]:
        """Runs whose latest submission is still pending or running: a rerun must not duplicate them."""
        records = latest_slurm_jobs(self.out)
        queue = slurm_queue([records[j.name]["job_id"] for j in jobs if j.name in records])
        if queue is None:
            submitted = [j.name for j in jobs if j.name in records]
            raise SlurmError(f"squeue did not answer, so whether {len(submitted)} run(s) submitted before "
                               f"(first: {submitted[0]}) are still queued is unknown; not submitting them again (two "
                               "tasks would train one run directory). Rerun when squeue answers, or scancel them")
        return {j.name: (records[j.name]["job_id"], queue[records[j.name]["job_id"]]) for j in jobs
                if j.name in records and records[j.name]["job_id"] in queue}

    def submit(self, jobs: list[RunJob]) -> list[tuple[RunJob, str]]:
        from submitit.core.utils import FailedJobError

        executor = self.executor()
        task = SlurmTask()
        folder = Path(self.out) / "slurm"
        before = set(folder.rglob("*")) if folder.is_dir() else set()
        try:
            with executor.batch():
                handles = [executor.submit(task, job, str(self.out)) for job in jobs]
        except FailedJobError as exc:  # sbatch refused: no controller, a bad partition, a limit; nothing was queued
            for leftover in sorted(set(folder.rglob("*")) - before, reverse=True):  # the pickled calls it left
                leftover.unlink() if leftover.is_file() else leftover.rmdir()
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise SlurmError(f"sbatch refused the job array, nothing was submitted: {reason}") from None
        pairs = []
        for job, handle in zip(jobs, handles):
            append_line(Path(self.out) / SLURM_JOBS, {
                "variant": job.variant, "seed": job.seed, "job_id": handle.job_id, "log": str(handle.paths.stderr),
                "submitted": time.strftime("%Y-%m-%d %H:%M:%S")})
            pairs.append((job, handle.job_id))
        log.info("submitted %d run(s) as Slurm job array %s; logs in %s", len(jobs),
                 pairs[0][1].split("_")[0], Path(self.out) / "slurm")
        return pairs

    def watch(self, watched: list[tuple[RunJob, str]], done: Done) -> None:
        """Report each run as it ends: finished (report.json), failed (its task said so), or gone from
        the queue without a result (cancelled or killed: rerunning the command resumes it)."""
        pending = dict(watched)
        gone_since: dict[str, float] = {}
        silent = False  # whether squeue has not answered since it last did (said once, not every poll)
        while pending:
            queue = slurm_queue(pending.values())
            if (queue is None) != silent:
                silent = queue is None
                if silent:
                    log.warning("squeue did not answer; still waiting for %d run(s)", len(pending))
                else:
                    log.info("squeue answers again")
            for job, job_id in list(pending.items()):
                result = self._outcome(job, job_id, queue, gone_since)
                if result is not None:
                    del pending[job]
                    done(job, result)
            if pending:
                time.sleep(self.poll_seconds)

    def _outcome(self, job: RunJob, job_id: str, queue: dict | None, gone_since: dict) -> dict | None:
        if is_finished(job.path):
            return {"ok": True, "seconds": None, "slurm_job": job_id} | _summary(job.path)
        if queue is None:  # squeue did not answer: no verdict on a job it may still hold
            return None
        if job_id in queue:
            gone_since.pop(job_id, None)
            return None
        gone = gone_since.setdefault(job_id, time.time())
        if time.time() - gone < self.vanish_grace_seconds:
            return None  # the task may still be writing its report, or being requeued
        recorded = _recorded_failure(self.out, job_id)
        if recorded:  # the task trained and failed for a reason, and logged it
            return {"ok": False, "recorded": True, "slurm_job": job_id, "error": recorded.get("error")}
        return {"ok": False, "slurm_job": job_id,
                "error": f"Slurm job {job_id} ended without a report (cancelled, killed or out of time); rerun the "
                         "same command to resume it from its last.pt"}


def _summary(path: Path) -> dict:
    import json

    auc = json.loads((Path(path) / "report.json").read_text())["summary"]["auc"]
    return {"auc_mean": auc["mean"], "auc_worst": auc["worst"]}


def _recorded_failure(out: Path, job_id: str) -> dict | None:
    return next((r for r in read_lines(Path(out) / FAILURES) if r.get("slurm_job") == job_id), None)


# the slurm options, as argparse names them: given without --launcher slurm they would be dropped silently
SLURM_OPTIONS = ("partition", "time", "cpus_per_task", "gpus_per_task", "mem", "array_parallelism", "poll_seconds",
                 "no_wait")


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("launcher", "where the runs execute")
    group.add_argument("--launcher", choices=sorted(LAUNCHERS), default="local",
                       help="local: process pool on this machine (--workers); slurm: one Slurm job array (submitit)")
    group.add_argument("--partition", help="slurm: partition to submit to (default: the cluster's)")
    group.add_argument("--time", type=positive_int, metavar="MIN",
                       help=f"slurm: time limit per run in minutes (default {SlurmLauncher.time_min}); a run that "
                            "hits it is requeued and resumes")
    group.add_argument("--cpus-per-task", type=positive_int,
                       help=f"slurm: CPUs per run, also its torch threads unless --threads "
                            f"(default {SlurmLauncher.cpus_per_task})")
    group.add_argument("--gpus-per-task", type=int, help="slurm: GPUs per run (runs use --device auto; default 0)")
    group.add_argument("--mem", type=float, metavar="GB", help="slurm: memory per run in GB")
    group.add_argument("--array-parallelism", type=positive_int,
                       help=f"slurm: at most this many runs at once (default {SlurmLauncher.array_parallelism})")
    group.add_argument("--poll-seconds", type=float,
                       help=f"slurm: how often the waiting command asks squeue for the runs' states "
                            f"(default {SlurmLauncher.poll_seconds:g})")
    group.add_argument("--no-wait", action="store_true",
                       help="slurm: return once submitted; follow with --status OUT")


def make_launcher(args, out: Path, check_submit: bool = True, warn: bool = True) -> Launcher:
    """The launcher the options ask for, every option checked first (also for a dry run); with `check_submit`,
    a Slurm launcher also needs sbatch, checked before the study writes anything; `warn` once per command."""
    given = [f"--{name.replace('_', '-')}" for name in SLURM_OPTIONS if getattr(args, name) not in (None, False)]
    if args.launcher == "local":
        if given:  # the whole study would train on this machine (a cluster's login node)
            raise ValueError(f"{', '.join(given)} apply to --launcher slurm only; add --launcher slurm, or drop them")
        return LocalLauncher(args.workers)
    if args.workers != 1 and warn:
        log.warning("--workers %d is not used with --launcher slurm: --array-parallelism sets how many runs run "
                    "at once", args.workers)
    if (args.gpus_per_task or 0) < 0 or (args.mem is not None and args.mem <= 0) or (args.poll_seconds is not None and args.poll_seconds <= 0):
        raise ValueError("--gpus-per-task must be 0 or more, --mem and --poll-seconds positive")
    launcher = SlurmLauncher(out, partition=args.partition, wait=not args.no_wait, mem_gb=args.mem, **{
        field: getattr(args, name) for field, name in (("time_min", "time"), ("cpus_per_task", "cpus_per_task"),
                                                       ("gpus_per_task", "gpus_per_task"),
                                                       ("array_parallelism", "array_parallelism"),
                                                       ("poll_seconds", "poll_seconds"))
        if getattr(args, name) is not None})
    if check_submit and shutil.which("sbatch") is None:
        raise ValueError("--launcher slurm needs Slurm's sbatch on PATH; run this on the cluster's login node")
    return launcher

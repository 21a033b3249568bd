"""Ablation studies: every variant x seed under one budget, on the same unseen centers.

    python -m hybrid.experiment --preset ablation --seeds 3 --out runs/ablation
    python -m hybrid.experiment --preset ablation --seeds 3 --epochs 6 --workers 2 --out runs/ablation
    python -m hybrid.experiment --preset quick --out /tmp/quick              # CI-sized, about a minute
    python -m hybrid.experiment --preset ham10000 --variants erm,full --out runs/ham
    python -m hybrid.experiment --list                                        # presets and variants
    python -m hybrid.experiment --preset ablation --launcher slurm --partition cpu --time 240 \
        --cpus-per-task 4 --out /shared/runs/ablation                        # one Slurm job array
    python -m hybrid.experiment --status /shared/runs/ablation                # finished/running/failed/pending/unknown
    python -m hybrid.report runs/ablation                                     # tables and figures

OUT/<variant>/seed<k>/ is an ordinary `hybrid.train` run directory. A run is finished when
its report.json exists; finished runs are never touched again, so rerunning the command
resumes an interrupted study (a half-trained run continues from its last.pt). A run that
fails is logged with its traceback (and Slurm job id and log) to OUT/failures.jsonl and the
study goes on; rerun the command to retry it. With `--launcher slurm` the runs are one Slurm
job array (submitit): preempted or timed-out tasks are requeued and resume from last.pt, a
rerun submits only what is neither finished nor still queued, and the tasks write everything
into OUT themselves, so the submitting shell may die (or leave at once with --no-wait). OUT/study.json records the presets, variants, seeds, overrides and machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shlex
import socket
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

from hybrid.cli import command_line, positive_int, run_cli
from hybrid.algorithms import check_algorithm
from hybrid.config import ENVIRONMENT_FIELDS, TrainConfig, field_type, upgrade_fields
from hybrid.rundir import is_run_dir, write_json
from hybrid.studies.launchers import (Launcher, LocalLauncher, SlurmError, add_launcher_arguments,
                                      make_launcher)
from hybrid.studies.loso import FOLDS, loso_study, read_selection, select, write_selection
from hybrid.studies.presets import PRESETS
from hybrid.studies.runs import RunJob, is_finished, record_failure, run_dir, study_status

log = logging.getLogger("hybrid.experiment")

# Config fields that describe where a run ran, not what it is; they may differ on a rerun.
_ENVIRONMENT_FIELDS = {*ENVIRONMENT_FIELDS, "seed"}  # seeds are compared per run directory


@dataclass(frozen=True)
class Study:
    """What to train: a base config, named variants over it, and seeds."""

    preset: str
    base: dict
    variants: dict[str, dict]
    seeds: tuple[int, ...]
    notes: tuple[str, ...] = ()
    description: str = ""

    def config(self, variant: str, seed: int) -> TrainConfig:
        return TrainConfig(**(self.base | self.variants[variant] | {"seed": seed}))

    def runs(self) -> list[tuple[str, int]]:
        """Seed-major order: an interrupted study has whole seeds, which the report can pair."""
        return [(v, s) for s in self.seeds for v in self.variants]

    def to_dict(self) -> dict:
        return {"preset": self.preset, "description": self.description, "base": self.base,
                "variants": self.variants, "seeds": list(self.seeds), "notes": list(self.notes)}


def build_study(preset: str, *, seeds: int | None = None, variants: list[str] | None = None,
                overrides: dict | None = None) -> Study:
    """A preset with the CLI's changes; unknown presets, variants or config fields raise ValueError."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    chosen = dict(p.variants)
    if variants:
        unknown = [v for v in variants if v not in chosen]
        if unknown:
            raise ValueError(f"preset {preset!r} has no variant {unknown}; valid: {', '.join(chosen)}")
        chosen = {v: chosen[v] for v in variants}
    _check_overrides_reach_variants(overrides or {}, chosen)
    base = p.base | (overrides or {})
    known = {f.name for f in fields(TrainConfig)}
    bad = sorted({k for o in (base, *chosen.values()) for k in o} - known)
    if bad:
        raise ValueError(f"unknown TrainConfig fields {bad}; see `python -m hybrid.train --help`")
    study = Study(preset, base, chosen, tuple(range(p.seeds if seeds is None else seeds)), p.notes,
                  p.description)
    for v in study.variants:
        try:
            check_algorithm(study.config(v, 0))  # fail now, not an hour into the study
        except ValueError as exc:
            raise ValueError(f"variant {v}: {exc}") from None
    return study


# flags a smoke test sets for a whole study: a variant's own value (e.g. a refit's 3 epochs) wins with a warning
BUDGET_FLAGS = ("epochs", "max_train_samples", "data_root")


def _check_overrides_reach_variants(overrides: dict, variants: dict[str, dict]) -> None:
    """A setting for every variant that some variants set themselves would not reach them (the variant's value
    wins): refuse it, or for the budget flags say which variants keep their own value."""
    if "seed" in overrides:
        raise ValueError("--set seed: a study's seeds are 0..N-1 from --seeds N (each run's seed is part of its "
                         "folder name); leave seed out of --set")
    for key, value in overrides.items():
        own = [name for name, settings in variants.items() if key in settings and settings[key] != value]
        if not own:
            continue
        if key in BUDGET_FLAGS:
            log.warning("%s=%s does not reach %s, which set %s themselves (%s)", key, value, ", ".join(own), key,
                        ", ".join(sorted({repr(variants[n][key]) for n in own})))
            continue
        others = [name for name in variants if name not in own]
        split = (f"; to give it to the others only, run them in two commands into the same --out: --variants "
                 f"{','.join(others)} --set {key}=..., then --variants {','.join(own)}" if others else "")
        raise ValueError(f"--set {key}={value} would not reach the variants {', '.join(own)}, which set {key} "
                         f"themselves (a variant's settings win over --set); leave {key} out of --set, or choose "
                         f"other variants with --variants{split}")


def _parse_bool(key: str, value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"--set {key} expects true or false, got {value!r}")
    return value.lower() in ("true", "1", "yes")


def parse_override(text: str) -> tuple[str, object]:
    """`key=value` for a TrainConfig field, the value converted to the field's type."""
    key, sep, value = text.partition("=")
    key = key.strip().replace("-", "_")
    if key == "dann" and sep:  # the older spelling of the algorithm
        return next(iter(upgrade_fields({"dann": _parse_bool(key, value)}).items()))
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    if not sep or key not in defaults:
        raise ValueError(f"--set expects KEY=VALUE with KEY a TrainConfig field, got {text!r}")
    kind = field_type(key)
    if value.lower() in ("none", "null") and defaults[key] is None:
        return key, None
    if kind is bool:
        return key, _parse_bool(key, value)
    try:
        return key, kind(value)
    except ValueError:
        raise ValueError(f"--set {key} expects a number, got {value!r}") from None


def machine_info() -> dict:
    """Where the study ran, for the report's results section."""
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        memory = f"{kb / 2**20:.0f} GiB"
    return {"host": socket.gethostname(), "cpu": cpu, "cores": _cores(), "memory": memory,
            "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_existing(study: Study, out: Path) -> None:
    """Refuse to mix budgets: a run directory already there must hold the same config, and the variants trained
    into `out` before must share every setting that neither they nor the new variants set themselves (the report
    pairs them as one study)."""
    _check_shared_settings(study, out)
    for variant, seed in study.runs():
        path = run_dir(out, variant, seed) / "config.json"
        if not path.is_file():
            continue
        diff = _differences(TrainConfig.load(path), study.config(variant, seed), _ENVIRONMENT_FIELDS)
        if diff:
            raise ValueError(f"{path.parent} was made with {', '.join(diff)}; a study compares runs "
                             "with one budget, so use a new --out (or the same settings) for this one")


def _check_shared_settings(study: Study, out: Path) -> None:
    path = Path(out) / "study.json"
    spec = json.loads(path.read_text()) if path.is_file() else {}
    earlier = {v: c for v, c in spec.get("configs", {}).items() if v not in study.variants}  # others: per run
    for old, old_config in earlier.items():
        before = TrainConfig.from_dict(old_config)
        unrecorded = {f.name for f in fields(TrainConfig)} - set(old_config)  # fields newer than that study.json
        for new in study.variants:
            own = set(spec.get("variants", {}).get(old, {})) | set(study.variants[new])
            diff = _differences(before, study.config(new, 0), own | unrecorded | _ENVIRONMENT_FIELDS)
            if diff:
                raise ValueError(f"variant {old!r} in {out} was trained with {', '.join(diff)}; a study compares "
                                 f"its variants under one budget, so use a new --out for {new!r} (or the same "
                                 "settings); hybrid.report can still read both folders together")


def _differences(before: TrainConfig, now: TrainConfig, ignore: set[str]) -> list[str]:
    return [f"{k}={old!r} (now {new!r})" for k, old, new in before.differences(now, ignore=tuple(ignore))]


def _write_study(study: Study, out: Path, command: str | None, workers: int, launcher: str = "local") -> None:
    """Create or extend study.json: variants and seeds accumulate over reruns."""
    path = out / "study.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    spec = study.to_dict()
    spec["variants"] = data.get("variants", {}) | study.variants
    spec["seeds"] = sorted(set(data.get("seeds", [])) | set(study.seeds))
    spec["configs"] = data.get("configs", {}) | {
        v: {k: x for k, x in study.config(v, 0).to_dict().items() if k != "seed"} for v in study.variants}
    # with Slurm the runs train on the cluster's nodes (each run's report names its host), not where this runs
    spec["machine"] = machine_info() | {"launcher": launcher}
    spec["invocations"] = data.get("invocations", []) + [
        {"command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "workers": workers,
         "launcher": launcher, "variants": list(study.variants), "seeds": list(study.seeds)}]
    write_json(spec, path)


def run_study(study: Study, out: Path, *, workers: int = 1, threads: int | None = None,
              progress: bool = True, command: str | None = None, launcher: Launcher | None = None) -> dict:
    """Train every unfinished run of `study` under `out`; returns finished, skipped and failed runs.

    The runs go to `launcher` (default: this machine, `workers` processes), each with `threads`
    torch threads (default: the launcher's share of the cores). Finished runs are skipped.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_existing(study, out)
    launcher = launcher or LocalLauncher(workers)
    _write_study(study, out, command, workers, launcher.name)
    runs = study.runs()
    todo = [(v, s) for v, s in runs if not is_finished(run_dir(out, v, s))]
    summary = {"finished": [], "skipped": [f"{v}/seed{s}" for v, s in runs if (v, s) not in todo], "failed": []}
    if summary["skipped"]:
        log.info("%d of %d runs already finished; skipping them", len(summary["skipped"]), len(runs))
    per_run = threads or launcher.threads_per_run(len(todo), _cores())
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="runs", unit="run", disable=not progress)

    def done(job: RunJob, result: dict) -> None:
        if result.get("ok"):
            summary["finished"].append(job.name)
            log.info("%s: unseen AUC mean %.4f, worst %.4f%s", job.name, result["auc_mean"], result["auc_worst"],
                     f" ({result['seconds'] / 60:.1f} min)" if result.get("seconds") else "")
            bar.set_postfix_str(f"{job.name} AUC {result['auc_mean']:.3f}")
        else:
            summary["failed"].append(job.name)
            if not result.get("recorded"):
                record_failure(out, job, result, **({"slurm_job": result["slurm_job"]} if "slurm_job" in result else {}))
        bar.update()

    launcher.launch([RunJob(v, s, study.config(v, s), run_dir(out, v, s), per_run, command) for v, s in todo], done)
    bar.close()
    return summary


def _list_presets() -> str:
    lines = []
    for name, p in PRESETS.items():
        lines.append(f"{name}: {p.description}\n  seeds {p.seeds}; base {p.base or '{} (TrainConfig defaults)'}")
        lines += [f"  {v}: {o}" for v, o in p.variants.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybrid.experiment", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="ablation")
    parser.add_argument("--out", help="study directory (default: runs/<preset>)")
    parser.add_argument("--seeds", type=positive_int, help="seeds 0..N-1 (default: the preset's)")
    parser.add_argument("--variants", help="comma-separated subset of the preset's variants")
    parser.add_argument("--workers", type=positive_int, default=1, help="runs trained in parallel processes")
    parser.add_argument("--threads", type=positive_int, help="torch threads per run (default: cores // workers)")
    parser.add_argument("--epochs", type=positive_int, help="override the preset's epochs")
    parser.add_argument("--max-train-samples", type=positive_int, help="train on a random subset of this size")
    parser.add_argument("--data-root", help="folder holding the data (default: $HYBRID_DATA_ROOT)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other TrainConfig field for every variant, e.g. --set n_bootstrap=200")
    parser.add_argument("--validation", choices=("training_domain", "loso"), default="training_domain",
                        help="model selection: training_domain (each run selects its epoch on source validation "
                             "data; default) or loso (first leave-one-source-out runs inside the training clinic "
                             "choose the variant, written to OUT/selection.md; multi-center presets)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state; train nothing")
    parser.add_argument("--status", metavar="OUT", help="show each run of the study in OUT: finished, running, "
                        "failed or pending; train nothing")
    add_launcher_arguments(parser)
    parser.add_argument("--list", action="store_true", help="list presets and their variants")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    return run_cli(lambda: _run(args, command_line("python -m hybrid.experiment", argv)), verbose=False,
                   extra_errors=(SlurmError,))


def requested_runs(spec: dict) -> list[tuple[str, int]]:
    """The (variant, seed) pairs the study's invocations asked for, seed-major in the study's variant order (older
    study.json files without per-invocation variants and seeds: every variant with every seed)."""
    asked = {(v, s) for i in spec.get("invocations", []) for v in i.get("variants", []) for s in i.get("seeds", [])}
    order = list(spec.get("variants", {}))
    every = [(v, s) for s in spec.get("seeds", []) for v in order]
    return [run for run in every if run in asked] if asked else every


def print_status(out: Path) -> int:
    """Each run's state; a study with leave-one-source-out validation lists its fold runs first."""
    out = Path(out)
    spec_path = out / "study.json"
    if not spec_path.is_file():
        raise FileNotFoundError(f"{spec_path} does not exist; is {out} a study directory of hybrid.experiment?")
    folds = out / FOLDS
    if (folds / "study.json").is_file():
        print(f"leave-one-source-out fold runs ({folds}):")
        _print_states(folds)
        chosen = (read_selection(out) or {}).get("selected")
        print(f"selection: {chosen or 'none yet'}\n\nthe study's runs:")
    _print_states(out)
    return 0


def _print_states(out: Path) -> None:
    rows = study_status(out, requested_runs(json.loads((out / "study.json").read_text())))
    width = max(len(f"{r['variant']}/seed{r['seed']}") for r in rows) if rows else 10
    for r in rows:
        print(f"{r['variant'] + '/seed' + str(r['seed']):{width}s}  {r['state']:8s}  {r['detail']}")
    counts = {state: sum(r["state"] == state for r in rows) for state in ("finished", "running", "failed", "pending")}
    counts |= {"unknown": n for n in [sum(r["state"] == "unknown" for r in rows)] if n}  # squeue did not answer
    print(", ".join(f"{n} {state}" for state, n in counts.items()))


def _run(args, command: str) -> int:
    log.setLevel(logging.INFO)
    if args.list:
        print(_list_presets())
        return 0
    if args.status:
        return print_status(Path(args.status))
    overrides = dict(parse_override(s) for s in args.set)
    for key in BUDGET_FLAGS:
        flag = getattr(args, key)
        if flag is not None and key in overrides and overrides[key] != flag:
            raise ValueError(f"--{key.replace('_', '-')} {flag} and --set {key}={overrides[key]} disagree; "
                             "give one of them")
        if flag is not None:
            overrides[key] = flag
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    study = build_study(args.preset, seeds=args.seeds, variants=variants, overrides=overrides)
    out = Path(args.out or f"runs/{args.preset}")
    if is_run_dir(out):
        raise ValueError(f"--out {out} is a run directory of hybrid.train, not a study; give the study a folder of "
                         "its own (its runs go into OUT/<variant>/seed<N>)")
    stages = [(loso_study(study), out / FOLDS)] if args.validation == "loso" else []
    launcher = make_launcher(args, out, check_submit=not args.dry_run)  # before anything is written
    if args.dry_run:
        for stage, where in [*stages, (study, out)]:
            check_existing(stage, where)
            for v, s in stage.runs():
                print(f"{'finished' if is_finished(run_dir(where, v, s)) else 'to do':9s} {run_dir(where, v, s)}")
        return 0
    fold_failures = []
    for folds, where in stages:
        fold_summary = run_study(folds, where, workers=args.workers, threads=args.threads, progress=not args.quiet,
                                 command=command, launcher=make_launcher(args, where, warn=False))
        if args.launcher == "slurm" and args.no_wait:  # the folds are only queued: nothing to select from yet
            print(f"leave-one-source-out fold runs submitted; once they finish (--status {shlex.quote(str(out))}) "
                  "rerun this command to write the selection")
            continue
        fold_failures = [f"{FOLDS}/{name}" for name in fold_summary["failed"]]
        print(f"leave-one-source-out folds: {_counts_line(fold_summary)}")
        selection = select(study, where)
        write_selection(selection, out)
        print(f"leave-one-source-out selection: {selection['selected'] or _why_none(selection['gaps'])} "
              f"(scores in {out / 'selection.md'})")
    summary = run_study(study, out, workers=args.workers, threads=args.threads, progress=not args.quiet,
                        command=command, launcher=launcher)
    if args.launcher == "slurm" and args.no_wait:
        print(f"submitted; follow with: python -m hybrid.experiment --status {shlex.quote(str(out))}")
        return 0
    finished = summary["finished"] or summary["skipped"]  # nothing to report when every run failed
    print(_counts_line(summary) + (f"; next: python -m hybrid.report {shlex.quote(str(out))}" if finished else ""))
    if summary["failed"] or fold_failures:
        print(f"failed runs: {', '.join(fold_failures + summary['failed'])} (see failures.jsonl in "
              f"{out}{' and ' + str(out / FOLDS) if fold_failures else ''}; rerun to retry)", file=sys.stderr)
        return 1
    return 0


def _why_none(gaps: list[str]) -> str:
    """Why no variant was selected: the first incomplete fold run, and how many more there are."""
    if not gaps:  # every fold scored, and still none (no variant listed)
        return "none"
    return f"none: {gaps[0]}" + (f" (and {len(gaps) - 1} more)" if len(gaps) > 1 else "")


def _counts_line(summary: dict) -> str:
    return (f"{len(summary['finished'])} trained, {len(summary['skipped'])} already finished, "
            f"{len(summary['failed'])} failed")


if __name__ == "__main__":
    sys.exit(main())

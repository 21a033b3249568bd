"""Evaluate a trained run on unseen centers: `python -m hybrid.evaluate --run RUN_DIR`.

    python -m hybrid.evaluate --run runs/default                       # its own dataset, virtual target centers
    python -m hybrid.evaluate --run runs/default --data other.npz      # test_* arrays, or images/labels
    python -m hybrid.evaluate --run runs/ham --data clinics.npz [--centers a,b]  # every center its own domain
    python -m hybrid.evaluate --run runs/default --data hospitals/     # root/<center>/<class>/*.png
    python -m hybrid.evaluate --run runs/default --tta bn --backend aer --shots 1000
    python -m hybrid.evaluate --run runs/default --backend aer_noisy --noise-model fake_brisbane
    python -m hybrid.evaluate --run runs/default --backend ibm_runtime --ibm-backend ibm_brisbane \\
        --max-samples 200 --dry-run                  # what it would send and cost; nothing submitted
    python -m hybrid.evaluate --run runs/default --backend ibm_runtime --ibm-backend ibm_brisbane \\
        --max-samples 200 --max-qpu-seconds 60 [--resume]

Writes `eval_<name>.json` and `eval_<name>.md` into the run directory and appends a JSON line
to its `results.jsonl`. On a sampling, noisy or remote backend only the quantum layer leaves
the machine: one job per batch; each finished batch is saved to `partial_<name>.jsonl`, so
a failed job loses nothing and `--resume` continues. The report's `quantum_execution` block
counts jobs, circuits, shots, wall time and QPU seconds, reported and estimated; a live run
that reports its usage calibrates the estimate's rate (`qpu_rates.json` in the run directory).
`--dry-run` plans the evaluation (jobs, PUBs, circuits, shots, the ISA circuit, QPU seconds)
and submits nothing; `--max-qpu-seconds` refuses a plan whose estimate is over budget.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from hybrid.config import TrainConfig
from hybrid.data import resolve_data_root
from hybrid.domains import (Domains, build_eval_domains, check_labels, domains_from_data, first_samples, is_unseen,
                            load_bundle)
from hybrid.inference import check_tta_on_backend, evaluate_domains
from hybrid.metrics import summarize
from hybrid.reporting import format_table
from hybrid.rundir import append_result, file_part, json_text, load_run, write_json, write_text
from hybrid.shifts import CENTER_SETS
from hybrid.tta import TTA_METHODS

log = logging.getLogger("hybrid.evaluate")

BACKEND_FLAGS = ("shots", "precision", "seed", "noise_model", "depolarizing", "readout_error", "ibm_backend",
                 "resilience_level", "dd", "twirling", "batch_mode")


class Interrupted(RuntimeError):
    """A backend job failed or timed out; finished batches are saved for --resume."""


def select_domains(args, cfg: TrainConfig, ckpt: dict, root) -> tuple[Domains, str]:
    """The domains to score and the evaluation's default name."""
    if args.data:
        domains = domains_from_data(args.data, cfg, ckpt["in_channels"], ckpt["n_classes"], root, args.centers,
                                    ckpt.get("class_names"), ckpt.get("class_ids"))
        return domains, Path(args.data).stem
    center_set = args.centers or "target"
    if center_set not in CENTER_SETS:
        own = (f"; to score this run's own centers by name, add --data {cfg.dataset}"
               if str(cfg.dataset).endswith(".npz") else "")
        raise ValueError(f"--centers {center_set!r} is not a virtual center set ({', '.join(CENTER_SETS)}); "
                         f"center names are for a multi-center --data file{own}")
    dataset = args.dataset or cfg.dataset
    bundle = load_bundle(replace(cfg, dataset=dataset), root)
    if args.dataset:  # another dataset's classes must be the run's, before any image is scored
        check_labels(bundle.test.labels, ckpt["n_classes"], f"--dataset {dataset}")
    domains = build_eval_domains(cfg, bundle, ckpt["in_channels"], center_set)
    return domains, Path(dataset).stem + ("" if center_set == "target" else f"_{center_set}")


def open_partial(args, run_dir: Path, name: str, cfg, ckpt, backend, tta: str, batch_size: int, domains):
    """Per-batch results of a sampling, noisy or remote backend, saved as they arrive (None when exact)."""
    from backends.partial import PartialResults

    if backend.exact:
        return None
    settings = {"backend": backend.label, "options": backend.options, "tta": tta, "batch_size": batch_size,
                "data": args.data or args.dataset or cfg.dataset, "max_samples": args.max_samples,
                "checkpoint_epoch": ckpt.get("epoch"), "domains": {k: len(y) for k, (_, y) in domains.items()}}
    partial = PartialResults(run_dir / f"partial_{name}.jsonl", settings, backend.stats, resume=args.resume)
    if partial.records:
        log.info("resuming: %d samples already evaluated in %s", partial.n_samples, partial.path)
    return partial


def execution_summary(partial, domains: Domains, batch_size: int) -> dict:
    if partial is None:
        return {"engine": "statevector (torch, exact)", "jobs": 0, "circuits": 0, "shots": 0,
                "samples": sum(len(y) for _, y in domains.values()), "wall_seconds": None, "qpu_seconds": None,
                "estimated_qpu_seconds": None}
    return {"engine": "estimator (one job per batch)"} | partial.totals() | {
        "batch_size": batch_size, "resumed_batches": partial.reused}


def evaluation_inputs(args, cfg: TrainConfig, ckpt: dict, backend) -> tuple[Domains, str, str, int]:
    """What an evaluation scores and how: (domains, name, TTA method, batch size)."""
    tta = args.tta or cfg.tta
    check_tta_on_backend(tta, backend)
    batch_size = args.batch_size or cfg.eval_batch_size
    domains, name = select_domains(args, cfg, ckpt, resolve_data_root(args.data_root or cfg.data_root))
    if backend.label != cfg.backend or not backend.exact:
        name = f"{name}_{backend.label}"  # results on another backend do not overwrite the run's own
    if tta != cfg.tta:
        name = f"{name}_tta-{tta}"  # nor do those with another TTA method
    if args.max_samples:
        domains = first_samples(domains, args.max_samples)
        name = f"{name}_max{args.max_samples}"  # nor a quick look at a few samples
    return domains, file_part(args.name, "--name") if args.name else file_part(name), tta, batch_size


def evaluation_threshold(args, run_dir: Path, cfg: TrainConfig, ckpt: dict, model, backend, tta: str) -> float:
    """The decision threshold: the run's own (chosen on source validation under its TTA), or, for another TTA on the
    exact engine, chosen again on the same source validation under that TTA, as hybrid.train does for its no-TTA
    results (a threshold fits one method's probabilities). Refused before any prediction for a run whose training
    stopped before its final evaluation chose one."""
    if ckpt.get("threshold") is None:
        raise ValueError(f"{run_dir}: best.pt has no decision threshold yet (training stopped before its final "
                         f"evaluation); finish the run first: python -m hybrid.train --resume --out {run_dir}")
    if tta == cfg.tta:
        return ckpt["threshold"]
    if not backend.exact:  # choosing it again would run the source validation images on the backend as well
        log.warning("sensitivity and specificity use the run's threshold, chosen under TTA %s, not %s", cfg.tta, tta)
        return ckpt["threshold"]
    from hybrid.train import source_validation_threshold

    return source_validation_threshold(model, cfg, args.data_root, tta, ckpt["positive_class"])


def record_qpu_usage(execution: dict, run_dir: Path, backend) -> None:
    """Add the rate to a QPU evaluation's execution block; calibrate it where the service reported usage."""
    from backends.budget import calibrate

    if backend.qpu_rate is None:
        return
    execution["qpu_rate"] = backend.qpu_rate.to_dict()
    if execution.get("qpu_seconds") and execution.get("estimated_qpu_seconds"):
        execution["qpu_rate_update"] = calibrate(run_dir, backend.qpu_rate, execution["qpu_seconds"],
                                                 execution["estimated_qpu_seconds"])


def scored_inputs(args) -> dict:
    """What an evaluation scored, comparable between commands: a file or folder by its absolute path."""
    if args.data:
        return {"data": str(Path(args.data).resolve()) if Path(args.data).exists() else args.data,
                "centers": args.centers}
    return {"dataset": args.dataset, "centers": args.centers}


def unclaimed_name(run_dir: Path, name: str, inputs: dict) -> str:
    """`name`, or `name` and a digest of `inputs` when eval_<name>.json holds the results of other data or
    centers (the same folder name elsewhere, --data X after --dataset X, other --centers): never overwrite them."""
    try:
        earlier = json.loads((run_dir / f"eval_{name}.json").read_text()).get("inputs")
    except (OSError, ValueError, AttributeError):
        return name
    if earlier is None or earlier == inputs:  # the same evaluation again (or one written before inputs were kept)
        return name
    unique = f"{name}_{hashlib.sha1(json_text(inputs).encode()).hexdigest()[:6]}"
    log.warning("eval_%s.json holds the evaluation of other data or centers (%s); this one is eval_%s",
                name, ", ".join(f"{k} {v}" for k, v in earlier.items() if v), unique)
    return unique


def evaluate_run(args, run_dir: Path, cfg: TrainConfig, model, ckpt: dict, backend) -> dict:
    """Score the run on the chosen domains and write eval_<name>.json/.md and a results.jsonl line."""
    from backends import JobError

    started = time.perf_counter()
    domains, name, tta, batch_size = evaluation_inputs(args, cfg, ckpt, backend)
    inputs = scored_inputs(args)
    if not args.name:
        name = unclaimed_name(run_dir, name, inputs)
    ckpt = ckpt | {"threshold": evaluation_threshold(args, run_dir, cfg, ckpt, model, backend, tta)}
    partial = open_partial(args, run_dir, name, cfg, ckpt, backend, tta, batch_size, domains)
    try:
        per_domain, _ = evaluate_domains(
            model, domains, threshold=ckpt["threshold"], positive_class=ckpt["positive_class"], tta=tta,
            batch_size=batch_size, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed, partial=partial,
        )
    except JobError as exc:
        raise Interrupted(f"{exc}; {partial.n_samples} samples are saved in {partial.path}; rerun the same "
                          "command with --resume to continue") from None
    unseen = [k for k in per_domain if is_unseen(k)]
    result = {
        "kind": "evaluation", "name": name, "run": str(run_dir), "data": args.data or args.dataset or cfg.dataset,
        "backend": backend.name, "backend_description": backend.description, "backend_options": backend.options,
        "tta": tta, "max_samples": args.max_samples, "threshold": ckpt["threshold"], "positive_class": ckpt["positive_class"],
        "domains": per_domain, "unseen": unseen, "summary": summarize(per_domain, unseen),
        "inputs": inputs, "quantum_execution": execution_summary(partial, domains, batch_size),
        "seconds": time.perf_counter() - started, "config": cfg.to_dict(),
    }
    record_qpu_usage(result["quantum_execution"], run_dir, backend)
    write_json(result, run_dir / f"eval_{name}.json")
    write_text(
        f"# Evaluation of {run_dir.name} on {result['data']}\n\nbackend: {backend.description}; "
        f"TTA: {tta}; threshold (source validation): {ckpt['threshold']:.4f}\n\n"
        f"{format_table(per_domain, result['summary'], unseen=unseen)}\n" + (f"\n{execution_line(result)}\n" if partial else ""),
        run_dir / f"eval_{name}.md")
    append_result(run_dir, result)
    if partial is not None:
        partial.remove()
    return result


def execution_line(result: dict) -> str | None:
    """One line on the jobs a non-exact backend ran, or None for the exact engine."""
    e = result["quantum_execution"]
    if e["engine"].startswith("statevector"):
        return None
    qpu = f"{e['qpu_seconds']:.1f} s reported" if e["qpu_seconds"] is not None else "not reported"
    if e.get("estimated_qpu_seconds") is not None:
        qpu += f", {e['estimated_qpu_seconds']:.1f} s estimated"
        if e["qpu_seconds"]:
            qpu += f" (reported / estimated = {e['qpu_seconds'] / max(e['estimated_qpu_seconds'], 1e-12):.2f})"
    line = (f"{result['backend_description']}: {e['jobs']} jobs, {e['circuits']} circuits, {e['shots']} shots, "
            f"{e['wall_seconds'] or 0:.1f} s waiting for jobs, QPU time {qpu}")
    if "qpu_rate_update" in e:
        line += f"; the estimate's rate is now calibrated by {e['qpu_rate_update']['runs']} live run(s)"
    return line


def main(argv: list[str] | None = None) -> int:
    from backends import BACKENDS
    from hybrid.cli import positive_int, run_cli

    parser = argparse.ArgumentParser(prog="python -m hybrid.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="run directory written by hybrid.train")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", help=".npz (MedMNIST layout, images/labels, or multi-center) or a center folder")
    source.add_argument("--dataset", help="MedMNIST name: its test split under the virtual target centers")
    parser.add_argument("--data-root", help="folder with MedMNIST files (default: $HYBRID_DATA_ROOT)")
    parser.add_argument("--centers", default=None,
                        help="with --dataset or the run's own data: the virtual center set "
                             f"({' or '.join(CENTER_SETS)}; default target: the reported unseen centers; validation: "
                             "for comparing method variants); with a multi-center --data file: the centers to "
                             "score (comma-separated names or ids; default: every center in it, except the run's own file, "
                             "where it is the run's held-out centers)")
    parser.add_argument("--tta", choices=tuple(TTA_METHODS), help="default: the run's setting")
    parser.add_argument("--backend", choices=sorted(BACKENDS), help="default: the run's backend")
    parser.add_argument("--max-samples", type=positive_int, help="evaluate at most this many samples per domain")
    parser.add_argument("--batch-size", type=positive_int,
                        help="samples per batch, i.e. per job (default: the run's)")
    parser.add_argument("--name", help="name of the evaluation files (default: from the data and backend)")
    parser.add_argument("--resume", action="store_true", help="reuse the batches saved by an interrupted evaluation")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when torch sees a GPU, else CPU), cpu, cuda, cuda:N or mps (default: auto)")
    q = parser.add_argument_group("backend options (those that apply to the chosen --backend)")
    q.add_argument("--shots", type=int, help="shots per circuit (aer, aer_noisy, ibm_runtime)")
    q.add_argument("--precision", type=float, help="target precision instead of shots")
    q.add_argument("--seed", type=int, help="simulator and transpiler seed")
    q.add_argument("--noise-model", help="aer_noisy: fake device, e.g. fake_brisbane, fake_manila")
    q.add_argument("--depolarizing", help="aer_noisy: depolarizing rate P, or P1,P2 for 1- and 2-qubit gates")
    q.add_argument("--readout-error", type=float, help="aer_noisy: symmetric readout error probability")
    q.add_argument("--ibm-backend", help="ibm_runtime: device (default: least busy); fake_* runs locally")
    q.add_argument("--resilience-level", type=int, choices=(0, 1, 2), help="ibm_runtime: error mitigation level")
    q.add_argument("--dd", action=argparse.BooleanOptionalAction, default=None,
                   help="ibm_runtime: dynamical decoupling")
    q.add_argument("--twirling", action=argparse.BooleanOptionalAction, default=None,
                   help="ibm_runtime: gate and measurement twirling")
    mode = q.add_mutually_exclusive_group()
    mode.add_argument("--batch-mode", dest="batch_mode", action="store_const", const=True,
                      help="ibm_runtime: submit the jobs in a Runtime batch (default)")
    mode.add_argument("--job-mode", dest="batch_mode", action="store_const", const=False,
                      help="ibm_runtime: submit plain jobs")
    q.add_argument("--job-timeout", type=float, help="seconds to wait for one job before stopping")
    budget = parser.add_argument_group("QPU budget")
    budget.add_argument("--dry-run", action="store_true",
                        help="transpile and plan the evaluation (jobs, PUBs, circuits, shots, ISA depth and two-qubit "
                             "gates, estimated QPU seconds), print it and submit nothing")
    budget.add_argument("--max-qpu-seconds", type=float,
                        help="refuse to submit when the planned evaluation is estimated to need more QPU seconds "
                             "(with --resume the estimate counts the saved batches too)")
    args = parser.parse_args(argv)
    return run_cli(lambda: _run(args), exit_codes={Interrupted: 3})


def refuse_backend_without_circuit(args, options: dict, run_dir: Path) -> None:
    """A backend runs only the circuit: on a network without one, --backend and its options would change nothing
    while the results' name and the plan's "0 jobs" suggest it ran there. Checked on the config, before any
    backend is built (an IBM service would ask for credentials first)."""
    from hybrid.heads import CIRCUIT_LAYERS
    from hybrid.rundir import load_config

    if not (args.backend or options) or not (run_dir / "config.json").is_file():
        return  # load_run says what is wrong with a folder that is not a run
    cfg = load_config(run_dir / "config.json")
    if not cfg.quantum or cfg.quantum_layer not in CIRCUIT_LAYERS:
        why = "trained with --no-quantum" if not cfg.quantum else f"its quantum layer is {cfg.quantum_layer!r}"
        given = f"--backend {args.backend}" if args.backend else "backend options"
        raise ValueError(f"{run_dir} has no circuit for a backend to run ({why}); evaluate it without {given}"
                         + (" and the backend options" if args.backend and options else ""))


def plan_evaluation(args, run_dir: Path, options: dict) -> dict:
    """The evaluation's plan on a dry-run backend: counts every job, submits none."""
    from hybrid.qpu_budget import plan_forward

    cfg, model, ckpt, backend = load_run(run_dir, args.backend, dry_run=True, **options)
    try:
        domains, _, tta, batch_size = evaluation_inputs(args, cfg, ckpt, backend)
        return plan_forward(model, domains, backend, tta=tta, batch_size=batch_size, progress=True)
    finally:
        backend.close()


def _run(args) -> int:
    from hybrid.qpu_budget import check_budget, plan_text

    run_dir = Path(args.run)
    options = {k: getattr(args, k) for k in BACKEND_FLAGS if getattr(args, k) is not None}
    refuse_backend_without_circuit(args, options, run_dir)
    if args.dry_run or args.max_qpu_seconds is not None:
        plan = plan_evaluation(args, run_dir, options)
        if args.dry_run:
            print(plan_text(plan))
        else:
            log.info("%s", plan_text(plan))
        check_budget([plan], args.max_qpu_seconds)
        if args.dry_run:
            return 0
    cfg, model, ckpt, backend = load_run(run_dir, args.backend, device=args.device, job_timeout=args.job_timeout,
                                         **options)
    try:
        result = evaluate_run(args, run_dir, cfg, model, ckpt, backend)
    finally:
        backend.close()
    print(format_table(result["domains"], result["summary"], unseen=result["unseen"]))
    line = execution_line(result)
    if line:
        print("\n" + line)
    print(f"\nwritten: {run_dir / ('eval_' + result['name'] + '.md')} (and .json)")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())

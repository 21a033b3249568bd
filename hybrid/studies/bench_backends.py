"""Benchmark a trained quantum layer on several backends: `python -m hybrid.bench_backends`.

    python -m hybrid.bench_backends --run runs/default \\
        --backends statevector,aer,aer:shots=1024,aer_noisy:fake_brisbane,ibm_runtime:fake_manila \\
        --samples 256 [--domains tgt_blur,tgt_speckle] [--out benchmarks/results/backends]

A backend spec is `name[:arg][:key=value...]`; `arg` is the shots of `aer`, the noise model of
`aer_noisy`, the device of `ibm_runtime`. `--dry-run` prints what each backend would be
sent and what it would cost in QPU seconds, and submits nothing; `--max-qpu-seconds S`
refuses to start when the plan's estimate is over S. Every backend sees the same images of the unseen
centers, the same encoder and TTA; only the quantum layer runs on it, through the estimator
(one job per batch) even where the backend is exact. Per backend: mean AUC and sensitivity
over the unseen centers, mean absolute error of the layer's outputs against the exact torch
engine on the very same inputs, quantum-layer latency per sample, jobs, circuits, shots and
QPU seconds. Writes `bench_backends.json`, `bench_backends.md` and `bench_backends.png` into
`--out` (default: the run directory) and appends one JSON line to its `results.jsonl`.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hybrid.cli import command_line, positive_int, run_cli
from hybrid.inference import gradient_free_tta, refuse_gradient_tta
from hybrid.qpu_budget import check_budget, plan_forward, quantum_layer_through
from hybrid.reporting import counted
from hybrid.rundir import append_result, write_json, write_text
from hybrid.studies import shot_sweep

log = logging.getLogger("hybrid.bench_backends")
REFERENCE = "exact (torch engine)"
DEFAULT_BACKENDS = "statevector,aer,aer:shots=1024,aer_noisy:fake_brisbane,ibm_runtime:fake_manila"


class _Recorder:
    """Wraps a runner factory: keeps every batch of angles and outputs, and the time spent."""

    def __init__(self, make_runner):
        self.make_runner = make_runner
        self.angles: list[np.ndarray] = []
        self.outputs: list[np.ndarray] = []
        self.seconds = 0.0

    def __call__(self, spec):
        runner = self.make_runner(spec)

        def run(angles: np.ndarray, weights: np.ndarray) -> np.ndarray:
            started = time.perf_counter()
            out = runner(angles, weights)
            self.seconds += time.perf_counter() - started
            self.angles.append(np.array(angles))
            self.outputs.append(np.array(out))
            return out

        return run


def _torch_runner(program):
    def make(_spec):
        return lambda angles, weights: program(torch.as_tensor(angles), torch.as_tensor(weights)).numpy()

    return make


def select_domains(domains: dict, names: list[str] | None, samples: int, seed: int) -> dict:
    """The unseen domains (all but `clean`, or `names`), `samples` random images each."""
    unseen = [k for k in domains if k != "clean"]
    if names:
        unknown = sorted(set(names) - set(unseen))
        if unknown:
            raise ValueError(f"unknown domain(s) {', '.join(unknown)}; valid: {', '.join(unseen)}")
        unseen = [k for k in unseen if k in names]
    out = {}
    for name in unseen:
        x, y = domains[name]
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:samples].sort().values
        out[name] = (x[keep], y[keep])
    return out


def mean_auc_interval(labels: dict, scores: dict, positive_class: int, n_bootstrap: int = 200,
                      seed: int = 0) -> list[float] | None:
    """95% percentile interval of the mean AUC over domains: each replicate resamples every domain's
    images (with replacement) and averages the domains' AUCs."""
    from hybrid.metrics import binary_auc

    if n_bootstrap < 1:
        return None
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(n_bootstrap):
        aucs = []
        for name, y in labels.items():
            pick = rng.integers(0, len(y), len(y))
            aucs.append(binary_auc(scores[name][pick], y[pick] == positive_class))
        means.append(np.nanmean(aucs))
    return [float(np.nanpercentile(means, 2.5)), float(np.nanpercentile(means, 97.5))]


def bench_backend(model, domains: dict, make_runner, *, ckpt: dict, tta: str, batch_size: int, exact_program,
                  weight: torch.Tensor, n_bootstrap: int = 0) -> dict:
    """Metrics, output error and cost of one backend on `domains` (the model is left unchanged)."""
    from hybrid.inference import predict_probs
    from hybrid.metrics import domain_metrics

    recorder = _Recorder(make_runner)
    per_domain, positive = {}, {}
    with quantum_layer_through(model, recorder), torch.no_grad():
        for name, (x, y) in domains.items():
            probs = predict_probs(model, x, tta, batch_size)
            m = domain_metrics(y.numpy(), probs, threshold=ckpt["threshold"], positive_class=ckpt["positive_class"],
                               n_bootstrap=0)
            per_domain[name] = {"auc": m["auc"], "sensitivity": m["sensitivity"], "n": len(y)}
            positive[name] = probs[:, ckpt["positive_class"]]
    angles, outputs = np.concatenate(recorder.angles), np.concatenate(recorder.outputs)
    with torch.no_grad():
        exact = exact_program(torch.as_tensor(angles), weight).numpy()
    n = len(angles)
    labels = {name: y.numpy() for name, (_, y) in domains.items()}
    return {
        "auc": float(np.nanmean([d["auc"] for d in per_domain.values()])),
        "auc_ci": mean_auc_interval(labels, positive, ckpt["positive_class"], n_bootstrap),
        "sensitivity": float(np.nanmean([d["sensitivity"] for d in per_domain.values()])),
        "mae": float(np.abs(outputs - exact).mean()),
        "max_abs_error": float(np.abs(outputs - exact).max()),
        "latency_ms": 1000 * recorder.seconds / n,
        "samples": n,
        "domains": per_domain,
        "positive_probs": positive,  # compared with the reference, then dropped
    }


def compare_decisions(row: dict, reference: dict, threshold: float) -> None:
    """How far the backend moves the predicted probability, and how many decisions flip."""
    diffs, flips = [], []
    for name, probs in row.pop("positive_probs").items():
        ref = reference[name]
        diffs.append(np.abs(probs - ref))
        flips.append((probs >= threshold) != (ref >= threshold))
    row["prob_mae"] = float(np.concatenate(diffs).mean())
    row["flip_rate"] = float(np.concatenate(flips).mean())


def _setup(run_dir: Path, specs: list[str], samples: int, domain_names, tta, batch_size, seed, data_root):
    """The trained model, its unseen domains and the parsed backend specs; bad input fails before any work."""
    from backends import parse_backend_spec
    from hybrid.domains import run_domains
    from hybrid.rundir import load_run

    cfg, model, ckpt, _ = load_run(run_dir, "statevector")
    if model.quantum is None:
        raise ValueError(f"{run_dir} was trained with --no-quantum; there is no quantum layer to benchmark")
    tta = tta or cfg.tta
    refuse_gradient_tta(tta, "a sampling backend")
    seed = cfg.seed if seed is None else seed
    batch_size = batch_size or cfg.eval_batch_size
    parsed = [parse_backend_spec(s) for s in specs]
    _check_backends(run_dir, parsed, seed)
    domains = select_domains(run_domains(cfg, ckpt["in_channels"], data_root), domain_names, samples, seed)
    return cfg, model, ckpt, {"tta": tta, "seed": seed, "batch_size": batch_size}, parsed, domains


def _check_backends(run_dir: Path, parsed: list[tuple[str, dict]], seed: int) -> None:
    """Build every backend that is built locally once, opening nothing, so a bad option value or device name
    fails before the baseline runs and before an earlier benchmark's files are replaced. A live IBM device is
    left to its own row: an unreachable service must not cost the other backends theirs."""
    for name, options in parsed:
        if name == "ibm_runtime" and not str(options.get("ibm_backend", "")).startswith("fake_"):
            continue
        _make_backend(run_dir, name, options, seed, dry_run=True).close()


def _make_backend(run_dir: Path, name: str, options: dict, seed: int, dry_run: bool = False):
    from backends import get_backend
    from backends.budget import stored_rate

    backend = get_backend(name, dry_run=dry_run, **({"seed": seed} | options))
    backend.qpu_rate = stored_rate(run_dir, backend.qpu_rate)
    return backend


def plan_bench(run_dir: Path, specs: list[str], *, samples: int, domain_names: list[str] | None = None,
               tta: str | None = None, batch_size: int | None = None, seed: int | None = None,
               data_root: str | None = None, progress: bool = True) -> dict:
    """What the benchmark would send to each backend (a dry run: nothing is submitted)."""
    cfg, model, ckpt, settings, parsed, domains = _setup(run_dir, specs, samples, domain_names, tta, batch_size,
                                                         seed, data_root)
    plans = []
    for spec, (name, options) in zip(specs, parsed):
        backend = _make_backend(run_dir, name, options, settings["seed"], dry_run=True)
        try:
            with quantum_layer_through(model, backend.make_runner):
                plan = plan_forward(model, domains, backend, tta=settings["tta"], batch_size=settings["batch_size"],
                                    progress=progress)
        finally:
            backend.close()
        plans.append({"spec": spec} | plan | {"exact": False})  # the benchmark sends exact backends jobs too
    return {"kind": "bench_backends_plan", "run": str(run_dir), "samples_per_domain": samples,
            "domains": list(domains), **settings, "plans": plans}


def run_bench(run_dir: Path, specs: list[str], *, samples: int, domain_names: list[str] | None = None,
              tta: str | None = None, batch_size: int | None = None, seed: int | None = None,
              data_root: str | None = None, progress: bool = True, n_bootstrap: int = 0) -> dict:
    from tqdm.auto import tqdm

    from backends import JobError

    cfg, model, ckpt, settings, parsed, domains = _setup(run_dir, specs, samples, domain_names, tta, batch_size,
                                                         seed, data_root)
    tta, seed, batch_size = settings["tta"], settings["seed"], settings["batch_size"]
    exact_program, weight = model.quantum.program, model.quantum.weight.detach()

    rows = []
    jobs = [(REFERENCE, None, {})] + [(spec, name, opts) for spec, (name, opts) in zip(specs, parsed)]
    for spec, name, options in tqdm(jobs, desc="backends", unit="backend", disable=not progress):
        row = {"backend": spec}
        started = time.perf_counter()
        backend = None
        try:
            if name is None:
                make_runner, row["description"] = _torch_runner(exact_program), "exact statevector, batched torch"
            else:
                backend = _make_backend(run_dir, name, options, seed)
                make_runner, row["description"] = backend.make_runner, backend.description
                row["options"] = backend.options
            row["setup_seconds"] = time.perf_counter() - started
            row |= bench_backend(model, domains, make_runner, ckpt=ckpt, tta=tta, batch_size=batch_size,
                                 exact_program=exact_program, weight=weight, n_bootstrap=n_bootstrap)
            row |= _cost(backend, run_dir)
        except (ValueError, JobError) as exc:  # one backend failing must not cost the others their rows
            row["error"] = str(exc)
            log.warning("%s: %s", spec, exc)
        finally:
            if backend is not None:
                backend.close()
        row["seconds"] = time.perf_counter() - started
        rows.append(row)
    ref = rows[0]
    ref_probs = dict(ref.get("positive_probs", {}))
    for row in rows:
        if "auc" in row:
            row["delta_auc"] = row["auc"] - ref["auc"]
            compare_decisions(row, ref_probs, ckpt["threshold"])
    return {
        "kind": "bench_backends", "run": str(run_dir), "dataset": cfg.dataset, "tta": tta,
        "samples_per_domain": samples, "domains": list(domains), "batch_size": batch_size, "seed": seed,
        "threshold": ckpt["threshold"], "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "torch_threads": torch.get_num_threads(), "rows": rows,
    }


def _cost(backend, run_dir: Path) -> dict:
    """Jobs, circuits, shots and QPU seconds (reported, estimated) of one backend's row; calibrates the rate."""
    from backends.budget import calibrate

    if backend is None:
        return {"jobs": 0, "circuits": 0, "shots": 0, "qpu_seconds": None, "estimated_qpu_seconds": None}
    stats = backend.stats.to_dict()
    cost = {k: stats[k] for k in ("jobs", "circuits", "shots", "qpu_seconds", "estimated_qpu_seconds")}
    if backend.circuit_summary:
        cost["isa_circuit"] = backend.circuit_summary
    if backend.qpu_rate is not None and stats["qpu_seconds"] and stats["estimated_qpu_seconds"]:
        cost["qpu_rate_update"] = calibrate(run_dir, backend.qpu_rate, stats["qpu_seconds"],
                                            stats["estimated_qpu_seconds"])
    return cost


def _fmt(value, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def format_markdown(result: dict) -> str:
    head = ("| backend | AUC | ΔAUC | sensitivity | layer MAE vs exact | mean Δp | flipped decisions "
            "| latency ms/sample | jobs | circuits | shots | QPU s reported (estimated) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['backend']} | error: {r['error']} ||||||||||")
            continue
        lines.append(f"| {r['backend']} | {_fmt(r['auc'], '.4f')} | {_fmt(r['delta_auc'], '+.4f')} | "
                     f"{_fmt(r['sensitivity'], '.4f')} | {_fmt(r['mae'], '.2e')} | {_fmt(r['prob_mae'], '.1e')} | "
                     f"{_fmt(100 * r['flip_rate'], '.2f')}% | {_fmt(r['latency_ms'], '.2f')} | "
                     f"{r['jobs']} | {r['circuits']} | {r['shots']} | {_fmt(r['qpu_seconds'], '.1f')} "
                     f"({_fmt(r.get('estimated_qpu_seconds'), '.1f')}) |")
    notes = "\n".join(f"- `{r['backend']}`: {r.get('description', '')}" for r in result["rows"] if "error" not in r)
    return (f"{result['samples_per_domain']} samples per unseen center × {counted(len(result['domains']), 'center')} "
            f"({', '.join(result['domains'])}); TTA {result['tta']}; batch {result['batch_size']} "
            f"(one job per batch); seed {result['seed']}; run `{result['run']}`. AUC and sensitivity: mean "
            "over the centers; layer MAE: mean |<Z>| error of the quantum layer's outputs against the exact "
            "engine on the same inputs; mean Δp and flipped decisions: change of the predicted positive "
            "probability and of the thresholded decision against the exact engine; latency: quantum layer "
            "only, per sample.\n\n" + "\n".join(lines) + "\n\n" + notes + "\n")


def format_plan(result: dict) -> str:
    """The dry run's table: what each backend would be sent, and the QPU seconds it would cost."""
    lines = [f"dry run, nothing submitted: {result['samples_per_domain']} samples per unseen center × "
             f"{counted(len(result['domains']), 'center')}, batch {result['batch_size']} (one job, one PUB per batch)\n",
             "| backend | jobs | PUBs | circuits | shots | ISA depth | two-qubit gates | estimated QPU s |",
             "|---|---|---|---|---|---|---|---|"]
    for plan in result["plans"]:
        isa = plan["isa_circuit"] or {}
        lines.append(f"| {plan['spec']} | {plan['jobs']} | {plan['pubs']} | {plan['circuits']:,} | {plan['shots']:,} "
                     f"| {isa.get('depth', '–')} | {isa.get('two_qubit_gates', '–')} "
                     f"| {_fmt(plan['estimated_qpu_seconds'], '.1f')} |")
    sources = sorted({p["rate"]["source"] for p in result["plans"] if p["rate"]})
    return "\n".join(lines) + "".join(f"\n\nQPU-seconds rate: {source}" for source in sources) + "\n"


def plot(result: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    rows = [r for r in result["rows"] if "error" not in r]
    names = [r["backend"] for r in rows]
    x = np.arange(len(rows))
    fig = Figure(figsize=(4 + 1.6 * len(rows), 4.2), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3)
    ax1.bar(x - 0.2, [r["auc"] for r in rows], 0.4, label="AUC")
    ax1.bar(x + 0.2, [r["sensitivity"] for r in rows], 0.4, label="sensitivity")
    ax1.set_ylim(0, 1.15)
    ax1.legend(loc="upper center", ncols=2, fontsize=8)
    ax1.set_title("unseen centers (mean)")
    ax2.bar(x, [max(r["mae"], 1e-17) for r in rows], color="tab:red")
    ax2.set_yscale("log")
    ax2.set_title("MAE of layer outputs vs exact")
    ax3.bar(x, [r["latency_ms"] for r in rows], color="tab:gray")
    ax3.set_yscale("log")
    ax3.set_title("quantum-layer latency (ms/sample)")
    for ax in (ax1, ax2, ax3):
        ax.set_xticks(x, names, rotation=35, ha="right", fontsize=8)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybrid.bench_backends", description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="run directory written by hybrid.train")
    parser.add_argument("--backends",
                        help=f"comma-separated backend specs name[:arg][:key=value] (default: {DEFAULT_BACKENDS})")
    parser.add_argument("--samples", type=positive_int, default=256, help="images per unseen center (default: 256)")
    parser.add_argument("--domains", help="comma-separated unseen centers (default: all)")
    # methods that back-propagate (tent) need gradients, which the sampling backends do not give
    parser.add_argument("--tta", choices=gradient_free_tta(), help="default: the run's setting")
    parser.add_argument("--batch-size", type=positive_int, help="samples per batch, i.e. per job (default: the run's)")
    parser.add_argument("--seed", type=int, help="sample selection, simulator and transpiler seed (default: the run's)")
    parser.add_argument("--data-root", help="folder with MedMNIST files (default: $HYBRID_DATA_ROOT)")
    parser.add_argument("--out", help="output folder (default: the run directory)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what each backend would be sent (jobs, PUBs, circuits, shots, ISA circuit, "
                             "estimated QPU seconds) and submit nothing")
    parser.add_argument("--max-qpu-seconds", type=float,
                        help="refuse to run when all backends together are estimated to need more QPU seconds")
    parser.add_argument("--shot-sweep", metavar="SHOTS",
                        help="shot sweep: run every --backends entry (default here: "
                             f"{shot_sweep.DEFAULT_SWEEP_BACKENDS}) at each of these shot counts, e.g. "
                             f"{shot_sweep.DEFAULT_SHOTS}; writes shot_sweep.json/.md/.png")
    parser.add_argument("--compare-run", action="append", default=[],
                        help="shot sweep: another run (e.g. noise-aware trained) beside --run, same images")
    parser.add_argument("--draws", type=positive_int, default=1,
                        help="shot sweep: run every backend at every shot count this many times (simulator seeds "
                             "0, 1, ...; the same images) and report the mean and spread; one draw of 1,024 shots "
                             "moves the AUC by several thousandths")
    parser.add_argument("--n-bootstrap", type=int, default=None,
                        help="bootstrap resamples for the mean-AUC interval (default: 200 in a sweep, 0 otherwise)")
    args = parser.parse_args(argv)
    return run_cli(lambda: _run(args, command_line("python -m hybrid.bench_backends", argv)))


def _run_sweep(args, settings: dict, command: str) -> int:
    shots = shot_sweep.parse_shots(args.shot_sweep)
    bases = [s for s in (args.backends or shot_sweep.DEFAULT_SWEEP_BACKENDS).split(",") if s.strip()]
    shot_sweep.check_compared_runs([Path(args.run), *map(Path, args.compare_run)])
    result = shot_sweep.run_sweep([Path(args.run), *map(Path, args.compare_run)], bases, shots, bench=run_bench,
                                  draws=args.draws, **settings) | {"command": command}
    out = Path(args.out or args.run)
    out.mkdir(parents=True, exist_ok=True)
    write_json(result, out / "shot_sweep.json")
    table = shot_sweep.format_markdown(result)
    write_text(f"# Shot sweep\n\n{table}", out / "shot_sweep.md")
    try:
        shot_sweep.plot(result, out / "shot_sweep.png")
    except Exception as exc:  # a figure must never cost the sweep its results
        log.warning("could not draw the figure: %s", exc)
    append_result(out, result)
    print(table)
    failed = [p for run in result["runs"] for points in run["curves"].values() for p in points if "error" in p]
    return 1 if failed else 0


def _run(args, command: str) -> int:
    settings = {"samples": args.samples, "domain_names": args.domains.split(",") if args.domains else None,
                "tta": args.tta, "batch_size": args.batch_size, "seed": args.seed, "data_root": args.data_root,
                "progress": not args.quiet}
    if args.shot_sweep:
        return _run_sweep(args, settings | {"n_bootstrap": 200 if args.n_bootstrap is None else args.n_bootstrap},
                          command)
    if args.compare_run or args.draws > 1:
        raise ValueError("--compare-run and --draws go with --shot-sweep")
    specs = [s for s in (args.backends or DEFAULT_BACKENDS).split(",") if s.strip()]
    settings["n_bootstrap"] = args.n_bootstrap or 0
    if args.dry_run or args.max_qpu_seconds is not None:
        plan = plan_bench(Path(args.run), specs, **{k: v for k, v in settings.items() if k != "n_bootstrap"})
        if args.dry_run:
            print(format_plan(plan))
        check_budget(plan["plans"], args.max_qpu_seconds, samples_flag="--samples")
        if args.dry_run:
            return 0
    result = run_bench(Path(args.run), specs, **settings)
    result["command"] = command
    out = Path(args.out or args.run)
    out.mkdir(parents=True, exist_ok=True)
    write_json(result, out / "bench_backends.json")
    table = format_markdown(result)
    write_text(f"# Quantum-layer backends on {Path(args.run).name}\n\n{table}", out / "bench_backends.md")
    try:
        plot(result, out / "bench_backends.png")
    except Exception as exc:  # a figure must never cost the benchmark its results
        log.warning("could not draw the figure: %s", exc)
    append_result(out, result)
    print(table)
    return 0 if all("error" not in r for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())

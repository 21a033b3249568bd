"""Noise-aware refit of a trained dressed head for a device's shots, judged on the design-validation centers.

    python -m hybrid.readout_refit --runs runs/study/dressed/seed0,runs/study/dressed/seed1 \\
        --refit readout --weights 1,2,4,8 --out results/readout_refit

The encoder and embedding stay as trained. `--refit readout` refits only the final Linear that reads the circuit's
observables (W, b), from the trained weights, for the expected loss under the device's shots:

    mean CE(W q + b, y) + weight * ½ tr(H W Σ_q Wᵀ) / shots        (hybrid.quantum.noise.ExpectationNoise.shot_penalty)

(weight 0, always added, is the readout refitted exactly). `--refit head` also refits a scale and an offset per
qubit in front of the angle map, and the circuit's weights, anchored on the trained head's exact predictions instead
of the labels: KL(softmax(trained logits) || softmax(logits)) + weight * the same term (at weight 0 the trained head).
q and Σ_q are the observables' means and bitstring covariance under the device's noise model (torch_noisy's density
program, readout errors included), on the clean training split with the source BatchNorm statistics; L-BFGS.
Each design-validation center is then scored, with adabn on the scored images as `hybrid.bench_backends` does
(--samples per center), by the trained head and every refitted one: exactly (statevector) and from `draws` sets of
`shots` joint bitstrings of the device's noisy probabilities (simulator seeds the run's seed, +1, ...). Only virtual
design-validation centers are read, never the reported centers or real clinics. `--save-to` writes each refitted
network as a run directory (hybrid.studies.refit_runs) for the tools that read runs (e.g. `bench_backends --compare-run`).
Writes OUT/readout_refit.json, .md and .png: per head the mean exact and device AUC and the share of the trained
head's device loss it recovers on the device.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from hybrid.cli import run_cli
from hybrid.reporting import counted, share_or_dash
from hybrid.rundir import write_study_outputs
from hybrid.studies.refit_runs import refuse_collisions, save_refit_run, saved_run_dir

log = logging.getLogger("hybrid.readout_refit")

TRAINED = "trained"  # the head as the network was trained
REFITS = ("readout", "head")


def readout_penalty(probabilities: torch.Tensor, logits: torch.Tensor, weight: torch.Tensor, labels: tuple[str, ...],
                    shots: int) -> torch.Tensor:
    """½ tr(H W Σ_q Wᵀ) / shots, batch mean, for probabilities that already include the device's readout errors."""
    from hybrid.quantum.noise import ExpectationNoise, NoiseModel

    noise = ExpectationNoise(NoiseModel(shots=shots, kind="marginal"), labels)
    return noise.shot_penalty(probabilities, logits, weight)


def refit_readout(values: torch.Tensor, probabilities: torch.Tensor, targets: torch.Tensor,
                  start: tuple[torch.Tensor, torch.Tensor], labels: tuple[str, ...], weight: float, shots: int,
                  max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) minimising mean CE(W values + b, targets) + weight * readout_penalty, by L-BFGS from `start`."""
    w = start[0].detach().double().clone().requires_grad_(True)
    b = start[1].detach().double().clone().requires_grad_(True)
    values, probabilities = values.double(), probabilities.double()
    optimizer = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = values @ w.T + b
        loss = F.cross_entropy(logits, targets)
        if weight > 0:
            loss = loss + weight * readout_penalty(probabilities, logits, w, labels, shots)
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach(), b.detach()


def positive_score(values: torch.Tensor, readout: tuple[torch.Tensor, torch.Tensor], positive_class: int) -> np.ndarray:
    """The positive class's log-probability: ranks as the softmax score the studies' AUC reads, without its
    saturation at 1."""
    logits = values.double() @ readout[0].T + readout[1]
    return logits.log_softmax(dim=1)[:, positive_class].numpy()


class Head(NamedTuple):
    """What a refit may change in a dressed head, in front of the fixed slot inputs z: angles = map(scale * z +
    offset), the circuit's weights, and the readout logits = weight @ q + bias."""
    scale: torch.Tensor
    offset: torch.Tensor
    circuit: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def to_lists(self) -> dict[str, list]:
        return {name: value.tolist() for name, value in self._asdict().items()}


class Programs(NamedTuple):
    """The circuit's exact engine `(angles, weights) -> values` and the device's density program
    `(angles, weights) -> (values, basis probabilities)`, and the run's angle map."""
    exact: Callable
    device: Callable
    angle_map: str
    labels: tuple[str, ...]


def trained_head(model) -> Head:
    n_qubits = model.project.out_features
    return Head(torch.ones(n_qubits, dtype=torch.float64), torch.zeros(n_qubits, dtype=torch.float64),
                model.quantum.weight.detach().double().clone(), model.classifier.weight.detach().double().clone(),
                model.classifier.bias.detach().double().clone())


def head_angles(head: Head, z: torch.Tensor, angle_map: str) -> torch.Tensor:
    from hybrid.model import map_angles

    return map_angles(head.scale * z.double() + head.offset, angle_map)


def head_outputs(head: Head, z: torch.Tensor, programs: Programs) -> dict[str, torch.Tensor]:
    """The head's exact observables (statevector) and the device's noisy ones and basis probabilities, for inputs z."""
    angles = head_angles(head, z, programs.angle_map)
    values, probabilities = programs.device(angles, head.circuit)
    return {"exact": programs.exact(angles, head.circuit).double(), "device": values.double(),
            "probabilities": probabilities.double()}


def exact_logits(head: Head, z: torch.Tensor, programs: Programs) -> torch.Tensor:
    """The head's class logits from its exact observables (statevector only: no device simulation)."""
    return programs.exact(head_angles(head, z, programs.angle_map), head.circuit).double() @ head.weight.T + head.bias


def refit_head(z: torch.Tensor, anchor: torch.Tensor, programs: Programs, start: Head, weight: float, shots: int,
               max_iter: int = 50) -> Head:
    """Angle scale and offset, circuit weights and readout minimising KL(softmax(anchor) || softmax(logits)) +
    weight * readout_penalty on the device's noisy outputs, by L-BFGS from `start` (at weight 0, `start` itself
    when the anchor is its own exact logits)."""
    params = [t.detach().double().clone().requires_grad_(True) for t in start]
    optimizer = torch.optim.LBFGS(params, max_iter=max_iter, line_search_fn="strong_wolfe")
    target = anchor.double().softmax(dim=1)

    def closure():
        optimizer.zero_grad()
        head = Head(*params)
        values, probabilities = programs.device(head_angles(head, z, programs.angle_map), head.circuit)
        logits = values.double() @ head.weight.T + head.bias
        loss = F.kl_div(logits.log_softmax(dim=1), target, reduction="batchmean")
        if weight > 0:
            loss = loss + weight * readout_penalty(probabilities.double(), logits, head.weight, programs.labels, shots)
        loss.backward()
        return loss

    if weight > 0:
        optimizer.step(closure)
    return Head(*(p.detach() for p in params))


@torch.no_grad()
def read_in_batches(model, x: torch.Tensor, read: Callable, batch_size: int = 256) -> torch.Tensor:
    """`read(model, images)` for images x, a batch at a time, in float64."""
    return torch.cat([read(model, x[i:i + batch_size]).double() for i in range(0, len(x), batch_size)])


def slot_inputs(model, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The fixed inputs z of the quantum slot (the projection of the embedding) for images x."""
    return read_in_batches(model, x, lambda m, images: m.slot_inputs(m.features(images)), batch_size)


@torch.no_grad()
def embeddings(model, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The embeddings f of images x (what the slot's projection reads)."""
    return read_in_batches(model, x, lambda m, images: m.features(images), batch_size)


def draw_device_values(probabilities: torch.Tensor, labels: tuple[str, ...], shots: int, draws: int,
                       seed: int) -> list[torch.Tensor]:
    """`draws` sets of joint `shots`-shot estimates of the observables (simulator seeds seed, seed + 1, ...)."""
    from hybrid.quantum.noise import ZStrings

    signs = ZStrings(labels)
    return [signs.bitstring_estimates(probabilities, shots, generator=torch.Generator().manual_seed(seed + d))
            for d in range(draws)]


def same_front(a: Head, b: Head) -> bool:
    """Whether two heads prepare the same states (same angle calibration and circuit; readouts may differ)."""
    return all(torch.equal(x, y) for x, y in zip((a.scale, a.offset, a.circuit), (b.scale, b.offset, b.circuit)))


@torch.no_grad()
def score_center(heads: dict[str, Head], z: torch.Tensor, positive: np.ndarray, positive_class: int,
                 programs: Programs, shots: int, draws: int, seed: int) -> dict[str, dict]:
    """Exact AUC and the AUC of every draw (simulator seeds seed, seed + 1, ... for every head), for every head."""
    from hybrid.metrics import binary_auc

    scores, simulated = {}, []  # (head, outputs, draws) per distinct circuit front: readout refits share one
    for name, head in heads.items():
        outputs, drawn = next(((o, d) for h, o, d in simulated if same_front(h, head)), (None, None))
        if outputs is None:
            outputs = head_outputs(head, z, programs)
            drawn = draw_device_values(outputs["probabilities"], programs.labels, shots, draws, seed)
            simulated.append((head, outputs, drawn))
        readout = (head.weight, head.bias)
        scores[name] = {"exact": binary_auc(positive_score(outputs["exact"], readout, positive_class), positive),
                        "device": [binary_auc(positive_score(values, readout, positive_class), positive)
                                   for values in drawn]}
    return scores


def load_dressed(run_dir: Path, device_spec: str):
    """The run's network (exact engine), its checkpoint facts, and its circuit's Programs."""
    from backends import get_backend
    from hybrid.rundir import load_run

    cfg, model, ckpt, backend = load_run(run_dir)
    backend.close()
    if getattr(model, "quantum", None) is None or model.head_kind != "dressed":
        has = (f"head {model.head_kind!r}, layer {cfg.quantum_layer!r}" if cfg.quantum
               else "no quantum layer: trained with --no-quantum")
        raise ValueError(f"{run_dir}: refitting the readout needs a dressed head with a circuit in its slot "
                         f"(this run: {has})")
    name, _, noise_model = device_spec.partition(":")
    if name != "torch_noisy" or not noise_model:
        raise ValueError(f"--device takes torch_noisy:NOISE_MODEL (e.g. torch_noisy:fake_manila), got {device_spec!r}")
    device = get_backend("torch_noisy", noise_model=noise_model, shots=0)
    program = device.make_runner(model.quantum.spec).program
    return cfg, model, ckpt, Programs(model.quantum.program, program, cfg.q_angle_map, tuple(program.labels))


def load_design(run_dir: Path, device_spec: str, data_root: str | None = None):
    """`load_dressed`'s (cfg, model, checkpoint, programs) and the run's data bundle (its training split and the
    images its design-validation centers are made from)."""
    from hybrid.data import resolve_data_root
    from hybrid.domains import load_bundle

    cfg, model, ckpt, programs = load_dressed(run_dir, device_spec)
    return cfg, model, ckpt, programs, load_bundle(cfg, resolve_data_root(data_root or cfg.data_root))


def head_name(weight: float) -> str:
    return f"weight {weight:g}"


def refit_heads(model, programs: Programs, x_train: torch.Tensor, y_train: torch.Tensor, weights: list[float],
                refit: str, shots: int) -> dict[str, Head]:
    """The trained head and one refit per weight: of the readout alone (cross-entropy + penalty) or of the angle
    calibration, circuit and readout (anchored on the trained head's exact logits + penalty)."""
    start = trained_head(model)
    z = slot_inputs(model.eval(), x_train)
    heads = {TRAINED: start}
    if refit == "readout":
        with torch.no_grad():
            train = head_outputs(start, z, programs)
        for weight in weights:
            readout = refit_readout(train["device"], train["probabilities"], y_train.long(), (start.weight, start.bias),
                                    programs.labels, weight, shots)
            heads[head_name(weight)] = start._replace(weight=readout[0], bias=readout[1])
        return heads
    with torch.no_grad():
        anchor = exact_logits(start, z, programs)
    for weight in weights:
        heads[head_name(weight)] = refit_head(z, anchor, programs, start, weight, shots)
    return heads


def validation_slot_inputs(cfg, bundle, model, ckpt: dict, samples: int,
                           read: Callable = slot_inputs) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    """Per virtual design-validation center: the slot inputs z of `samples` seeded images (or what `read(model, x)`
    returns for them instead), with adabn on those images (as hybrid.bench_backends scores), and which of them are
    positive. Never the reported centers or real clinics."""
    from hybrid.domains import build_eval_domains
    from hybrid.tta import make_tta

    domains = {name: d for name, d in build_eval_domains(cfg, bundle, ckpt["in_channels"], "validation").items()
               if name != "clean"}
    centers = {}
    for name, (x, y) in domains.items():
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.seed))[:samples]
        adabn = make_tta("adabn", model)
        adabn.prepare(x[keep])
        try:
            centers[name] = (read(model.eval(), x[keep]), y[keep].numpy() == ckpt["positive_class"])
        finally:
            adabn.reset()
    return centers


def refit_run(run_dir: Path, weights: list[float], *, device_spec: str, shots: int, draws: int, samples: int,
              refit: str = "readout", train_samples: int = 0, data_root: str | None = None,
              save_to: Path | None = None) -> dict:
    """Refit one run's head at every weight and score all heads on its design-validation centers; with `save_to`,
    each refitted network is also saved as a run directory save_to/weight<W>/<run name>."""
    from hybrid.domains import split_to_tensors

    cfg, model, ckpt, programs, bundle = load_design(run_dir, device_spec, data_root)
    x_train, y_train = split_to_tensors(bundle.train, cfg.input_size, ckpt["in_channels"])
    if train_samples:  # a seeded subset, for quick checks
        keep = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(cfg.seed))[:train_samples]
        x_train, y_train = x_train[keep], y_train[keep]
    heads = refit_heads(model, programs, x_train, y_train, weights, refit, shots)
    for weight in weights if save_to is not None else ():
        save_refit_run(run_dir, heads[head_name(weight)], saved_run_dir(save_to, weight, run_dir),
                       {"refit": refit, "weight": weight, "device": device_spec, "shots": shots,
                        "train_samples": train_samples}, data_root)
    centers = {name: score_center(heads, z, positive, ckpt["positive_class"], programs, shots, draws, cfg.seed)
               for name, (z, positive) in validation_slot_inputs(cfg, bundle, model, ckpt, samples).items()}
    log.info("%s: %d heads on %d design-validation centers", run_dir, len(heads), len(centers))
    return {"run": str(run_dir), "seed": cfg.seed, "refit": refit,
            "heads": {k: v.to_lists() for k, v in heads.items()}, "centers": centers}


def summarize(runs: list[dict]) -> dict[str, dict]:
    """Per readout: mean exact and device AUC over runs and centers, and the share of the trained readout's device
    loss (exact - device) it recovers on the device (its device AUC - the trained readout's), means over runs."""
    if not all(r["centers"] for r in runs):
        raise ValueError("a run has no design-validation centers to score (is its test split empty?)")
    names = list(next(iter(runs[0]["centers"].values())))

    def mean_of(name: str, key: str) -> list[float]:  # one value per run: the mean over its centers (and draws)
        return [float(np.mean([np.mean(c[name][key]) for c in r["centers"].values()])) for r in runs]

    trained_exact, trained_device = mean_of(TRAINED, "exact"), mean_of(TRAINED, "device")
    loss = float(np.mean(trained_exact) - np.mean(trained_device))
    out = {}
    for name in names:
        exact, device = mean_of(name, "exact"), mean_of(name, "device")
        gained = [d - t for d, t in zip(device, trained_device)]
        out[name] = {"exact": float(np.mean(exact)), "device": float(np.mean(device)),
                     "device_loss": float(np.mean(exact) - np.mean(device)), "gained_per_run": gained,
                     "recovered_on_device": float(np.mean(gained) / loss) if loss > 0 else None}  # nothing lost
    return out


def pooled_lines(runs: list[dict], shots: int, draws: int, is_candidate: Callable[[str], bool],
                 device: str = "fake_manila") -> list[str]:
    """`summarize` as a plain-text table, one line per head, and the candidate with the highest device AUC."""
    summary = summarize(runs)
    width = max(map(len, summary)) + 2
    lines = [f"exact and device AUC ({device}, {shots} shots, {draws} draws), means over {counted(len(runs), 'run')} and their "
             "design-validation centers; recovered on the device: the head's device AUC minus the trained head's, over "
             "the trained head's device loss"]
    for name, row in summary.items():
        lines.append(f"{name:{width}s} exact {row['exact']:.4f} device {row['device']:.4f} loss "
                     f"{row['device_loss']:+.4f} recovered {share_or_dash(row['recovered_on_device'], '+.0%')}  per run "
                     + ", ".join(f"{g:+.4f}" for g in row["gained_per_run"]))
    best = max(filter(is_candidate, summary), key=lambda n: summary[n]["device"])
    return lines + [f"highest device AUC among the candidates: {best}"]


def to_markdown(result: dict) -> str:
    what = "the readout alone" if result["refit"] == "readout" else "the angle calibration, circuit and readout"
    lines = [f"# Noise-aware refit of {what}, on the design-validation centers", "",
             f"`{result['command']}`", "",
             f"Device {result['device']} at {result['shots']} shots, {result['draws']} draws, up to {result['samples']} "
             f"images per center, adabn; {counted(len(result['runs']), 'run')}. Means over runs and centers. Recovered on the "
             "device: the head's device AUC minus the trained head's, over the trained head's device loss.",
             "", "| head | exact AUC | device AUC | device loss | recovered on the device | per run gained |",
             "|---|---|---|---|---|---|"]
    for name, row in result["summary"].items():
        gained = ", ".join(f"{g:+.4f}" for g in row["gained_per_run"])
        lines.append(f"| {name} | {row['exact']:.4f} | {row['device']:.4f} | {row['device_loss']:+.4f} | "
                     f"{share_or_dash(row['recovered_on_device'])} | {gained} |")
    lines += ["", "Runs: " + ", ".join(r["run"] for r in result["runs"])]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> Path:
    """Exact against device AUC, one point per head, the trained one's half-loss goal dashed."""
    from hybrid.reporting import new_figure, palette, save_figure

    summary = result["summary"]
    fig = new_figure((5.2, 3.8))
    ax = fig.add_subplot()
    for (name, row), colour in zip(summary.items(), palette(len(summary))):
        ax.scatter(row["exact"], row["device"], color=colour, label=name, zorder=3)
    trained = summary[TRAINED]
    low = min(min(r["exact"], r["device"]) for r in summary.values())
    high = max(r["exact"] for r in summary.values())
    ax.plot([low, high], [low, high], color="grey", lw=1, label="device = exact (nothing lost to the shots)")
    ax.axhline(trained["device"] + trained["device_loss"] / 2, color="grey", ls="--", lw=1,
               label="half the trained head's loss recovered")
    ax.set(xlabel="exact AUC (statevector)", ylabel=f"device AUC ({result['shots']} shots)",
           title=f"{'Readout' if result['refit'] == 'readout' else 'Head'} refitted for the device's shots")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", frameon=False)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybrid.readout_refit", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", required=True, action="append",
                        help="comma-separated run directories of dressed networks (may be repeated)")
    parser.add_argument("--refit", choices=REFITS, default="readout",
                        help="readout: the final Linear alone, for cross-entropy + penalty; head: angle scale and "
                             "offset per qubit, circuit weights and readout, anchored on the trained head's exact "
                             "predictions (KL) + penalty")
    parser.add_argument("--weights", default="1,2,4,8",
                        help="penalty weights to refit with (with --refit readout, 0 is always added)")
    parser.add_argument("--device", default="torch_noisy:fake_manila", help="torch_noisy:NOISE_MODEL")
    parser.add_argument("--shots", type=int, default=1024)
    parser.add_argument("--draws", type=int, default=8, help="shot draws per center")
    parser.add_argument("--samples", type=int, default=400, help="images per design-validation center")
    parser.add_argument("--train-samples", type=int, default=0,
                        help="refit on this many training images (seeded subset; default 0: all)")
    parser.add_argument("--save-to", help="also save each refitted network as a run directory "
                                          "SAVE_TO/weight<W>/<run name> (config, centers, best.pt)")
    parser.add_argument("--out", required=True, help="folder for readout_refit.json, .md, .png")
    parser.add_argument("--data-root", help="folder with the dataset files (default: the run's, else $HYBRID_DATA_ROOT)")
    args = parser.parse_args(argv)
    return run_cli(lambda: _run(args, argv))


def parse_weights(text: str, with_zero: bool) -> list[float]:
    """`--weights 1,4,16` -> sorted penalty weights (with 0 added for the readout refit's exact reference)."""
    try:
        weights = {float(w) for w in text.split(",") if w.strip()}
    except ValueError:
        raise ValueError(f"--weights takes comma-separated numbers >= 0, e.g. 1,4,16; got {text!r}") from None
    if not weights or any(w < 0 for w in weights):
        raise ValueError(f"--weights takes comma-separated numbers >= 0, e.g. 1,4,16; got {text!r}")
    return sorted(weights | ({0.0} if with_zero else set()))


def _run(args, argv) -> int:
    import shlex
    import sys

    weights = parse_weights(args.weights, with_zero=args.refit == "readout")
    if args.shots < 1 or args.draws < 1 or args.samples < 2 or args.train_samples < 0:
        raise ValueError("--shots and --draws must be positive, --samples at least 2, --train-samples 0 (all) or more")
    run_dirs = [Path(p) for group in args.runs for p in group.split(",") if p.strip()]
    twice = sorted({str(r) for r in run_dirs if run_dirs.count(r) > 1})
    if twice:
        raise ValueError(f"{', '.join(twice)} named twice in --runs; name each run once")
    for run_dir in run_dirs:  # every run is checked before the first refit, not after it
        load_dressed(run_dir, args.device)
    save_to = Path(args.save_to) if args.save_to else None
    if save_to is not None:  # before any refit: two runs of one name, or an earlier save, would collide halfway
        refuse_collisions(save_to, run_dirs, weights)
    runs = [refit_run(r, weights, device_spec=args.device, shots=args.shots, draws=args.draws, samples=args.samples,
                      refit=args.refit, train_samples=args.train_samples, data_root=args.data_root, save_to=save_to)
            for r in run_dirs]
    command = "python -m hybrid.readout_refit " + shlex.join(sys.argv[1:] if argv is None else argv)
    result = {"command": command, "refit": args.refit, "device": args.device, "shots": args.shots,
              "draws": args.draws, "samples": args.samples, "train_samples": args.train_samples or "all",
              "centers": "validation", "runs": runs, "summary": summarize(runs)}
    write_study_outputs(Path(args.out), "readout_refit", result, to_markdown(result), plot)
    return 0

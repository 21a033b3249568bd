"""Training speed: the framework's real step against a plain torchvision training loop.

    python -m benchmarks.epoch_time                 # default config, real PneumoniaMNIST
    python -m benchmarks.epoch_time --steps 20      # time 20 optimizer steps per configuration and round

Configurations, all on the same real images, batch size, input size, channels and stem:
- `plain`: the reference, a torchvision `mobilenet_v2` ERM loop as a user would write it
  (stem replaced for the image channels, AdamW, cross-entropy, default NCHW memory format);
- `full`: the default method, the algorithm's own `update` (shift simulation and
  augmentation as `hybrid.fit` makes the batch, then DANN's forward, backward, AdamW and
  schedule step) with the quantum layer;
- `full_nchw`: the same with `--no-channels-last`, to show what the memory format buys;
- `no_quantum`: the default method without the quantum layer (its overhead goal: <= 10%);
- `dressed8`: the default method with the dressed head on 8 qubits (goal: <= 15% over `no_quantum`);
- with `--with-compile`, `full_compiled`: `full` with the encoder under `torch.compile`
  (its compile time is the `first_step_s`).
Configurations take turns over several rounds so that drift in machine load hits all alike;
each reports training images/s (batch / median step time, batch creation included) and its
ratio to `plain` measured in the same run. Goal: `full` >= 1.3x `plain`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from hybrid.algorithms import make_algorithm
from hybrid.config import TrainConfig
from hybrid.data import load_dataset, resolve_data_root
from hybrid.domains import DomainSampler, split_to_tensors
from hybrid.fit import make_batch
from hybrid.model import HybridNet

log = logging.getLogger("benchmarks.epoch_time")
GOAL_OVERHEAD = 0.10  # quantum layer: at most 10% more time per step
GOAL_SPEEDUP = 1.3  # the default method against the plain torchvision loop
GOAL_DRESSED_OVERHEAD = 0.15  # dressed head on 8 qubits against no quantum layer


def _framework_step(cfg: TrainConfig, x, y, centers, compile_encoder: bool = False):
    torch.manual_seed(cfg.seed)
    sampler = DomainSampler(cfg, centers)
    network = HybridNet(cfg.model_config(), x.shape[1], int(y.max()) + 1)
    if compile_encoder:
        network.encoder = torch.compile(network.encoder)
    # a long schedule, so the timed steps never run past it; the DANN strength is mid-schedule
    total_steps = 1_000_000
    algorithm = make_algorithm(cfg.algorithm, network, cfg, n_domains=sampler.n_domains, total_steps=total_steps)
    algorithm.train()
    generator = torch.Generator().manual_seed(0)

    def step() -> float:
        idx = torch.randint(0, len(y), (cfg.batch_size,), generator=generator)
        t0 = time.perf_counter()
        xb, domains = make_batch(sampler, x, idx, generator, augment=True)
        algorithm.update(xb, y[idx], domains, total_steps // 2)
        return time.perf_counter() - t0

    return step


def _plain_step(cfg: TrainConfig, x, y):
    """The loop a user writes with torchvision alone (same images, batch, stem and optimizer)."""
    from torchvision.models import mobilenet_v2

    torch.manual_seed(cfg.seed)
    net = mobilenet_v2(num_classes=int(y.max()) + 1, width_mult=cfg.width_mult)
    stem = net.features[0][0]
    net.features[0][0] = nn.Conv2d(x.shape[1], stem.out_channels, 3, stride=cfg.stem_stride, padding=1, bias=False)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    net.train()
    generator = torch.Generator().manual_seed(0)

    def step() -> float:
        idx = torch.randint(0, len(y), (cfg.batch_size,), generator=generator)
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t0

    return step


def _configurations(base: TrainConfig, x, y, centers, with_compile: bool) -> dict:
    configurations = {
        "plain": _plain_step(base, x, y),
        "full": _framework_step(base, x, y, centers),
        "full_nchw": _framework_step(replace(base, channels_last=False), x, y, centers),
        "no_quantum": _framework_step(replace(base, quantum=False), x, y, centers),
        # every prediction through an 8-qubit circuit (#12): its overhead goal is <= 15%
        "dressed8": _framework_step(replace(base, quantum_head="dressed", n_qubits=8), x, y, centers),
    }
    if with_compile:
        configurations["full_compiled"] = _framework_step(base, x, y, centers, compile_encoder=True)
    return configurations


def _time(steppers: dict, steps: int, rounds: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    times: dict[str, list[float]] = {name: [] for name in steppers}
    first = {name: step() for name, step in steppers.items()}  # warm-up (and compilation)
    for step in steppers.values():
        step()
    for r in range(rounds):
        for name, step in steppers.items():
            times[name] += [step() for _ in range(steps)]
        log.info("round %d/%d done", r + 1, rounds)
    return times, first


def summarize(times: dict[str, list[float]], first: dict[str, float], batch_size: int, steps_per_epoch: int) -> dict:
    rows = {}
    for name, ts in times.items():
        median = statistics.median(ts)
        rows[name] = {"median_step_s": median, "images_per_s": batch_size / median,
                      "epoch_s": median * steps_per_epoch, "steps_timed": len(ts), "first_step_s": first[name]}
    for row in rows.values():
        row["ratio_to_plain"] = row["images_per_s"] / rows["plain"]["images_per_s"]
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.epoch_time", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default=TrainConfig.dataset)
    parser.add_argument("--data-root")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per configuration and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--max-train-samples", type=int, help="fewer training images (for a quick check)")
    parser.add_argument("--with-compile", action="store_true", help="also time the encoder under torch.compile")
    parser.add_argument("--out", default="benchmarks/results/epoch_time.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    base = TrainConfig(dataset=args.dataset)
    bundle = load_dataset(base.dataset, root=resolve_data_root(args.data_root), size=base.size)
    x, y = split_to_tensors(bundle.train, base.input_size, bundle.n_channels)
    centers = bundle.train.centers
    if args.max_train_samples:
        x, y = x[: args.max_train_samples], y[: args.max_train_samples]
        centers = None if centers is None else centers[: args.max_train_samples]
    times, first = _time(_configurations(base, x, y, centers, args.with_compile), args.steps, args.rounds)
    steps_per_epoch = math.ceil(len(bundle.train.labels) / base.batch_size)
    rows = summarize(times, first, base.batch_size, steps_per_epoch)
    overhead = rows["full"]["median_step_s"] / rows["no_quantum"]["median_step_s"] - 1
    dressed_overhead = rows["dressed8"]["median_step_s"] / rows["no_quantum"]["median_step_s"] - 1
    speedup = rows["full"]["ratio_to_plain"]
    result = {
        "benchmark": "epoch_time", "dataset": base.dataset, "train_images": len(bundle.train.labels),
        "batch_size": base.batch_size, "input_size": base.input_size, "stem_stride": base.stem_stride,
        "channels": int(x.shape[1]), "steps_per_epoch": steps_per_epoch, "configurations": rows,
        "quantum_overhead": overhead, "goal_overhead": GOAL_OVERHEAD, "pass_overhead": overhead <= GOAL_OVERHEAD,
        "dressed8_overhead": dressed_overhead, "goal_dressed8_overhead": GOAL_DRESSED_OVERHEAD,
        "pass_dressed8_overhead": dressed_overhead <= GOAL_DRESSED_OVERHEAD,
        "full_vs_plain": speedup, "goal_speedup": GOAL_SPEEDUP, "pass_speedup": speedup >= GOAL_SPEEDUP,
        "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("| configuration | median step (s) | training images/s | ratio to plain | epoch estimate (s) |\n"
          "|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['median_step_s']:.4f} | {row['images_per_s']:.1f} | {row['ratio_to_plain']:.2f}x "
              f"| {row['epoch_s']:.1f} |")
    print(f"\nfull method vs plain torchvision loop: {speedup:.2f}x (goal >= {GOAL_SPEEDUP}x): "
          f"{'PASS' if result['pass_speedup'] else 'FAIL'}; quantum layer overhead {overhead * 100:+.1f}% "
          f"(goal <= {GOAL_OVERHEAD * 100:.0f}%): {'PASS' if result['pass_overhead'] else 'FAIL'}; dressed head, 8 "
          f"qubits: {dressed_overhead * 100:+.1f}% (goal <= {GOAL_DRESSED_OVERHEAD * 100:.0f}%): "
          f"{'PASS' if result['pass_dressed8_overhead'] else 'FAIL'}; JSON: {out}")
    return result


if __name__ == "__main__":
    main()

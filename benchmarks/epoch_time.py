"""Time per training epoch with and without the quantum layer (goal: at most 10% more).

    python -m benchmarks.epoch_time                 # default config, real PneumoniaMNIST
    python -m benchmarks.epoch_time --steps 20      # time 20 optimizer steps per variant

Each variant runs the real training step, the algorithm's own `update` (shift simulation and
augmentation as `hybrid.fit` does them, then DANN's forward, backward and AdamW step) on real images; variants alternate over several rounds so drift in machine load
hits both alike, and the median step time is extrapolated to a full epoch.
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

from hybrid.algorithms import make_algorithm
from hybrid.config import TrainConfig
from hybrid.data import load_dataset, resolve_data_root
from hybrid.domains import DomainSampler, split_to_tensors
from hybrid.fit import make_batch
from hybrid.model import HybridNet

log = logging.getLogger("benchmarks.epoch_time")
GOAL_OVERHEAD = 0.10


def _step_timer(cfg: TrainConfig, x, y, centers):
    torch.manual_seed(cfg.seed)
    sampler = DomainSampler(cfg, centers)
    network = HybridNet(cfg.model_config(), x.shape[1], int(y.max()) + 1)
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.epoch_time", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default=TrainConfig.dataset)
    parser.add_argument("--data-root")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", default="benchmarks/results/epoch_time.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    base = TrainConfig(dataset=args.dataset)
    bundle = load_dataset(base.dataset, root=resolve_data_root(args.data_root), size=base.size)
    x, y = split_to_tensors(bundle.train, base.input_size, bundle.n_channels)
    variants = {"quantum": base, "no_quantum": replace(base, quantum=False)}
    steppers = {name: _step_timer(cfg, x, y, bundle.train.centers) for name, cfg in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for name, step in steppers.items():  # warm-up
        for _ in range(2):
            step()
    for r in range(args.rounds):
        for name, step in steppers.items():
            times[name] += [step() for _ in range(args.steps)]
        log.info("round %d/%d done", r + 1, args.rounds)
    steps_per_epoch = math.ceil(len(y) / base.batch_size)
    rows = {}
    for name, ts in times.items():
        median = statistics.median(ts)
        rows[name] = {"median_step_s": median, "epoch_s": median * steps_per_epoch, "steps_timed": len(ts)}
    overhead = rows["quantum"]["median_step_s"] / rows["no_quantum"]["median_step_s"] - 1
    result = {
        "benchmark": "epoch_time", "dataset": base.dataset, "train_images": len(y), "batch_size": base.batch_size,
        "input_size": base.input_size, "steps_per_epoch": steps_per_epoch, "variants": rows,
        "quantum_overhead": overhead, "goal_overhead": GOAL_OVERHEAD, "pass": overhead <= GOAL_OVERHEAD,
        "threads": torch.get_num_threads(), "machine": {"platform": platform.platform(),
                                                        "processor": platform.processor()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("| variant | median step (s) | epoch estimate (s) |\n|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['median_step_s']:.4f} | {row['epoch_s']:.1f} |")
    print(f"\nquantum layer overhead: {overhead * 100:+.1f}% per epoch "
          f"(goal <= {GOAL_OVERHEAD * 100:.0f}%): {'PASS' if result['pass'] else 'FAIL'}; JSON: {out}")
    return result


if __name__ == "__main__":
    main()

"""The training loop: epochs of `algorithm.update` over shifted, augmented batches, precise BN,
model selection on source validation data, checkpoints and resume.

`fit` knows nothing about what a step does: that is the algorithm's (`hybrid.algorithms`).
It writes one line per epoch to metrics.jsonl, best.pt when source validation improves
and last.pt after every epoch (with both random generators, so a resumed run continues exactly
as the uninterrupted one would), so a crash loses at most the epoch in progress.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from hybrid.algorithms import Algorithm
from hybrid.averaging import WeightAverage
from hybrid.batchnorm import bn_layers, estimate_batchnorm_statistics
from hybrid.checkpoints import load_checkpoint
from hybrid.config import TrainConfig
from hybrid.devices import module_device
from hybrid.distributed import Distributed
from hybrid.domains import DomainSampler, random_translate
from hybrid.inference import predict_probs
from hybrid.metrics import domain_metrics
from hybrid.rundir import append_line, atomic_save, json_text, read_lines, write_text

log = logging.getLogger(__name__)

MAX_TRANSLATION = 2  # pixels of random translation when cfg.augment
PRECISE_BN_BATCHES = 8
LAST_KEYS = ("epoch", "best", "generator")  # batches of shifted training images that re-estimate BN statistics per epoch


@dataclass
class TrainingData:
    """Training and source-validation tensors (validation already shifted, noise fixed once)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    positive_class: int
    sampler: DomainSampler


def recalibrate_batchnorm(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Precise BN: replace running statistics with exact averages over `x` under current weights.

    With few steps per epoch and a high learning rate, the exponential running averages lag
    far behind the weights, and eval-mode predictions collapse; one forward pass over a
    sample of (shifted) training images fixes that for the cost of a fraction of an epoch.
    The whole model runs in train mode (as it does in training, dropout included).
    """
    was_training = model.training
    model.train()
    estimate_batchnorm_statistics(bn_layers(model), model, x, batch_size)
    model.train(was_training)


def validation_scores(model, data: TrainingData, batch_size: int) -> tuple[float, float]:
    """Source-validation AUC and log loss, without test-time adaptation."""
    probs = predict_probs(model, data.x_val, "none", batch_size)
    loss = float(F.nll_loss(torch.log(torch.as_tensor(probs).clamp_min(1e-12)), data.y_val))
    m = domain_metrics(data.y_val.numpy(), probs, positive_class=data.positive_class, n_bootstrap=0)
    return m["auc"], loss


def make_batch(sampler: DomainSampler, x: torch.Tensor, idx: torch.Tensor, generator: torch.Generator,
               augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """What `update` sees: each sample's center drawn, that center's shift applied, then augmentation."""
    domains = sampler.draw(idx, generator)
    xb = sampler.shift(x[idx], domains, generator)
    if augment:
        xb = random_translate(xb, MAX_TRANSLATION, generator)
    return xb, domains


@dataclass
class Generators:
    """The run's random draws. `order` (permutation, BN calibration) is the same on every rank;
    `batch` (virtual centers, shifts, augmentation) is the rank's own. One process: one generator."""

    order: torch.Generator
    batch: torch.Generator

    @classmethod
    def seeded(cls, seed: int, ddp: Distributed) -> "Generators":
        order = torch.Generator().manual_seed(seed)
        if not ddp.active:
            return cls(order, order)  # exactly the single-process run of earlier versions
        return cls(order, torch.Generator().manual_seed(seed + 1_000_003 * (ddp.rank + 1)))


def train_epoch(algorithm: Algorithm, data: TrainingData, cfg: TrainConfig, epoch: int,
                generators: Generators, progress: bool, ddp: Distributed | None = None,
                runner: torch.nn.Module | None = None,
                average: WeightAverage | None = None) -> tuple[dict, torch.Tensor]:
    """One epoch of updates; returns the sample-weighted means of what `update` logged, and the order.

    With several ranks each takes its shard of every global batch of `cfg.batch_size`; `average`
    (--ema-decay) folds in the network's weights after every step.
    """
    from tqdm import tqdm

    ddp = ddp or Distributed()
    algorithm.train()
    device = module_device(algorithm)
    steps_per_epoch = math.ceil(len(data.y_train) / cfg.batch_size)
    order = torch.randperm(len(data.y_train), generator=generators.order)
    sums: dict[str, float] = {}
    last: dict[str, float] = {}
    n_seen = 0
    bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
               leave=False, unit="batch")
    for step in bar:
        global_idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        if len(global_idx) < 2 * ddp.world_size:
            continue  # BatchNorm needs two samples on every rank
        idx = ddp.shard(global_idx)
        xb, domains = make_batch(data.sampler, data.x_train, idx, generators.batch, cfg.augment)
        last = algorithm.update(xb.to(device), data.y_train[idx].to(device), domains.to(device),
                                epoch * steps_per_epoch + step, runner=runner)
        if average is not None:
            average.update(algorithm.network)
        n_seen += len(idx)
        for key, value in last.items():
            sums[key] = sums.get(key, 0.0) + value * len(idx)
        bar.set_postfix(loss=f"{sums['loss'] / n_seen:.3f}")
    keys = sorted(k for k in sums if k != "lambda")
    totals = ddp.sum([sums[k] for k in keys] + [n_seen])  # every rank's samples in the logged means
    means = {k: v / totals[-1] for k, v in zip(keys, totals)} if totals[-1] else {}
    means["lambda"] = last.get("lambda")  # a schedule value: the epoch's last, not its mean
    return means, order


def random_state() -> dict:
    """Torch's global generators (dropout draws from them), for last.pt."""
    state = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def _record(epoch: int, means: dict, algorithm: Algorithm, val_auc: float, val_loss: float, seconds: float) -> dict:
    return {"epoch": epoch + 1, "train_loss": means.get("loss"), "cls_loss": means.get("cls_loss"),
            "domain_loss": means.get("domain_loss"), "domain_acc": means.get("domain_acc"),
            "lambda": means.get("lambda"), "lr": algorithm.learning_rate(),
            "val_auc": val_auc, "val_loss": val_loss, "seconds": seconds} | {
        key: means[key] for key in OPTIONAL_LOSSES if key in means}


# --aux-weight, --head-distill, --q-shot-noise marginal, the coral algorithm
OPTIONAL_LOSSES = ("aux_loss", "distill_loss", "shot_penalty", "coral_penalty")


class TrainingDiverged(RuntimeError):
    """The network's outputs stopped being finite (a learning rate too high, usually)."""


def _improved(best: dict, val_auc: float, val_loss: float, selection: str = "auc") -> bool:
    """Whether this epoch replaces the selected one. "auc": higher validation AUC wins, a tie (within 1e-6) goes to
    the lower validation loss; "last": every epoch does (near 0.99 the AUC's epoch-to-epoch changes are noise)."""
    if selection == "last":
        return True
    return val_auc > best["auc"] + 1e-6 or (abs(val_auc - best["auc"]) <= 1e-6 and val_loss < best["loss"])


def fit(algorithm: Algorithm, data: TrainingData, cfg: TrainConfig, out_dir: Path, *, meta: dict,
        progress: bool = True, resume: bool = False,
        on_epoch_end: Callable[[dict], None] | None = None, ddp: Distributed | None = None) -> dict:
    """Train for `cfg.epochs`, keeping the epoch with the best source-validation AUC in best.pt (the last
    epoch with `cfg.selection` "last").

    `meta` (architecture facts, class names, ...) is stored in best.pt beside the network.
    Returns {"auc", "loss", "epoch"} of the selected epoch. With `ddp` across several ranks,
    gradients are averaged by DistributedDataParallel, rank 0 validates and writes every file,
    and last.pt keeps every rank's generators. With `cfg.ema_decay` the weight average is what
    is validated, selected and saved (`hybrid.averaging`).
    """
    ddp = ddp or Distributed()
    out_dir = Path(out_dir)
    generators = Generators.seeded(cfg.seed, ddp)
    start_epoch, best = 0, {"auc": -1.0, "loss": math.inf, "epoch": -1}
    last_path, best_path, metrics_path = out_dir / "last.pt", out_dir / "best.pt", out_dir / "metrics.jsonl"
    average = WeightAverage(algorithm.network, cfg.ema_decay) if cfg.ema_decay else None
    selected = average.network if average is not None else algorithm.network  # validated, selected, saved
    if resume and last_path.is_file():
        start_epoch, best = _resume(algorithm, last_path, generators, ddp, average)
    if ddp.is_main:  # a kill between an epoch's metrics line and its last.pt leaves a line the rerun rewrites
        kept = [r for r in read_lines(metrics_path) if r.get("epoch", 0) <= start_epoch] if start_epoch else []
        write_text("".join(json_text(r) + "\n" for r in kept), metrics_path)
    runner = ddp.wrap(algorithm, module_device(algorithm), find_unused=cfg.head_grad_scale == 0)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        means, order = train_epoch(algorithm, data, cfg, epoch, generators, progress and ddp.is_main, ddp, runner,
                                   average)
        calib = order[: min(len(order), PRECISE_BN_BATCHES * cfg.batch_size)]
        x_calib = data.sampler.shift(data.x_train[calib], data.sampler.draw(calib, generators.order), generators.order)
        recalibrate_batchnorm(selected, x_calib, cfg.batch_size)
        val_auc, val_loss = ddp.broadcast(validation_scores(selected, data, cfg.eval_batch_size)
                                          if ddp.is_main else None)
        if not math.isfinite(val_loss):  # the same on every rank (broadcast): all stop, nothing of it is saved
            raise TrainingDiverged(f"training diverged in epoch {epoch + 1}: the network's validation loss is "
                                   f"{val_loss} (its outputs are not finite); {out_dir} keeps the epochs before it. "
                                   "Lower --lr (or --q-lr-scale) and train again")
        record = _record(epoch, means, algorithm, val_auc, val_loss, time.perf_counter() - t0)
        improved = _improved(best, val_auc, val_loss, cfg.selection)
        if improved:
            best = {"auc": val_auc, "loss": val_loss, "epoch": epoch + 1}
        rank_states = ddp.gather(random_state() | {"batch_generator": generators.batch.get_state()}) if ddp.active \
            else None
        if not ddp.is_main:
            continue
        append_line(metrics_path, record)
        if improved:
            atomic_save(meta | {"model": selected.state_dict(), "epoch": epoch + 1, "val_auc": val_auc}, best_path)
        extra = {"world_size": ddp.world_size, "rank_states": rank_states} if ddp.active else {}
        if average is not None:
            extra["average"] = average.state_dict()
        atomic_save(algorithm.training_state() | random_state() | extra | {
            "generator": generators.order.get_state(), "epoch": epoch, "best": best}, last_path)
        if on_epoch_end is not None:
            on_epoch_end(record)
        log.info("epoch %d/%d  loss %.4f  val AUC %.4f%s  (%.0f s)", epoch + 1, cfg.epochs, record["train_loss"],
                 val_auc, "  *kept*" if improved else "", record["seconds"])
    return best


def _resume(algorithm: Algorithm, last_path: Path, generators: Generators, ddp: Distributed,
            average: WeightAverage | None = None) -> tuple[int, dict]:
    """Load last.pt: modules, optimizer, schedule, every generator and the weight average; returns
    (next epoch, best)."""
    state = load_checkpoint(last_path, "--resume: checkpoint", LAST_KEYS)
    if (average is not None) != ("average" in state):
        raise ValueError(f"--resume: {last_path} was written {'without' if average is not None else 'with'} a "
                         "weight average (--ema-decay); resume with the run's own config")
    if average is not None:
        average.load_state_dict(state["average"])
    saved_world = state.get("world_size", 1)
    if saved_world != ddp.world_size:
        raise ValueError(f"--resume: {last_path} was written by {saved_world} training process(es); resume with "
                         f"the same number (torchrun --nproc-per-node {saved_world}) so every rank continues its "
                         "own random draws")
    algorithm.load_training_state(state)
    generators.order.set_state(state["generator"])
    own = state["rank_states"][ddp.rank] if ddp.active else state
    if ddp.active:
        generators.batch.set_state(own["batch_generator"])
    if "torch_rng" in own:  # dropout's generator; last.pt files of older runs lack it
        torch.set_rng_state(own["torch_rng"])
    if "cuda_rng" in own and torch.cuda.is_available():  # dropout on a GPU draws from its own generator
        torch.cuda.set_rng_state_all(own["cuda_rng"])
    log.info("resuming from epoch %d", state["epoch"] + 1)
    return state["epoch"] + 1, state["best"]

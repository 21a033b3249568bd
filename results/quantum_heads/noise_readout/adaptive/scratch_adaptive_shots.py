"""Yardstick 2 of ../RULE.md (a scratch script, kept so its figures can be rerun): the trained head's 1,024 shots per
image on average, spent in two rounds, the second on the images whose scores other-class images lie near; scored on
the design-validation centers only. Inference, not a training route.

    python results/quantum_heads/noise_readout/adaptive/scratch_adaptive_shots.py OUT_JSON RUN
    python results/quantum_heads/noise_readout/adaptive/scratch_adaptive_shots.py --pool OUT_JSON [OUT_JSON ...]

the first writes one run's scores (run the seeds side by side, one thread each); --pool prints the table."""
import json, sys, time
from pathlib import Path
import numpy as np
import torch
torch.set_num_threads(1)
from hybrid.metrics import binary_auc
from hybrid.quantum.noise import ZStrings
from hybrid.studies import readout_refit as rr

SHOTS, DRAWS, SAMPLES = 1024, 8, 400
FIRST_ROUNDS, WEIGHINGS = (128, 256, 512), ("pairs", "boundary")


def score_parts(head, labels, positive_class):
    """(h, c): the logit difference (positive minus negative) is mean over shots of h[bitstring], plus c."""
    signs = ZStrings(labels).matrix.double()  # (2**n, n_obs)
    diff = head.weight[positive_class] - head.weight[1 - positive_class]
    return signs @ diff, float(head.bias[positive_class] - head.bias[1 - positive_class])


def silverman_density(s):
    """A Gaussian kernel density of the scores s at each of them (Silverman's rule-of-thumb bandwidth)."""
    iqr = np.subtract(*np.percentile(s, [75, 25]))
    bandwidth = 0.9 * min(s.std(), iqr / 1.34) * len(s) ** -0.2
    gaps = (s[:, None] - s[None, :]) / bandwidth
    return np.exp(-0.5 * gaps**2).mean(1) / (bandwidth * np.sqrt(2 * np.pi))


def second_round_shots(counts_a, h, c, weighing, budget):
    """Integer round-B shots per image, ∝ w^(2/3) (largest remainder), w from round A's counts (see ../RULE.md)."""
    freq = (counts_a / counts_a.sum(1, keepdim=True)).numpy()
    hv = h.numpy()
    score = freq @ hv + c
    sigma = np.sqrt(np.clip(freq @ hv**2 - (freq @ hv) ** 2, 0.0, None))
    posterior = 1.0 / (1.0 + np.exp(-score))
    w = sigma * posterior * (1.0 - posterior)
    if weighing == "pairs":
        w = w * silverman_density(score)
    share = w ** (2.0 / 3.0)
    if share.sum() <= 0:
        share = np.ones_like(share)
    exact_share = budget * share / share.sum()
    shots = np.floor(exact_share).astype(np.int64)
    left = budget - shots.sum()
    shots[np.argsort(exact_share - shots)[::-1][:left]] += 1
    return torch.from_numpy(shots)


def adaptive_aucs(probabilities, positive, head, labels, positive_class, first, weighing, seed):
    signs = ZStrings(labels)
    h, c = score_parts(head, labels, positive_class)
    aucs, extra = [], []
    for d in range(DRAWS):
        generator = torch.Generator().manual_seed(seed + d)
        counts_a = signs.bitstring_counts(probabilities, first, generator=generator)
        more = second_round_shots(counts_a, h, c, weighing, (SHOTS - first) * len(probabilities))
        counts = counts_a + signs.bitstring_counts(probabilities, more, generator=generator)
        values = (counts / counts.sum(1, keepdim=True)) @ signs.matrix.double()
        aucs.append(binary_auc(rr.positive_score(values, (head.weight, head.bias), positive_class), positive))
        total = (more + first).double() / SHOTS
        extra.append([float(total.max()), float((total >= 2).double().mean()), float((total <= 0.5).double().mean())])
    return aucs, np.mean(extra, 0).tolist()


def score_run(out_path: Path, run: Path) -> None:
    started = time.time()
    cfg, model, ckpt, programs, bundle = rr.load_design(run, "torch_noisy:fake_manila")
    head, positive_class = rr.trained_head(model), ckpt["positive_class"]
    centers = {}
    for name, (z, positive) in rr.validation_slot_inputs(cfg, bundle, model, ckpt, SAMPLES).items():
        with torch.no_grad():
            outputs = rr.head_outputs(head, z, programs)
        uniform = rr.score_center({rr.TRAINED: head}, z, positive, positive_class, programs, SHOTS, DRAWS, cfg.seed)
        row = {"exact": uniform[rr.TRAINED]["exact"], "uniform": uniform[rr.TRAINED]["device"]}
        for first in FIRST_ROUNDS:
            for weighing in WEIGHINGS:
                aucs, spread = adaptive_aucs(outputs["probabilities"], positive, head, programs.labels, positive_class,
                                             first, weighing, cfg.seed)
                row[f"m0 {first} {weighing}"] = {"device": aucs, "max, share >= 2x, share <= 0.5x": spread}
        centers[name] = row
        print(f"{run} {name}: uniform {np.mean(row['uniform']):.4f}", flush=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({"run": str(run), "seed": cfg.seed, "shots": SHOTS, "draws": DRAWS,
                                    "samples": SAMPLES, "centers": centers,
                                    "seconds": round(time.time() - started, 1)}, indent=1))


def pool(paths):
    runs = [json.loads(Path(p).read_text()) for p in paths]
    names = [k for k in next(iter(runs[0]["centers"].values())) if k.startswith("m0")]

    def per_run(getter):
        return np.array([np.mean([np.mean(getter(c)) for c in r["centers"].values()]) for r in runs])

    exact, uniform = per_run(lambda c: c["exact"]), per_run(lambda c: c["uniform"])
    loss = exact.mean() - uniform.mean()
    print(f"mean over {len(runs)} runs and their design-validation centers; {SHOTS} shots per image on average, "
          f"{DRAWS} draws; recovered: device AUC minus uniform 1,024 shots' over the uniform loss")
    print(f"exact {exact.mean():.4f}   uniform 1,024 shots: device {uniform.mean():.4f} loss {loss:+.4f}")
    best = None
    for name in names:
        device = per_run(lambda c: c[name]["device"])
        spread = np.mean([[c[name]["max, share >= 2x, share <= 0.5x"] for c in r["centers"].values()] for r in runs],
                         axis=(0, 1))
        gained = device - uniform
        print(f"{name:20s} device {device.mean():.4f} loss {exact.mean() - device.mean():+.4f} recovered "
              f"{100 * gained.mean() / loss:+.0f}%  per run " + ", ".join(f"{g:+.4f}" for g in gained)
              + f"  (shots: most {spread[0]:.1f}x, {100 * spread[1]:.0f}% of images >= 2x, "
              f"{100 * spread[2]:.0f}% <= 0.5x)")
        if best is None or device.mean() > best[1]:
            best = (name, device.mean())
    print(f"highest device AUC: {best[0]}")


if __name__ == "__main__":
    if sys.argv[1] == "--pool":
        pool(sys.argv[2:])
    else:
        score_run(Path(sys.argv[1]), Path(sys.argv[2]))

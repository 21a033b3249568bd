"""Stage 1d candidate of ../RULE.md (a scratch script, kept so its figures can be rerun): a maximum-likelihood readout
along the training line of the slot inputs, judged on the same bitstring draws as the trained readout (paired), on
the design-validation centers only.

    python results/quantum_heads/noise_readout/crb/scratch_line_mle.py OUT_DIR RUN [RUN ...]

writes OUT_DIR/line_mle.json and prints the table (line_mle.txt is that output)."""
import json, sys
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(1)
from hybrid.studies import readout_refit as rr
from hybrid.quantum.noise import ZStrings
from hybrid.metrics import binary_auc
from hybrid.data import resolve_data_root
from hybrid.domains import load_bundle, split_to_tensors

SHOTS, DRAWS, SAMPLES, GRID = 1024, 8, 400, 4001


class Line:
    """States along μ + u e (the training slot inputs' mean and first principal direction), for a grid of u."""

    def __init__(self, z_train, head, programs):
        self.head, self.programs = head, programs
        self.mu = z_train.mean(0)
        self.e = torch.linalg.svd(z_train - self.mu, full_matrices=False)[2][0]
        u = (z_train - self.mu) @ self.e
        lo, hi = float(u.min()), float(u.max())
        self.u = torch.linspace(lo - (hi - lo) / 2, hi + (hi - lo) / 2, GRID, dtype=torch.float64)
        self.log_p = self.probabilities(self.u).clamp_min(1e-15).log()

    def probabilities(self, u):
        angles = rr.head_angles(self.head, self.mu + u[:, None] * self.e, self.programs.angle_map)  # the head's own map
        return self.programs.device(angles, self.head.circuit)[1].double()

    def estimate(self, weights):
        """û maximising Σ_k w_k log p_k(u) per row of weights (counts, or probabilities for the infinite-shot limit)."""
        ll = weights @ self.log_p.T
        i = ll.argmax(dim=1).clamp(1, GRID - 2)
        rows = torch.arange(len(i))
        a, b, c = ll[rows, i - 1], ll[rows, i], ll[rows, i + 1]
        curvature = a - 2 * b + c
        shift = torch.where(curvature < 0, 0.5 * (a - c) / curvature, torch.zeros_like(b)).clamp(-1, 1)
        return self.u[i] + shift * (self.u[1] - self.u[0])


out = {}
OUT = Path(sys.argv[1]); OUT.mkdir(parents=True, exist_ok=True)
with torch.no_grad():
    for run in map(Path, sys.argv[2:]):
        cfg, model, ckpt, programs = rr.load_dressed(run, "torch_noisy:fake_manila")
        head, signs, pc = rr.trained_head(model), ZStrings(programs.labels), ckpt["positive_class"]
        readout = (head.weight, head.bias)
        bundle = load_bundle(cfg, resolve_data_root(cfg.data_root))
        x_train, _ = split_to_tensors(bundle.train, cfg.input_size, ckpt["in_channels"])
        line = Line(rr.slot_inputs(model.eval(), x_train), head, programs)

        def line_score(weights):
            q = line.probabilities(line.estimate(weights)) @ signs.matrix.double()
            return rr.positive_score(q, readout, pc)

        res = {}
        for name, (zc, positive) in rr.validation_slot_inputs(cfg, bundle, model, ckpt, SAMPLES).items():
            angles = rr.head_angles(head, zc, programs.angle_map)
            p = programs.device(angles, head.circuit)[1].double()
            exact = programs.exact(angles, head.circuit).double()
            # the bitstrings rr.draw_device_values reads (same seeds), as counts
            drawn = [signs.bitstring_counts(p, SHOTS, generator=torch.Generator().manual_seed(cfg.seed + d))
                     for d in range(DRAWS)]
            res[name] = {
                "trained": {"exact": binary_auc(rr.positive_score(exact, readout, pc), positive),
                            "device": float(np.mean([binary_auc(rr.positive_score(c / SHOTS @ signs.matrix.double(),
                                                                                  readout, pc), positive)
                                                     for c in drawn]))},
                "line MLE": {"exact": binary_auc(line_score(p), positive),
                             "device": float(np.mean([binary_auc(line_score(c), positive) for c in drawn]))}}
        out[str(run)] = res
        for k in ("trained", "line MLE"):
            e = np.mean([c[k]["exact"] for c in res.values()]); d = np.mean([c[k]["device"] for c in res.values()])
            print(run.name, f"{k:9s} exact {e:.4f} device {d:.4f} loss {e - d:+.4f}", flush=True)
(OUT / "line_mle.json").write_text(json.dumps(out, indent=1))


def seed_mean(kind, key):
    return [float(np.mean([c[kind][key] for c in res.values()])) for res in out.values()]


loss = float(np.mean(seed_mean("trained", "exact")) - np.mean(seed_mean("trained", "device")))
print("trained loss", round(loss, 4))
for k in ("trained", "line MLE"):
    gained = [a - b for a, b in zip(seed_mean(k, "device"), seed_mean("trained", "device"))]
    print(f"{k:9s} exact {np.mean(seed_mean(k, 'exact')):.4f} device {np.mean(seed_mean(k, 'device')):.4f} "
          f"recovered on the device {100 * np.mean(gained) / loss:+.0f}%  per seed {', '.join(f'{g:+.4f}' for g in gained)}")

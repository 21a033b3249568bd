"""Stage 1d diagnostic of ../RULE.md (a scratch script, kept so its figures can be rerun): the Cramér–Rao ceiling of any
readout of the trained heads' states on fake_manila at 1,024 shots, on the design-validation centers only.

    python results/quantum_heads/noise_readout/crb/scratch_crb_ceiling.py OUT_DIR RUN [RUN ...]

writes OUT_DIR/crb_ceiling.json and prints the table (crb_ceiling.txt is that output)."""
import json, sys
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(1)
from hybrid.studies import readout_refit as rr
from hybrid.quantum.noise import ZStrings
from hybrid.metrics import binary_auc
from hybrid.data import resolve_data_root
from hybrid.domains import load_bundle, split_to_tensors

SHOTS, DRAWS, SAMPLES = 1024, 8, 400
KINDS = ("linear", "ceiling A", "ceiling B")


def variances(head, z, programs, signs, positive_class, direction):
    """Per image: the score g (device-expected observables, trained readout) and its variance under each kind."""
    theta = rr.head_angles(head, z, programs.angle_map).detach().requires_grad_(True)
    _, p = programs.device(theta, head.circuit)
    p = p.double()
    q = p @ signs.matrix.double()
    g = (q @ head.weight.T + head.bias).log_softmax(dim=1)[:, positive_class]
    grad_theta = torch.autograd.grad(g.sum(), theta, retain_graph=True)[0]
    dp = torch.stack([torch.autograd.grad(p[:, k].sum(), theta, retain_graph=True)[0] for k in range(p.shape[1])], 1)
    # dθ/du along the training line, differentiated through the head's own angle map
    d = torch.func.jvp(lambda x: rr.head_angles(head, x, programs.angle_map), (z.double(),),
                       (direction.double().expand_as(z).contiguous(),))[1].detach()
    with torch.no_grad():
        soft = (q @ head.weight.T + head.bias).softmax(dim=1)
        onehot = torch.zeros_like(soft); onehot[:, positive_class] = 1
        grad_q = (onehot - soft) @ head.weight  # (B, n_obs)
        s = signs.matrix.double()
        cov = torch.einsum("bk,ki,kj->bij", p, s, s) - q[:, :, None] * q[:, None, :]
        linear = torch.einsum("bi,bij,bj->b", grad_q, cov, grad_q) / SHOTS
        fisher = torch.einsum("bki,bkj,bk->bij", dp, dp, 1.0 / p.clamp_min(1e-12))
        eye = torch.eye(fisher.shape[1], dtype=fisher.dtype) * 1e-9
        ceiling_a = torch.einsum("bi,bi->b", grad_theta, torch.linalg.solve(fisher + eye, grad_theta)) / SHOTS
        ceiling_b = (grad_theta * d).sum(1) ** 2 / torch.einsum("bi,bij,bj->b", d, fisher, d).clamp_min(1e-300) / SHOTS
    return g.detach(), {"linear": linear, "ceiling A": ceiling_a, "ceiling B": ceiling_b}


out = {}
OUT = Path(sys.argv[1]); OUT.mkdir(parents=True, exist_ok=True)
for run in map(Path, sys.argv[2:]):
    cfg, model, ckpt, programs = rr.load_dressed(run, "torch_noisy:fake_manila")
    head, signs, pc = rr.trained_head(model), ZStrings(programs.labels), ckpt["positive_class"]
    bundle = load_bundle(cfg, resolve_data_root(cfg.data_root))
    x_train, _ = split_to_tensors(bundle.train, cfg.input_size, ckpt["in_channels"])
    z_train = rr.slot_inputs(model.eval(), x_train)
    direction = torch.linalg.svd(z_train - z_train.mean(0), full_matrices=False)[2][0]  # first principal direction
    res = {}
    for name, (zc, positive) in rr.validation_slot_inputs(cfg, bundle, model, ckpt, SAMPLES).items():
        g, var = variances(head, zc, programs, signs, pc, direction)
        with torch.no_grad():
            exact = programs.exact(rr.head_angles(head, zc, programs.angle_map), head.circuit).double()
        res[name] = {"exact": binary_auc(rr.positive_score(exact, (head.weight, head.bias), pc), positive),
                     "noise-free device": binary_auc(g.numpy(), positive)}
        for kind in KINDS:
            std = var[kind].clamp_min(0).sqrt()
            aucs = [binary_auc((g + std * torch.randn(g.shape, generator=torch.Generator().manual_seed(cfg.seed + k),
                                                      dtype=g.dtype)).numpy(), positive) for k in range(DRAWS)]
            res[name][kind] = float(np.mean(aucs))
            res[name][kind + " median std"] = float(std.median())
    out[str(run)] = res
    for key in ("exact", "noise-free device", *KINDS):
        print(run.name, f"{key:18s} AUC {np.mean([c[key] for c in res.values()]):.4f}", flush=True)
    print(run.name, "median std", {k: round(float(np.mean([c[k + ' median std'] for c in res.values()])), 4) for k in KINDS})
(OUT / "crb_ceiling.json").write_text(json.dumps(out, indent=1))


def seed_mean(key):
    return [float(np.mean([c[key] for c in res.values()])) for res in out.values()]


exact, linear = seed_mean("exact"), seed_mean("linear")
loss = float(np.mean(exact) - np.mean(linear))
print(f"exact {np.mean(exact):.4f}; noise-free device {np.mean(seed_mean('noise-free device')):.4f}; "
      f"linear (Gaussian) loss {loss:+.4f} (bitstring draws, stage 1: +0.0069)")
for kind in KINDS:
    gained = [a - b for a, b in zip(seed_mean(kind), linear)]
    print(f"{kind:10s} device {np.mean(seed_mean(kind)):.4f} recovered on the device {100 * np.mean(gained) / loss:+.0f}%"
          f"  per seed {', '.join(f'{x:+.4f}' for x in gained)}")

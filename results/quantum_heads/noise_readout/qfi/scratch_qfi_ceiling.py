"""Stage 1g diagnostic of ../RULE.md (a scratch script, kept so its figures can be rerun): the quantum Cramér–Rao
ceiling of any measurement of the trained heads' states at 1,024 shots, beside the Z-basis ceiling of the same noise-free
states and the trained readout's own shot variance, on the design-validation centers only.

    python results/quantum_heads/noise_readout/qfi/scratch_qfi_ceiling.py OUT_DIR RUN [RUN ...]

writes OUT_DIR/qfi_ceiling.json and prints the table (qfi_ceiling.txt is that output)."""
import json, sys
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(1)
from hybrid.studies import readout_refit as rr
from hybrid.quantum.noise import ZStrings
from hybrid.metrics import binary_auc

SHOTS, DRAWS, SAMPLES = 1024, 8, 400
KINDS = ("linear (device)", "linear (noise-free)", "ceiling A0 (Z basis)", "ceiling Q (any measurement)")


def bound(grad, fisher):
    eye = torch.eye(fisher.shape[1], dtype=fisher.dtype) * 1e-9
    return torch.einsum("bi,bi->b", grad, torch.linalg.solve(fisher + eye, grad)) / SHOTS


def variances(head, z, programs, signs, positive_class):
    """Per image: the exact score g and its variance at 1,024 shots under each kind."""
    program, weights = programs.exact, head.circuit
    theta = rr.head_angles(head, z, programs.angle_map).detach()
    n_in = theta.shape[1]
    theta_g = theta.clone().requires_grad_(True)
    values = program(theta_g, weights).double()
    g = (values @ head.weight.T + head.bias).log_softmax(dim=1)[:, positive_class]
    grad = torch.autograd.grad(g.sum(), theta_g)[0]
    with torch.no_grad():
        psi = program.state(theta, weights).T  # (B, dim)
        # central differences (the engine's permutation is an autograd.Function without forward-mode support)
        step = torch.eye(n_in, dtype=theta.dtype) * 1e-5
        dpsi = torch.stack([(program.state(theta + step[i], weights) - program.state(theta - step[i], weights)).T / 2e-5
                            for i in range(n_in)], dim=1)  # (B, n_in, dim)
        overlap = torch.einsum("bd,bid->bi", psi.conj(), dpsi)  # <psi|d_i psi>
        qfi = 4 * (torch.einsum("bid,bjd->bij", dpsi.conj(), dpsi) - overlap.conj()[:, :, None] * overlap[:, None, :]).real
        p0 = psi.abs() ** 2
        dp0 = 2 * (psi.conj()[:, None, :] * dpsi).real  # (B, n_in, dim)
        fisher0 = torch.einsum("bid,bjd,bd->bij", dp0, dp0, 1.0 / p0.clamp_min(1e-12))
        _, p_dev = programs.device(theta, weights)
        soft = (values.detach() @ head.weight.T + head.bias).softmax(dim=1)
        onehot = torch.zeros_like(soft); onehot[:, positive_class] = 1
        # each bitstring's value of the score's linearization: its variance over p is the readout's shot variance
        h = (onehot - soft) @ head.weight @ signs.matrix.double().T  # (B, dim)

        def linear(p):
            p = p.double()
            return ((p * h**2).sum(1) - (p * h).sum(1) ** 2) / SHOTS

        var = {"linear (device)": linear(p_dev), "linear (noise-free)": linear(p0),
               "ceiling A0 (Z basis)": bound(grad, fisher0), "ceiling Q (any measurement)": bound(grad, qfi)}
    return g.detach(), var


def noisy_auc(g, std, positive, seed):
    return float(np.mean([binary_auc((g + std * torch.randn(g.shape, dtype=g.dtype,
                                                            generator=torch.Generator().manual_seed(seed + k))).numpy(),
                                     positive) for k in range(DRAWS)]))


out = {}
OUT = Path(sys.argv[1]); OUT.mkdir(parents=True, exist_ok=True)
for run in map(Path, sys.argv[2:]):
    cfg, model, ckpt, programs, bundle = rr.load_design(run, "torch_noisy:fake_manila")
    head, signs, pc = rr.trained_head(model), ZStrings(programs.labels), ckpt["positive_class"]
    res = {}
    for name, (zc, positive) in rr.validation_slot_inputs(cfg, bundle, model, ckpt, SAMPLES).items():
        g, var = variances(head, zc, programs, signs, pc)
        res[name] = {"exact": binary_auc(g.numpy(), positive)}
        for kind in KINDS:
            std = var[kind].clamp_min(0).sqrt()
            res[name][kind] = noisy_auc(g, std, positive, cfg.seed)
            res[name][kind + " median std"] = float(std.median())
    out[str(run)] = res
    for key in ("exact", *KINDS):
        print(run.name, f"{key:28s} AUC {np.mean([c[key] for c in res.values()]):.4f}", flush=True)
    print(run.name, "median std", {k: round(float(np.mean([c[k + ' median std'] for c in res.values()])), 4) for k in KINDS})
(OUT / "qfi_ceiling.json").write_text(json.dumps(out, indent=1))


def seed_mean(key):
    return [float(np.mean([c[key] for c in res.values()])) for res in out.values()]


exact, reference = seed_mean("exact"), seed_mean(KINDS[0])
loss = float(np.mean(exact) - np.mean(reference))
print(f"exact {np.mean(exact):.4f}; linear (device, Gaussian) loss {loss:+.4f} (stage 1d: +0.0068)")
for kind in KINDS:
    gained = [a - b for a, b in zip(seed_mean(kind), reference)]
    print(f"{kind:28s} device {np.mean(seed_mean(kind)):.4f} recovered on the device {100 * np.mean(gained) / loss:+.0f}%"
          f"  per seed {', '.join(f'{x:+.4f}' for x in gained)}")

"""Stage 1i's gate (../../RULE.md; a scratch script, kept so its figures can be rerun): the exact AUC, on the
design-validation centers only, of two coordinates of the embedding f that a tied head could carry on every qubit,
beside the trained head's on the same images.

    python results/quantum_heads/noise_readout/tied/embedding/scratch_coordinates.py OUT_JSON RUN
    python results/quantum_heads/noise_readout/tied/embedding/scratch_coordinates.py --pool OUT_JSON [OUT_JSON ...]

T: the auxiliary classifier's logit difference (the head's distillation teacher, from the run's last.pt);
H: the least-squares fit on f, over the clean training split, of the trained head's exact logit difference."""
import json, sys
from pathlib import Path
import numpy as np
import torch
torch.set_num_threads(1)
from hybrid.studies import head_geometry, readout_refit as rr

SAMPLES = 400


@torch.no_grad()
def head_logit_difference(model, programs, f, positive_class):
    """The trained head's exact logit difference (positive minus negative class) on embeddings f."""
    return head_geometry.logit_difference(rr.trained_head(model), model.slot_inputs(f.float()).double(), programs,
                                          positive_class)


def coordinates(run, model, programs, cfg, bundle, ckpt):
    """{name: (a, c)} with u = f @ a + c."""
    from hybrid.checkpoints import load_checkpoint
    from hybrid.domains import split_to_tensors

    # the aux classifier is trained beside the network and kept only in last.pt (same epoch with --selection last)
    state = load_checkpoint(run / "last.pt", "checkpoint", ("algorithm",))["algorithm"]
    w, b = state["aux_classifier.weight"].double(), state["aux_classifier.bias"].double()
    pc = ckpt["positive_class"]
    teacher = (w[pc] - w[1 - pc], b[pc] - b[1 - pc])
    x_train, _ = split_to_tensors(bundle.train, cfg.input_size, ckpt["in_channels"])
    f = rr.embeddings(model.eval(), x_train)
    target = head_logit_difference(model, programs, f, pc)
    fit = torch.linalg.lstsq(torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype)], 1), target[:, None]).solution[:, 0]
    u = f @ fit[:-1] + fit[-1]
    r2 = 1 - ((u - target) ** 2).mean() / target.var(unbiased=False)
    return {"T": teacher, "H": (fit[:-1], fit[-1])}, float(r2)


def measure(out_path: Path, run: Path) -> None:
    from hybrid.metrics import binary_auc

    cfg, model, ckpt, programs, bundle = rr.load_design(run, "torch_noisy:fake_manila")
    coords, r2 = coordinates(run, model, programs, cfg, bundle, ckpt)
    pc = ckpt["positive_class"]
    centers = {}
    for name, (f, positive) in rr.validation_slot_inputs(cfg, bundle, model, ckpt, SAMPLES, read=rr.embeddings).items():
        centers[name] = {rr.TRAINED: binary_auc(head_logit_difference(model, programs, f, pc).numpy(), positive),
                         **{k: binary_auc((f @ a + c).numpy(), positive) for k, (a, c) in coords.items()}}
    out_path.write_text(json.dumps({"run": str(run), "train_r2_H": r2, "centers": centers}, indent=1))


def pool(paths) -> None:
    runs = [json.loads(Path(p).read_text()) for p in paths]
    print("exact AUC on the design-validation centers (400 images each, adabn), means over centers; stage 1i's gate: 0.9333")
    for name in (rr.TRAINED, "T", "H"):
        per_run = [np.mean([c[name] for c in r["centers"].values()]) for r in runs]
        print(f"{name:8s} mean {np.mean(per_run):.4f}  per run " + ", ".join(f"{v:.4f}" for v in per_run))
    print("H's fit of the head's logit difference on the training split, R^2 per run: "
          + ", ".join(f"{r['train_r2_H']:.3f}" for r in runs))


if __name__ == "__main__":
    if sys.argv[1] == "--pool":
        pool(sys.argv[2:])
    else:
        measure(Path(sys.argv[1]), Path(sys.argv[2]))

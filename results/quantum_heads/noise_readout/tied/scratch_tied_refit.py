"""Stage 1e of ../RULE.md (a scratch script, kept so its figures can be rerun): the trained head refitted with the
slot inputs' first principal coordinate u on every qubit, scored on the design-validation centers only.

    python results/quantum_heads/noise_readout/tied/scratch_tied_refit.py OUT_JSON RUN
    python results/quantum_heads/noise_readout/tied/scratch_tied_refit.py --pool OUT_JSON [OUT_JSON ...]

the first writes one run's heads and scores (run the seeds side by side, one thread each); --pool prints the table
(tied_refit.txt is that output)."""
import json, sys, time
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(1)
from hybrid.studies import readout_refit as rr

SHOTS, DRAWS, SAMPLES, TRAIN_SAMPLES, WEIGHTS = 1024, 8, 400, 500, (0, 1, 4, 16, 64)
# refit_head skips the fit at exactly 0 (there the trained head is the minimum); tied, it is not, so 0 runs as 1e-9
ZERO = 1e-9


def refit_and_score(out_path: Path, run: Path) -> None:
    from hybrid.data import resolve_data_root
    from hybrid.domains import load_bundle, split_to_tensors

    cfg, model, ckpt, programs = rr.load_dressed(run, "torch_noisy:fake_manila")
    bundle = load_bundle(cfg, resolve_data_root(cfg.data_root))
    x_train, _ = split_to_tensors(bundle.train, cfg.input_size, ckpt["in_channels"])
    z_train = rr.slot_inputs(model.eval(), x_train)
    mu = z_train.mean(0)
    e = torch.linalg.svd(z_train - mu, full_matrices=False)[2][0]

    def tied(z):  # (u, u, u, u): the first principal coordinate on every qubit
        return ((z - mu) @ e)[:, None].expand(-1, len(mu)).contiguous()

    trained = rr.trained_head(model)
    start = trained._replace(scale=e.clone(), offset=mu.clone())  # scale * u + offset: the line through the inputs
    z_fit = z_train[torch.randperm(len(z_train), generator=torch.Generator().manual_seed(cfg.seed))[:TRAIN_SAMPLES]]
    with torch.no_grad():
        anchor = rr.head_outputs(trained, z_fit, programs)["exact"] @ trained.weight.T + trained.bias
    heads = {"start": start}
    for w in WEIGHTS:
        t0 = time.time()
        heads[f"tied weight {w}"] = rr.refit_head(tied(z_fit), anchor, programs, start, w or ZERO, SHOTS)
        print(run.name, "weight", w, f"{time.time() - t0:.0f} s", flush=True)
    centers = {}
    for name, (z, positive) in rr.validation_slot_inputs(cfg, bundle, model, ckpt, SAMPLES).items():
        args = (positive, ckpt["positive_class"], programs, SHOTS, DRAWS, cfg.seed)
        centers[name] = {**rr.score_center({rr.TRAINED: trained}, z, *args), **rr.score_center(heads, tied(z), *args)}
    out_path.write_text(json.dumps({"run": str(run), "mu": mu.tolist(), "e": e.tolist(),
                                    "heads": {k: h.to_lists() for k, h in heads.items()}, "centers": centers}, indent=1))


def pool(paths: list[Path]) -> None:
    runs = [json.loads(p.read_text()) for p in paths]
    print(f"exact and device AUC (fake_manila, {SHOTS} shots, {DRAWS} draws), means over {len(runs)} runs and their "
          "design-validation centers; recovered on the device: the head's device AUC minus the trained head's, over "
          "the trained head's device loss")
    summary = rr.summarize(runs)
    for name, row in summary.items():
        print(f"{name:16s} exact {row['exact']:.4f} device {row['device']:.4f} loss {row['device_loss']:+.4f} "
              f"recovered {100 * row['recovered_on_device']:+.0f}%  per run "
              + ", ".join(f"{g:+.4f}" for g in row["gained_per_run"]))
    best = max((n for n in summary if n.startswith("tied")), key=lambda n: summary[n]["device"])
    print("highest device AUC among the candidates:", best)


if __name__ == "__main__":
    if sys.argv[1] == "--pool":
        pool([Path(p) for p in sys.argv[2:]])
    else:
        refit_and_score(Path(sys.argv[1]), Path(sys.argv[2]))

"""Stages 1e, 1f and 1j of ../RULE.md (a scratch script, kept so its figures can be rerun): the trained head refitted
on a low-rank projection of its slot inputs, scored on the design-validation centers only.

    python results/quantum_heads/noise_readout/tied/scratch_tied_refit.py OUT_JSON RUN [principal|decision|plane]
    python results/quantum_heads/noise_readout/tied/scratch_tied_refit.py --pool OUT_JSON [OUT_JSON ...]

the first writes one run's heads and scores (run the seeds side by side, one thread each); --pool prints the table.
The projection: one coordinate u on every qubit, the slot inputs' first principal coordinate (stage 1e, the default;
tied_refit.txt) or the least-squares fit of the trained head's exact logit difference on them (stage 1f,
tied_decision.txt); or the slot inputs projected onto the head's rank-2 active subspace (stage 1j, plane/)."""
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from hybrid.studies import head_geometry, readout_refit as rr

SHOTS, DRAWS, SAMPLES, TRAIN_SAMPLES, WEIGHTS = 1024, 8, 400, 500, (0, 1, 4, 16, 64)
# refit_head returns its start unchanged at weight 0 (meant for the trained head); tied, the start is not the trained
# head, so 0 runs as 1e-9 (a vanishing penalty)
ZERO = 1e-9


def line_through(z_train, trained, programs, positive_class, coordinate):
    """(a, c, scale, offset): u = a · z + c, and the line scale * u + offset through the inputs that the start sits on."""
    mu = z_train.mean(0)
    if coordinate == "principal":
        e = torch.linalg.svd(z_train - mu, full_matrices=False)[2][0]
        return e, -(mu @ e), e.clone(), mu.clone()
    with torch.no_grad():
        target = head_geometry.logit_difference(trained, z_train, programs, positive_class)
    design = torch.cat([z_train, torch.ones(len(z_train), 1, dtype=z_train.dtype)], dim=1)
    fit = torch.linalg.lstsq(design, target[:, None]).solution[:, 0]
    u = z_train @ fit[:-1] + fit[-1]
    line = torch.linalg.lstsq(torch.stack([u, torch.ones_like(u)], dim=1), z_train).solution  # (2, n): z_i on u
    return fit[:-1], fit[-1], line[0].clone(), line[1].clone()


def projection(z_train, trained, programs, positive_class, coordinate):
    """(project, start, record): what the head reads in place of the slot inputs z, the head the refit starts from
    (the trained head on the projection), and the projection's parameters for the JSON."""
    if coordinate == "plane":
        mu, w, eigenvalues = head_geometry.active_subspace(trained, z_train, programs, positive_class, rank=2)
        record = {"mu": mu.tolist(), "W": w.tolist(), "eigenvalues": eigenvalues.tolist()}
        return (lambda z: mu + (z - mu) @ w @ w.T), trained, record
    a, c, scale, offset = line_through(z_train, trained, programs, positive_class, coordinate)

    def tied(z):  # (u, u, u, u): the coordinate on every qubit
        return (z @ a + c)[:, None].expand(-1, len(a)).contiguous()

    # scale * u + offset: the line through the inputs
    return tied, trained._replace(scale=scale, offset=offset), {"a": a.tolist(), "c": float(c)}


def refit_and_score(out_path: Path, run: Path, coordinate: str = "principal") -> None:
    from hybrid.data import resolve_data_root
    from hybrid.domains import load_bundle, split_to_tensors

    cfg, model, ckpt, programs = rr.load_dressed(run, "torch_noisy:fake_manila")
    bundle = load_bundle(cfg, resolve_data_root(cfg.data_root))
    x_train, _ = split_to_tensors(bundle.train, cfg.input_size, ckpt["in_channels"])
    z_train = rr.slot_inputs(model.eval(), x_train)
    trained = rr.trained_head(model)
    tied, start, record = projection(z_train, trained, programs, ckpt["positive_class"], coordinate)
    prefix = "plane" if coordinate == "plane" else "tied"
    z_fit = z_train[torch.randperm(len(z_train), generator=torch.Generator().manual_seed(cfg.seed))[:TRAIN_SAMPLES]]
    with torch.no_grad():
        anchor = rr.exact_logits(trained, z_fit, programs)
    heads = {"start": start}
    for w in WEIGHTS:
        t0 = time.time()
        heads[f"{prefix} weight {w}"] = rr.refit_head(tied(z_fit), anchor, programs, start, w or ZERO, SHOTS)
        print(run.name, "weight", w, f"{time.time() - t0:.0f} s", flush=True)
    centers = {}
    for name, (z, positive) in rr.validation_slot_inputs(cfg, bundle, model, ckpt, SAMPLES).items():
        args = (positive, ckpt["positive_class"], programs, SHOTS, DRAWS, cfg.seed)
        centers[name] = {**rr.score_center({rr.TRAINED: trained}, z, *args), **rr.score_center(heads, tied(z), *args)}
    out_path.write_text(json.dumps({"run": str(run), "coordinate": coordinate, **record,
                                    "heads": {k: h.to_lists() for k, h in heads.items()}, "centers": centers}, indent=1))


def pool(paths: list[Path]) -> None:
    runs = [json.loads(p.read_text()) for p in paths]
    print("\n".join(rr.pooled_lines(runs, SHOTS, DRAWS, lambda name: name.startswith(("tied", "plane")))))


if __name__ == "__main__":
    if sys.argv[1] == "--pool":
        pool([Path(p) for p in sys.argv[2:]])
    else:
        refit_and_score(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:4])

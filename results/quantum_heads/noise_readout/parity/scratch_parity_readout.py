"""Stage 1c diagnostic of ../RULE.md (a scratch script, kept so its figures can be rerun): a readout over all 15
Z-parities of the bitstrings, refitted on fixed embeddings, scored on the design-validation centers only.

    python results/quantum_heads/noise_readout/parity/scratch_parity_readout.py OUT_DIR RUN [RUN ...]

writes OUT_DIR/parity_readout.json and prints the table (parity_readout.txt is that output)."""
import itertools, json, sys
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(1)
from hybrid.studies import readout_refit as rr
from hybrid.quantum.noise import ZStrings
from hybrid.metrics import binary_auc
from hybrid.data import resolve_data_root
from hybrid.domains import load_bundle, split_to_tensors

WEIGHTS = [0, 1, 2, 4, 8]; SHOTS, DRAWS, SAMPLES = 1024, 8, 400
out = {}
OUT = Path(sys.argv[1])
for run in sys.argv[2:]:
    run = Path(run)
    cfg, model, ckpt, programs = rr.load_dressed(run, "torch_noisy:fake_manila")
    n = model.project.out_features
    labels15 = tuple("".join(c) for c in itertools.product("IZ", repeat=n) if "Z" in c)
    signs = ZStrings(labels15)
    trained = rr.trained_head(model)
    idx = [labels15.index(l) for l in programs.labels]
    w15 = torch.zeros(trained.weight.shape[0], len(labels15), dtype=torch.float64); w15[:, idx] = trained.weight

    def outputs(z):
        angles = rr.head_angles(trained, z, programs.angle_map)
        _, noisy = programs.device(angles, trained.circuit)
        _, exact = model.quantum.program.with_probabilities(angles, trained.circuit, True)
        return exact.double(), noisy.double()

    bundle = load_bundle(cfg, resolve_data_root(cfg.data_root))
    x_train, y_train = split_to_tensors(bundle.train, cfg.input_size, ckpt["in_channels"])
    with torch.no_grad():
        z = rr.slot_inputs(model.eval(), x_train)
        pe, pn = outputs(z)
    every = list(range(len(labels15)))  # the columns of the 15 parities each readout reads
    readouts = {"trained7": (trained.weight, trained.bias, idx), "trained15": (w15, trained.bias, every)}
    for w in WEIGHTS:
        W, b = rr.refit_readout(pn @ signs.matrix.double(), pn, y_train.long(), (w15, trained.bias), labels15, w, SHOTS)
        readouts[f"parity w{w}"] = (W, b, every)
    res = {}
    for name, (zc, positive) in rr.validation_slot_inputs(cfg, bundle, model, ckpt, SAMPLES).items():
        with torch.no_grad():
            pe, pn = outputs(zc)
        exact, drawn = pe @ signs.matrix.double(), rr.draw_device_values(pn, labels15, SHOTS, DRAWS, cfg.seed)
        res[name] = {}
        for key, (W, b, cols) in readouts.items():
            res[name][key] = {"exact": binary_auc(rr.positive_score(exact[:, cols], (W, b), ckpt["positive_class"]), positive),
                              "device": float(np.mean([binary_auc(rr.positive_score(v[:, cols], (W, b), ckpt["positive_class"]), positive) for v in drawn]))}
    out[str(run)] = res
    keys = list(readouts)
    for k in keys:
        e = np.mean([res[c][k]["exact"] for c in res]); d = np.mean([res[c][k]["device"] for c in res])
        print(run.name, f"{k:12s} exact {e:.4f} device {d:.4f} loss {e-d:+.4f}", flush=True)
(OUT / "parity_readout.json").write_text(json.dumps(out, indent=1))
keys = list(next(iter(out.values()))[next(iter(next(iter(out.values()))))].keys())
ref = {r: np.mean([c["trained7"]["device"] for c in res.values()]) for r, res in out.items()}
loss = np.mean([np.mean([c["trained7"]["exact"] - c["trained7"]["device"] for c in res.values()]) for res in out.values()])
print("trained loss", round(loss, 4))
for k in keys:
    e = np.mean([np.mean([c[k]["exact"] for c in res.values()]) for res in out.values()])
    d = np.mean([np.mean([c[k]["device"] for c in res.values()]) for res in out.values()])
    gain = np.mean([np.mean([c[k]["device"] for c in res.values()]) - ref[r] for r, res in out.items()])
    print(f"{k:12s} exact {e:.4f} device {d:.4f} recovered on device {100*gain/loss:+.0f}%")

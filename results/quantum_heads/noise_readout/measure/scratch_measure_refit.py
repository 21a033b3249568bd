"""Stage 1h of ../RULE.md (a scratch script, kept so its figures can be rerun): a trained measurement layer appended
after the trained circuit (the prepared states fixed), refitted with the readout for the device's shots, scored on the
design-validation centers only.

    python results/quantum_heads/noise_readout/measure/scratch_measure_refit.py OUT_JSON RUN
    python results/quantum_heads/noise_readout/measure/scratch_measure_refit.py --pool OUT_JSON [OUT_JSON ...]

the first writes one run's heads and scores (run the seeds side by side, one thread each); --pool prints the table
(measure_refit.txt is that output)."""
import json, sys, time
from pathlib import Path
import torch
import torch.nn.functional as F
torch.set_num_threads(1)
from hybrid.studies import readout_refit as rr

SHOTS, DRAWS, SAMPLES, TRAIN_SAMPLES, WEIGHTS, LAYERS = 1024, 8, 400, 500, (1, 4, 16, 64), ("local", "entangled")


def measured_programs(model, layer: str, device_spec: str, angle_map: str):
    """The trained circuit with the measurement layer appended (its parameters after the trained weights), as the
    exact engine and the device's density program, and the layer's parameter count."""
    from qiskit.circuit import ParameterVector
    from backends import get_backend
    from hybrid.quantum.layer import CircuitSpec
    from hybrid.quantum.statevector import compile_circuit

    spec = model.quantum.spec
    n = spec.circuit.num_qubits
    m = ParameterVector("m", 2 * n if layer == "local" else 4 * n + n - 1)
    circuit, k = spec.circuit.copy(), iter(m)

    def rotations():
        for q in range(n):
            circuit.rz(next(k), q)
            circuit.ry(next(k), q)

    rotations()
    if layer == "entangled":
        for q in range(n - 1):
            circuit.rzz(next(k), q, q + 1)
        rotations()
    extended = CircuitSpec(circuit, spec.input_params, list(spec.weight_params) + list(m), spec.observables)
    exact = compile_circuit(circuit, extended.input_params, extended.weight_params, extended.observables)
    name, _, noise_model = device_spec.partition(":")
    program = get_backend(name, noise_model=noise_model, shots=0).make_runner(extended).program
    return rr.Programs(exact, program, angle_map, tuple(program.labels)), len(m)


def refit_measurement(z, anchor, programs, start: rr.Head, n_fixed: int, weight: float, max_iter: int = 50) -> rr.Head:
    """The layer's parameters and the readout minimising stage 1b's objective; everything in front stays as trained."""
    fixed = start.circuit[:n_fixed]
    params = [t.detach().double().clone().requires_grad_(True)
              for t in (start.circuit[n_fixed:], start.weight, start.bias)]
    optimizer = torch.optim.LBFGS(params, max_iter=max_iter, line_search_fn="strong_wolfe")
    target = anchor.double().softmax(dim=1)
    angles = rr.head_angles(start, z, programs.angle_map).detach()

    def closure():
        optimizer.zero_grad()
        values, probabilities = programs.device(angles, torch.cat([fixed, params[0]]))
        logits = values.double() @ params[1].T + params[2]
        loss = F.kl_div(logits.log_softmax(dim=1), target, reduction="batchmean")
        loss = loss + weight * rr.readout_penalty(probabilities.double(), logits, params[1], programs.labels, SHOTS)
        loss.backward()
        return loss

    optimizer.step(closure)
    return start._replace(circuit=torch.cat([fixed, params[0].detach()]), weight=params[1].detach(),
                          bias=params[2].detach())


def refit_and_score(out_path: Path, run: Path) -> None:
    from hybrid.domains import split_to_tensors

    cfg, model, ckpt, programs, bundle = rr.load_design(run, "torch_noisy:fake_manila")
    x_train, _ = split_to_tensors(bundle.train, cfg.input_size, ckpt["in_channels"])
    z_train = rr.slot_inputs(model.eval(), x_train)
    z_fit = z_train[torch.randperm(len(z_train), generator=torch.Generator().manual_seed(cfg.seed))[:TRAIN_SAMPLES]]
    trained = rr.trained_head(model)
    with torch.no_grad():
        anchor = rr.exact_logits(trained, z_fit, programs)
    centers_z = rr.validation_slot_inputs(cfg, bundle, model, ckpt, SAMPLES)
    centers = {name: rr.score_center({rr.TRAINED: trained}, z, positive, ckpt["positive_class"], programs, SHOTS,
                                     DRAWS, cfg.seed) for name, (z, positive) in centers_z.items()}
    heads = {}
    for layer in LAYERS:
        extended, n_layer = measured_programs(model, layer, "torch_noisy:fake_manila", programs.angle_map)
        start = trained._replace(circuit=torch.cat([trained.circuit, torch.zeros(n_layer, dtype=torch.float64)]))
        layer_heads = {f"{layer} start": start}
        for w in WEIGHTS:
            t0 = time.time()
            layer_heads[f"{layer} weight {w}"] = refit_measurement(z_fit, anchor, extended, start, len(trained.circuit), w)
            print(run.name, layer, "weight", w, f"{time.time() - t0:.0f} s", flush=True)
        for name, (z, positive) in centers_z.items():
            centers[name].update(rr.score_center(layer_heads, z, positive, ckpt["positive_class"], extended, SHOTS,
                                                 DRAWS, cfg.seed))
        heads.update(layer_heads)
    out_path.write_text(json.dumps({"run": str(run), "heads": {k: h.to_lists() for k, h in heads.items()},
                                    "centers": centers}, indent=1))


def pool(paths: list[Path]) -> None:
    runs = [json.loads(p.read_text()) for p in paths]
    print("\n".join(rr.pooled_lines(runs, SHOTS, DRAWS, lambda name: "weight" in name)))


if __name__ == "__main__":
    if sys.argv[1] == "--pool":
        pool([Path(p) for p in sys.argv[2:]])
    else:
        refit_and_score(Path(sys.argv[1]), Path(sys.argv[2]))

"""Scratch: linear probes on encoded product states of the trained slot inputs, design-val centers only."""
import sys, math, itertools, numpy as np, torch
from pathlib import Path
from hybrid.studies import probe
from hybrid.data import resolve_data_root
from hybrid.domains import build_eval_domains, load_bundle, split_to_tensors
from hybrid.metrics import binary_auc
from hybrid.rundir import load_run
from hybrid.tta import make_tta

def ry(t): c, s = np.cos(t/2), np.sin(t/2); return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2).astype(complex)
def rz(t): e = np.exp(-0.5j*t); return np.stack([np.stack([e, 0*e], -1), np.stack([0*e, e.conj()], -1)], -2)
def zmarg(x, reps, with_rz):
    v = np.zeros(x.shape + (2,), complex); v[..., 0] = 1
    for _ in range(reps):
        v = np.einsum("...ij,...j->...i", ry(x), v)
        if with_rz: v = np.einsum("...ij,...j->...i", rz(x), v)
    p = np.abs(v)**2; return p[..., 0] - p[..., 1]
MAPS = {"tanh": lambda z: (np.tanh(z)+1)*math.pi/2, "arctan": lambda z: math.pi/2 + np.arctan(z)}
def feats(z, amap, reps, with_rz):
    m = zmarg(MAPS[amap](z), reps, with_rz)
    n = m.shape[1]
    return np.stack([np.prod(m[:, list(S)], 1) for k in range(1, n+1) for S in itertools.combinations(range(n), k)], 1)
ENC = {f"{a}_{'ryrz' if r_ else 'ry'}x{reps}": (a, reps, r_) for a in MAPS for reps in (1, 2) for r_ in (True, False)}
res = {k: [] for k in ["slot"] + list(ENC)}
for run in sys.argv[1:]:
    cfg, model, ckpt, backend = load_run(run); backend.close(); pc = ckpt["positive_class"]
    bundle = load_bundle(cfg, resolve_data_root(cfg.data_root))
    x, y = split_to_tensors(bundle.train, cfg.input_size, ckpt["in_channels"])
    tr = probe.readings(model.eval(), x, pc)["slot"]; pos = y.numpy() == pc
    doms = {n: d for n, d in build_eval_domains(cfg, bundle, ckpt["in_channels"], "validation").items() if not n.startswith("real:") and n != "clean"}
    seen = {}
    for n, (xd, yd) in doms.items():
        a = make_tta("adabn", model); a.prepare(xd)
        try: seen[n] = (probe.readings(model.eval(), xd, pc)["slot"], yd.numpy() == pc)
        finally: a.reset()
    for key in res:
        tf = (lambda z: z) if key == "slot" else (lambda z, e=ENC[key]: feats(z, *e))
        p = probe.fit_probe(tf(tr), pos)
        res[key].append(min(binary_auc(p.decision_function(tf(s)), l) for s, l in seen.values()))
    print(run, {k: round(v[-1], 3) for k, v in res.items()}, flush=True)
print("MEAN worst", {k: round(float(np.mean(v)), 4) for k, v in res.items()})

"""Scratch diagnostic (not part of the package): on the design-validation centers only, how does the
training-only aux classifier (a linear read of f, trained with the encoder) rank against the dressed head
of the same network? Both read from last.pt (the final epoch; for these runs also the selected one when
the 'best' epoch equals it, printed). adabn per center, as the studies evaluate."""
import sys
from pathlib import Path

import numpy as np
import torch

from hybrid.data import resolve_data_root
from hybrid.domains import build_eval_domains, load_bundle
from hybrid.metrics import binary_auc
from hybrid.rundir import load_run
from hybrid.tta import make_tta

for run in sys.argv[1:]:
    run_dir = Path(run)
    cfg, model, ckpt, backend = load_run(run_dir)
    backend.close()
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    algo = state["algorithm"]
    model.load_state_dict({k.removeprefix("network."): v for k, v in algo.items() if k.startswith("network.")})
    aux = torch.nn.Linear(algo["aux_classifier.weight"].shape[1], algo["aux_classifier.weight"].shape[0])
    aux.load_state_dict({"weight": algo["aux_classifier.weight"], "bias": algo["aux_classifier.bias"]})
    pc = ckpt["positive_class"]
    bundle = load_bundle(cfg, resolve_data_root(cfg.data_root))
    domains = {n: d for n, d in build_eval_domains(cfg, bundle, ckpt["in_channels"], "validation").items()
               if not n.startswith("real:")}
    rows = {}
    for name, (x, y) in domains.items():
        adabn = make_tta("adabn", model)
        adabn.prepare(x)
        with torch.no_grad():
            try:
                f = torch.cat([model.features(x[i:i + 256]) for i in range(0, len(x), 256)])
                head = torch.softmax(model.head(f).float(), 1)[:, pc]
                teacher = torch.softmax(aux(f).float(), 1)[:, pc]
            finally:
                adabn.reset()
        labels = y.numpy() == pc
        rows[name] = (binary_auc(head.numpy(), labels), binary_auc(teacher.numpy(), labels))
    centers = [v for k, v in rows.items() if k != "clean"]
    worst = [min(c[i] for c in centers) for i in (0, 1)]
    mean = [float(np.mean([c[i] for c in centers])) for i in (0, 1)]
    print(f"{run}: epoch {state['epoch']} best {state['best']['epoch']} | worst head {worst[0]:.3f} aux {worst[1]:.3f} "
          f"| mean head {mean[0]:.3f} aux {mean[1]:.3f} | clean head {rows['clean'][0]:.3f} aux {rows['clean'][1]:.3f}",
          flush=True)

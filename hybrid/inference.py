"""Inference: class probabilities with test-time adaptation, per-domain metrics, source thresholds."""

from __future__ import annotations

import logging

import numpy as np
import torch

from hybrid.devices import module_device
from hybrid.metrics import domain_metrics, threshold_from_probs
from hybrid.registry import lookup
from hybrid.tta import TTA_METHODS, make_tta

log = logging.getLogger(__name__)


def predict_probs(model: torch.nn.Module, x: torch.Tensor, tta: str = "none", batch_size: int = 256,
                  progress: bool = False, desc: str = "", partial=None,
                  statistics_from: torch.Tensor | None = None, counters: dict | None = None) -> np.ndarray:
    """Class probabilities, adapting with `tta` and restoring the model afterwards.

    With `partial` (a `backends.partial.PartialResults`), batches saved earlier under the key
    `desc` are reused and each new batch is saved as soon as it is done. A domain-level method
    (adabn) takes its statistics from `statistics_from` if given, else from `x` itself.
    `counters`, if given, receives the method's counters (batches adapted, fallbacks, ...) and
    `reused_batches`, the batches taken from `partial` (adapted by an earlier, interrupted run).
    """
    method = make_tta(tta, model)
    device = module_device(model)
    out = []
    reused = 0
    batches = range(0, len(x), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=desc, leave=False, unit="batch")
    try:  # an error or Ctrl-C while the domain's statistics are taken must restore the model too
        method.prepare(x if statistics_from is None else statistics_from)
        for start in batches:
            saved = partial.get(desc, start) if partial is not None else None
            if saved is not None:
                out.append(saved)
                reused += 1
                continue
            logits = method.predict(x[start:start + batch_size].to(device))
            out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
            if partial is not None:
                partial.add(desc, start, out[-1])
    finally:
        method.reset()
        if counters is not None:
            counters.update(method.counters | {"reused_batches": reused})
    return np.concatenate(out) if out else np.zeros((0, 0))


def evaluate_domains(model, domains: dict[str, tuple[torch.Tensor, torch.Tensor]], *, threshold: float,
                     positive_class: int, tta: str, batch_size: int = 256, n_bootstrap: int = 1000,
                     seed: int = 0, progress: bool = True, partial=None) -> tuple[dict, dict]:
    """Per-domain metrics and the raw (labels, probs) for ROC curves.

    With a TTA method other than none, each domain's metrics carry its `tta_counters` (how many
    batches were adapted, fell back to the source statistics, or had a collapse undone).
    """
    per_domain, raw = {}, {}
    for name, (x, y) in domains.items():
        counters: dict = {}
        probs = predict_probs(model, x, tta, batch_size, progress, desc=name, partial=partial, counters=counters)
        labels = y.numpy()
        if len(np.unique(labels)) < 2:
            log.warning("%s holds images of one class only: its AUC and the other class's rate are undefined (n/a; "
                        "the mean rows say how many centers they cover), and its balanced accuracy is the one rate "
                        "defined (as scikit-learn's)", name)
        per_domain[name] = domain_metrics(labels, probs, threshold=threshold, positive_class=positive_class,
                                          n_bootstrap=n_bootstrap, seed=seed)
        if tta != "none":
            per_domain[name]["tta_counters"] = counters
        raw[name] = (labels, probs)
    return per_domain, raw


def source_threshold(model, x_val, y_val, *, tta: str, positive_class: int, batch_size: int) -> float:
    """Decision threshold from SOURCE validation data only (never from a target domain)."""
    return threshold_from_probs(y_val, predict_probs(model, x_val, tta, batch_size), positive_class)


def check_tta_on_backend(tta: str, backend) -> None:
    """Refuse an unknown TTA method, or one that back-propagates on a backend that gives no gradients."""
    refuse_gradient_tta(tta, None if backend.exact else backend.name)


def refuse_gradient_tta(tta: str, where: str | None) -> None:
    """Raise ValueError for an unknown method, or one that needs gradients `where` gives none (None: exact)."""
    if lookup(TTA_METHODS, tta, "TTA method").needs_gradients and where is not None:
        raise ValueError(f"TTA {tta!r} needs gradients through the quantum layer, which {where} does not "
                         f"give at inference; use --tta with one of: {', '.join(gradient_free_tta())}")


def gradient_free_tta() -> tuple[str, ...]:
    """TTA methods that run on any backend (no back-propagation at test time)."""
    return tuple(m for m, cls in TTA_METHODS.items() if not cls.needs_gradients)

"""report.md of an ablation study (`hybrid.studies.report`), written from the report dict.

Every number comes from the dict `build_report` assembled from the runs' JSON files; this
module only lays them out as Markdown tables and sentences.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from hybrid.config import TrainConfig, upgrade_fields
from hybrid.reporting import fmt
from hybrid.studies.loso import FOLDS, selection_table
from hybrid.studies.results import ALPHA, BASELINE, MIN_PAIRS, SETTINGS, STATS, Run, mean_std


def _pm(s: dict) -> str:
    return fmt(s["mean"]) + (f" ± {fmt(s['std'])}" if math.isfinite(s["std"]) else "")


def _p(p) -> str:
    return "n/a" if p is None else (f"{p:.2g}" if p < 0.001 else f"{p:.3f}")


def method_components(cfg: dict, trained_with: str | None = None) -> str:
    """The method's components, e.g. "shift + DANN + quantum"; ERM is the absence of an algorithm.
    `trained_with`: the algorithm the run trained with (ERM where the configured one needs domains it lacked)."""
    algorithm = trained_with or upgrade_fields(cfg).get("algorithm", "erm")
    parts = [name for name, on in (("colour constancy", cfg.get("colour_constancy")), ("shift", cfg.get("shift")),
                                   (algorithm.upper(), algorithm != "erm"),
                                   (f"aux loss x{cfg.get('aux_weight', 0.0):g}", cfg.get("aux_weight")),
                                   (_head_gradient(cfg), cfg.get("head_grad_scale", 1.0) != 1.0),
                                   (f"head distilled from the aux classifier x{cfg.get('head_distill', 0.0):g} "
                                    f"at T={cfg.get('distill_temperature', TrainConfig.distill_temperature):g}", cfg.get("head_distill")),
                                   (f"weight EMA {cfg.get('ema_decay', 0.0):g}", cfg.get("ema_decay")),
                                   ("last epoch kept", cfg.get("selection", "auc") == "last"),
                                   (_quantum_part(cfg), cfg.get("quantum")))
             if on]
    return " + ".join(parts) or "none"


def _head_gradient(cfg: dict) -> str:
    scale = cfg.get("head_grad_scale", 1.0)
    return "head on detached f" if scale == 0 else f"head gradient x{scale:g} to the encoder"


def _quantum_part(cfg: dict) -> str:
    """"quantum", or with its head, layer and width where they differ from the concat PQC on 4 qubits."""
    head, layer, n = cfg.get("quantum_head", "concat"), cfg.get("quantum_layer", "pqc"), cfg.get("n_qubits", 4)
    circuit = "" if layer not in ("pqc", "separable") else "".join(
        [f", {cfg['feature_map']} map" if cfg.get("feature_map", "zz") != "zz" else "",
         f", encoded x{cfg['q_feature_reps']}" if cfg.get("q_feature_reps", 2) != 2 else "",
         f", re-uploaded x{cfg['q_reupload']}" if cfg.get("q_reupload", 1) > 1 else "",
         f", {cfg['q_observables']} observables" if cfg.get("q_observables", "z") != "z" else "",
         _noise_aware(cfg)])
    slot = "".join([f", slot lr x{cfg['q_lr_scale']:g}" if cfg.get("q_lr_scale", 1.0) != 1.0 and layer != "none" else "",
                    ", angle BN" if cfg.get("q_angle_norm") else "",
                    ", arctan angles" if cfg.get("q_angle_map", "tanh") != "tanh" and layer != "none" else "",
                    _slot_dropout(cfg),
                    f", label smoothing {cfg['label_smoothing']:g}" if cfg.get("label_smoothing", 0.0) else ""])
    if (head, layer, n, circuit, slot) == ("concat", "pqc", 4, "", ""):
        return "quantum"
    return f"quantum ({head}, {layer}, {n} qubits{circuit}{slot})"


def _slot_dropout(cfg: dict) -> str:
    """The slot's input dropout, with its rate where it is not TrainConfig's default."""
    if not cfg.get("q_input_dropout"):
        return ""
    rate = cfg.get("dropout", TrainConfig.dropout)
    return ", slot input dropout" + (f" {rate:g}" if rate != TrainConfig.dropout else "")


def _noise_aware(cfg: dict) -> str:
    if not (cfg.get("q_train_shots", 0) or cfg.get("q_readout_error", 0) or cfg.get("q_attenuation")
            or cfg.get("q_noise_channel") == "density"):
        return ""
    kinds = [cfg["q_shot_noise"]] if cfg.get("q_shot_noise") in ("pathwise", "joint", "marginal") else []
    if cfg.get("q_noise_channel") == "density":
        kinds.append(f"noise model of {cfg['q_noise_device']}")
    elif cfg.get("q_noise_device") or cfg.get("q_attenuation"):
        kinds.append(f"attenuation of {cfg['q_noise_device']}" if cfg.get("q_noise_device") else "attenuation")
    return f", noise-aware ({', '.join(kinds)})" if kinds else ", noise-aware"


def _parameters(report: dict) -> str:
    """Trainable parameters of the network (of the quantum slot), from runs that recorded them."""
    counts = report.get("parameters")
    return f"{counts['total']:,} ({counts['layer']})" if counts else "n/a"


def _table(table: dict, runs: list[Run]) -> list[str]:
    reports = {r.variant: r.report for r in runs}
    head = ["variant", "components", "parameters (layer)", "seeds", *STATS.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v, stats in table.items():
        seeds = stats["auc_mean"]["n"]
        trained_with = reports[v].get("run", {}).get("algorithm")
        cells = [v, method_components(reports[v].get("config", {}), trained_with), _parameters(reports[v]), str(seeds)]
        lines.append("| " + " | ".join([*cells, *(_pm(stats[k]) for k in STATS)]) + " |")
    return lines


def _comparison_lines(rows: list[dict], label: str) -> list[str]:
    """Long-form table; per-seed rows only where the seeds allow a test (report.json has them all)."""
    rows = [r for r in rows if r["unit"] != "seed" or r["p"] is not None]
    head = [label, "metric", "pairs", "mean difference", "higher / lower", "p (Wilcoxon)", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join([row["name"], f"{row['metric']} (per {row['unit']})", str(row["n"]),
                                        f"{row['mean_diff']:+.4f}" if math.isfinite(row["mean_diff"]) else "n/a",
                                        f"{row['higher']} / {row['lower']}", _p(row["p"]), row["verdict"]]) + " |")
    return lines


def _answer(group: dict, primary: str, tta: str) -> list[str]:
    """One sentence per variant (does it beat erm on AUC?) and one on TTA."""
    lines = []
    for row in group["comparisons"][primary]:
        if row["metric"] != "AUC":
            continue
        per_seed = next(r for r in group["comparisons"][primary]
                        if r["name"] == row["name"] and r["metric"] == STATS["auc_mean"])
        lines.append(f"- **{row['name']}** vs {BASELINE} ({SETTINGS[primary]}): AUC difference "
                     f"{row['mean_diff']:+.4f} on average over {row['n']} (seed, center) pairs, "
                     f"p = {_p(row['p'])}: {row['verdict']}; per-seed test: {per_seed['verdict']}"
                     + (f" (p = {_p(per_seed['p'])})" if per_seed["p"] is not None else "") + ".")
    effects = [r for r in group["tta_effect"] if r["metric"] == "AUC"]
    if effects:
        lines.append(f"- **TTA ({tta})** vs none, AUC over (seed, center) pairs: " + "; ".join(
            f"{r['name']} {r['mean_diff']:+.4f} (p = {_p(r['p'])}, {r['verdict']})" for r in effects) + ".")
    if lines:
        lines += ["", "(Seed, center) pairs within one seed share a trained model, so their p-value speaks for "
                  "these models rather than for the training recipe; the per-seed test speaks for the recipe "
                  f"and needs at least {MIN_PAIRS} seeds to reach p < {ALPHA}."]
    return lines


def _data_lines(report: dict) -> list[str]:
    data, pos = report.get("data") or {}, report.get("positive_class", 1)
    names = data.get("class_names") or []
    label = names[pos] if pos < len(names) else f"class {pos}"
    lines = [f"| part | n | share {label} | centers |", "|---|---|---|---|"]
    parts = list((data.get("splits") or {}).items()) + list((data.get("test_domains") or {}).items())
    for name, part in parts:
        counts = part.get("class_counts") or []
        share = counts[pos] / part["n"] if part.get("n") and pos < len(counts) else math.nan
        centers = ", ".join(f"{k} {v}" for k, v in (part.get("centers") or {}).items()) or "-"
        lines.append(f"| {name} | {part.get('n')} | {fmt(share)} | {centers} |")
    return lines


def shared_settings(runs: list[Run]) -> dict:
    """Config values every run has and today's TrainConfig defaults do not (seed and threads aside).

    Read from the runs' own configs, so a study made before a default changed still says what
    it ran with.
    """
    from hybrid.config import TrainConfig

    configs = [TrainConfig.from_dict(r.report["config"]).to_dict() for r in runs if r.report.get("config")]
    if not configs:
        return {}
    defaults = TrainConfig().to_dict()
    return {k: v for k, v in configs[0].items()
            if k not in ("seed", "threads") and v != defaults[k] and all(c[k] == v for c in configs)}


def markdown(result: dict, runs: list[Run]) -> str:
    """The whole report.md: settings, per-group tables and tests, findings, figures, data and runs."""
    first = runs[0].report
    tta = first.get("tta") or "none"
    out = _intro_lines(result, runs, tta) + loso_selection_lines(result, runs) + selection_lines(result, runs)
    for title, g in result["groups"].items():
        out += _group_lines(title, g, result["primary_setting"], tta, runs)
    out += [f"A difference with p ≥ {ALPHA} is not significant; 'too few pairs' means the test cannot reach "
            f"p < {ALPHA} with that many non-zero differences (a Wilcoxon test needs at least {MIN_PAIRS}).", ""]
    out += _finding_lines(result)
    out += per_class_lines(runs)
    if result["figures"]:
        out += ["## Figures", ""] + [f"![{k}]({rel})\n" for k, rel in result["figures"].items()]
    out += ["## Data", "", *_data_lines(first), ""]
    out += _run_lines(result)
    return "\n".join(out)


def _intro_lines(result: dict, runs: list[Run], tta: str) -> list[str]:
    study, first = result["study"], runs[0].report
    out = [f"# Ablation study: {study.get('preset', Path(result['runs_dir']).name)} on {first['run'].get('dataset')}",
           ""]
    if study.get("description"):
        out += [study["description"] + ".", ""]
    shared = shared_settings(runs)
    if result.get("evaluation"):
        shared.pop("tta", None)  # the runs' own TTA is not the one reported with TTA here
    if shared:
        listed = ", ".join(f"{k}={v}" for k, v in shared.items())
        out += [f"Settings shared by every run (all others at the TrainConfig defaults): {listed}.", ""]
    out += [f"- {note}" for note in study.get("notes", [])] + [""]
    out += [f"**Warning:** {w}" for w in result.get("warnings", [])] + ([""] if result.get("warnings") else [])
    source = ("the runs' report.json files" if not result.get("evaluation") else
              f"the runs' eval_{result['evaluation']}.json files (with TTA) and report.json files (without)")
    parts = study.get("parts")
    if parts:
        kept = "".join([f"; variants {', '.join(parts['variants'])}" if parts.get("variants") else "",
                        f"; seeds {', '.join(map(str, parts['seeds']))}" if parts.get("seeds") is not None else ""])
        out += [f"Runs from {', '.join(parts['dirs'])}{kept}.", ""]
    out += [f"Variants: {', '.join(result['variants'])}; {len(runs)} finished runs. Every number below is "
            f"computed from {source}. TTA = {tta} at test time; the decision threshold is "
            "fixed on source validation data.", ""]
    return out


def _group_lines(title: str, g: dict, primary: str, tta: str, runs: list[Run]) -> list[str]:
    out = [f"## {title[0].upper() + title[1:]}", "", f"Centers ({len(g['domains'])}): {', '.join(g['domains'])}.", ""]
    answer = _answer(g, primary, tta)
    if answer:
        out += ["**Does each component help?** Paired comparisons (Wilcoxon signed-rank):", "", *answer, ""]
    for setting, label in SETTINGS.items():
        if g["tables"][setting]:
            out += [f"### {label[0].upper() + label[1:]} ({tta if setting == 'tta' else 'none'})", "",
                    "Mean ± std over seeds of per-run statistics across the centers above.", "",
                    *_table(g["tables"][setting], runs), ""]
    for setting, label in SETTINGS.items():
        if g["comparisons"][setting]:
            out += [f"### Paired comparison with {BASELINE}, {label}", "",
                    *_comparison_lines(g["comparisons"][setting], "variant"), ""]
    if g["tta_effect"]:
        out += [f"### TTA ({tta}) versus no TTA, per variant", "", *_comparison_lines(g["tta_effect"], "variant"), ""]
    if any(g["quantum_effect"].values()):
        out += ["### Does the quantum layer help? Variants that differ only by the layer", ""]
        for setting, label in SETTINGS.items():
            if g["quantum_effect"][setting]:
                out += [f"{label[0].upper() + label[1:]}:", "",
                        *_comparison_lines(g["quantum_effect"][setting], "comparison"), ""]
    return out


def selection_lines(result: dict, runs: list[Run]) -> list[str]:
    """Which variant the source-validation rule picks, with its held-out figures beside erm's."""
    sel = result.get("selection") or {}
    if not sel.get("selected"):
        return []
    out = ["## Selection on source validation", "", f"Rule: {sel['rule']} (no held-out center is looked at).", "",
           "| variant | source-validation AUC | seeds |", "|---|---|---|"]
    for variant, s in sel["scores"].items():
        mark = " (selected)" if variant == sel["selected"] else ""
        out.append(f"| {variant}{mark} | {_pm(s)} | {s['n']} |")
    return out + [""] + _held_out_lines(runs, sel["selected"]) + [""]


def loso_selection_lines(result: dict, runs: list[Run]) -> list[str]:
    """The leave-one-source-out choice made before this study's runs (--validation loso): its fold scores, and
    the chosen variant's held-out figures beside erm's."""
    sel = result.get("loso_selection")
    if not sel:
        return []
    chosen = sel.get("selected")
    out = ["## Leave-one-source-out selection", "",
           f"Chosen before the study's runs, from fold runs that each leave one training source out "
           f"(`{FOLDS}/`; the held-out centers are not loaded). Rule: {sel['rule']}.", "", *selection_table(sel), ""]
    if not chosen:
        return out + ["No variant was selected: some folds have not finished or scored no AUC "
                      "(`python -m hybrid.experiment --status` on this folder lists them).", ""]
    return out + _held_out_lines(runs, chosen) + [""]


def _held_out_lines(runs: list[Run], selected: str) -> list[str]:
    """Mean AUC over seeds on the real held-out centers and the in-domain test split: the selected variant, erm."""
    held_out = [d for d in runs[0].report.get("unseen", []) if d.startswith("real:")] + ["clean"]
    out = []
    for variant in dict.fromkeys([selected, BASELINE]):
        means = {domain: mean_std([r.report["domains"][domain].get("auc") for r in runs
                                   if r.variant == variant and domain in r.report["domains"]]) for domain in held_out}
        cells = [f"{domain} {fmt(m['mean'])}" for domain, m in means.items() if m["n"]]
        if cells:
            out.append(f"- {variant}: mean AUC over seeds (with the run's TTA): " + ", ".join(cells) + ".")
    return out


def per_class_lines(runs: list[Run]) -> list[str]:
    """Multi-class runs: one-vs-rest AUC of every class on the in-domain test split and each real
    held-out center, mean over seeds per variant (which diagnoses carry, and which fail)."""
    first = runs[0].report
    names = first.get("data", {}).get("class_names") or []
    domains = [d for d in first["domains"] if d == "clean" or d.startswith("real:")]
    if len(names) < 3 or not any("auc_per_class" in first["domains"][d] for d in domains):
        return []
    out = ["## Per-class AUC (one vs rest)", "", "Mean over seeds, with the run's TTA.", ""]
    for domain in domains:
        out += [f"### {domain}", "", "| variant | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for variant in dict.fromkeys(r.variant for r in runs):
            rows = [r.report["domains"][domain].get("auc_per_class") or [] for r in runs if r.variant == variant]
            cells = []
            for k in range(len(names)):
                values = [row[k] for row in rows if k < len(row) and row[k] is not None]
                cells.append(fmt(sum(values) / len(values)) if values else "–")
            out.append(f"| {variant} | " + " | ".join(cells) + " |")
        out.append("")
    return out


def _finding_lines(result: dict) -> list[str]:
    """The hardest center's recomputed ROC, and the feature-invariance table."""
    out = []
    if result.get("hardest_center"):
        h = result["hardest_center"]
        out += ["## Hardest center", "", f"{h['center']} has the lowest mean AUC over all runs "
                f"({fmt(h['mean_auc'])}); its ROC curves (lowest seed of each variant) were recomputed from the "
                "checkpoints and agree with the stored AUCs: " + ", ".join(
                    f"{v} {fmt(c['recomputed_auc'])} (stored {fmt(c['reported_auc'])})" for v, c in h["runs"].items())
                + ".", ""]
    inv = result.get("invariance")
    if inv:
        out += ["## Domain invariance of the encoder features", "",
                f"Accuracy of a linear classifier (shrinkage LDA, 5-fold cross-validation) that tells apart {len(inv['domains'])} "
                f"centers ({', '.join(inv['domains'])}) from encoder features of {inv['samples_per_domain']} test "
                "images per center (the same images under every virtual center; eval mode, no TTA); lower is "
                "more invariant.", "",
                "| variant | seed | center accuracy | chance |", "|---|---|---|---|"]
        out += [f"| {v} | {x['seed']} | {fmt(x['center_accuracy'])} | {fmt(x['chance'])} |"
                for v, x in inv["variants"].items()] + [""]
    return out


def _machine_line(machine: dict, where: str, hosts: list[str]) -> str:
    described = (f"{machine.get('cpu')}, {machine.get('cores')} cores, {machine.get('memory')} RAM, GPU: "
                 f"{machine.get('gpu') or 'none'}; torch {machine.get('torch')}, Python {machine.get('python')}")
    if machine.get("launcher") == "slurm":  # study.json describes the login node; the runs trained elsewhere
        nodes = ", ".join(hosts) if hosts else "not recorded"
        return (f"Machine{where}: Slurm nodes (the runs' hosts: {nodes}); submitted from {machine.get('host')}: "
                f"{described}.")
    return f"Machine{where}: {described}."


def _run_lines(result: dict) -> list[str]:
    """Machine, invocations, the table of runs, open failures and what was left out."""
    study = result["study"]
    machines = study.get("machines") or {"": study.get("machine") or {}}
    if len({json.dumps(m, sort_keys=True) for m in machines.values()}) == 1:
        machines = {"": next(iter(machines.values()))}  # one machine for all folders: said once
    out = ["## Runs", ""]
    hosts = sorted({r["host"] for r in result["runs"] if r.get("host")})
    for folder, machine in machines.items():
        if machine:
            out += [_machine_line(machine, f" ({folder})" if len(machines) > 1 else "", hosts), ""]
    for inv_ in study.get("invocations", []):
        out += [f"- {inv_.get('started')} (workers {inv_.get('workers')}): `{inv_.get('command')}`"]
    out += ["", "| variant | seed | epochs | best epoch | minutes | threads |", "|---|---|---|---|---|---|"]
    out += [f"| {r['variant']} | {r['seed']} | {r['epochs']} | {r['best_epoch']} | {fmt(r['minutes'], 1)} | "
            f"{r['threads']} |" for r in result["runs"]] + [""]
    if result["failures"]:
        out += ["## Failed runs (not finished)", ""] + [
            f"- {f['folder'] + '/' if 'folder' in f else ''}{f['variant']}/seed{f['seed']}: {f.get('error')}"
            for f in result["failures"]] + [""]
    if result["skipped"]:
        out += ["## Left out", ""] + [f"- {s}" for s in result["skipped"]] + [""]
    return out

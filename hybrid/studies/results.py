"""A study's runs as data: load them, summarize per variant, and compare variants in pairs.

`hybrid.report` turns these into report.md and figures; everything here is plain numbers,
so tests and notebooks can use it without matplotlib or checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hybrid.config import ENVIRONMENT_FIELDS, TrainConfig
from hybrid.metrics import summarize_domains
from hybrid.reporting import counted
from hybrid.rundir import is_run_dir
from hybrid.studies.runs import seed_of

log = logging.getLogger(__name__)

BASELINE = "erm"
ALPHA = 0.05
MIN_PAIRS = 6  # below 6 non-zero pairs a two-sided Wilcoxon test cannot reach p < 0.05
SETTINGS = {"tta": "with TTA", "no_tta": "without TTA"}
STATS = {"auc_mean": "mean AUC", "auc_worst": "worst-center AUC", "sensitivity": "sensitivity",
         "specificity": "specificity", "auc_std": "AUC std across centers"}
PER_CENTER = {"AUC": "auc", "sensitivity": "sensitivity", "specificity": "specificity"}  # paired by (seed, center)
PER_SEED = ("auc_mean", "auc_worst", "auc_std")  # run-level statistics, paired by seed


@dataclass
class Run:
    variant: str
    seed: int
    path: Path
    report: dict

    def domains(self, setting: str) -> dict | None:
        """Per-domain metrics with (`tta`) or without (`no_tta`) test-time adaptation."""
        r = self.report
        if setting == "tta":
            return r["domains"] if r.get("tta", "none") != "none" else None
        return r.get("domains_no_tta") or (r["domains"] if r.get("tta") == "none" else None)


def load_runs(runs_dir: Path, evaluation: str | None = None) -> tuple[dict, list[Run]]:
    """study.json (or {}) and every finished run, in the study's variant order, then by seed.

    With `evaluation`, each run's with-TTA results are those of its `eval_<evaluation>.json`
    (written by `hybrid.evaluate --name`), e.g. the same runs under another TTA method; the
    no-TTA results stay the run's own.
    """
    runs_dir = Path(runs_dir)
    study_path = runs_dir / "study.json"
    study = json.loads(study_path.read_text()) if study_path.is_file() else {}
    runs, missing = [], []
    for path in sorted(runs_dir.glob("*/seed*/report.json")):
        seed = seed_of(path.parent.name)
        if seed is None:
            continue
        try:
            report = json.loads(path.read_text())
        except ValueError:  # a disk-full write can leave it empty: the run counts as unfinished (as --status says)
            log.warning("%s does not parse: that run is left out as unfinished (rerun the study to redo it)", path)
            continue
        if evaluation:
            eval_path = path.parent / f"eval_{evaluation}.json"
            if not eval_path.is_file():
                missing.append(str(eval_path))
                continue
            ev = json.loads(eval_path.read_text())
            if ev.get("tta", "none") == "none":
                raise ValueError(f"{eval_path} was evaluated without TTA; --evaluation replaces the with-TTA results")
            # a run trained without TTA holds its no-TTA results in "domains": keep them as its own
            no_tta = report.get("domains_no_tta") or (report.get("domains") if report.get("tta") == "none" else None)
            report = report | {"domains": ev["domains"], "tta": ev["tta"], "evaluation": evaluation,
                               "domains_no_tta": no_tta}
        runs.append(Run(path.parent.parent.name, seed, path.parent, report))
    if missing:
        raise FileNotFoundError(f"{counted(len(missing), 'run')} ha{'s' if len(missing) == 1 else 've'} no eval_{evaluation}.json (first: {missing[0]}); "
                                f"make them with `python -m hybrid.evaluate --run RUN --tta METHOD --name {evaluation}`")
    return study, _in_study_order(study, runs)


def _in_study_order(study: dict, runs: list[Run]) -> list[Run]:
    order = list(study.get("variants", {}))
    return sorted(runs, key=lambda r: (order.index(r.variant) if r.variant in order else len(order), r.variant, r.seed))


def _refuse_non_study(runs_dir: Path) -> None:
    """A mistyped path, or one run's directory (which has its own report.md), said as such."""
    if not runs_dir.exists():
        raise FileNotFoundError(f"{runs_dir} does not exist; give a study directory written by hybrid.experiment")
    if is_run_dir(runs_dir):
        raise ValueError(f"{runs_dir} is one run's directory, not a study: its report is {runs_dir / 'report.md'} "
                         "(`python -m hybrid.report` compares the runs of a study directory)")


def load_study_runs(runs_dirs: list[Path], evaluation: str | None = None, variants: list[str] | None = None,
                    seeds: list[int] | None = None) -> tuple[dict, list[Run]]:
    """The finished runs of several study directories as one study, optionally only some variants and seeds.

    Studies trained in parts (a baseline in one folder, a candidate in another) are reported together this
    way instead of by copying runs: the first directory's study.json (even an absent one) leads, the others
    add their variants' configs and invocations, and each folder's machine is kept. Refused: a folder with no
    finished run, a (variant, seed) kept from two folders (which one was meant?), a variant trained with
    different settings in two folders, and variants or seeds asked for that no run has.
    """
    study, runs, where = None, [], {}
    for runs_dir in map(Path, runs_dirs):
        _refuse_non_study(runs_dir)
        part, part_runs = load_runs(runs_dir, evaluation)
        if not part_runs:
            raise FileNotFoundError(f"no finished runs (*/seed*/report.json) under {runs_dir}; "
                                    "run `python -m hybrid.experiment --out RUNS_DIR` first")
        study = dict(part) if study is None else _merged_study(study, part)
        study.setdefault("machines", {})[str(runs_dir)] = part.get("machine") or {}
        for run in part_runs:
            if not asked_for(run.variant, run.seed, variants, seeds):
                continue
            if (run.variant, run.seed) in where:
                raise ValueError(f"{run.variant} seed {run.seed} is in both {where[run.variant, run.seed]} and "
                                 f"{runs_dir}; keep one of them with --variants, --only-seeds or fewer --include")
            where[run.variant, run.seed] = runs_dir
            runs.append(run)
    _refuse_missing(runs, variants, seeds)
    _refuse_mixed_settings(runs, where)
    study["invocations"] = sorted(study.get("invocations", []), key=lambda inv: str(inv.get("started", "")))
    if len(runs_dirs) > 1 or variants is not None or seeds is not None:
        study["parts"] = {"dirs": [str(d) for d in runs_dirs], "variants": variants, "seeds": seeds}
    return study, _in_study_order(study, runs)


def asked_for(variant: str, seed: int, variants: list[str] | None, seeds: list[int] | None) -> bool:
    """Whether a run is among the variants and seeds asked for (None: all)."""
    return (variants is None or variant in variants) and (seeds is None or seed in seeds)


def _refuse_missing(runs: list[Run], variants: list[str] | None, seeds: list[int] | None) -> None:
    if not runs:
        raise ValueError(f"no finished run has any of the seeds asked for ({', '.join(map(str, seeds or []))})")
    found = variants_of(runs)
    unknown = [v for v in variants or [] if v not in found]
    if unknown:
        raise ValueError(f"no finished runs of {', '.join(unknown)} in these folders (with the seeds asked for)")
    absent = [(v, s) for v in found for s in seeds or [] if not any(r.variant == v and r.seed == s for r in runs)]
    if absent:
        raise ValueError("no finished run of " + ", ".join(f"{v} seed {s}" for v, s in absent)
                         + "; ask only for seeds every kept variant has")


def _refuse_mixed_settings(runs: list[Run], where: dict) -> None:
    """One variant from two folders must be the same recipe (a seed or where it ran may differ)."""
    first: dict[str, Run] = {}
    for run in runs:
        other = first.setdefault(run.variant, run)
        if where[run.variant, run.seed] == where[other.variant, other.seed] or "config" not in run.report:
            continue
        changed = TrainConfig.from_dict(other.report["config"]).differences(
            TrainConfig.from_dict(run.report["config"]), ignore=("seed", *ENVIRONMENT_FIELDS))
        if changed:
            raise ValueError(f"{run.variant} was trained differently in {where[other.variant, other.seed]} and "
                             f"{where[run.variant, run.seed]} ({', '.join(name for name, _, _ in changed)}); "
                             "report one folder's runs of it")


def mixed_input_statistics(runs: list[Run]) -> list[str]:
    """Variants whose seeds normalised their inputs differently (pretrained RGB runs from before and after the
    per-channel ImageNet statistics): their seeds are not the same recipe, which the config cannot show. A run
    older than the record used one value for every channel, so it differs only from per-channel records."""
    notes = []
    for variant in variants_of(runs):
        recorded: dict[str, list[int]] = {}
        unrecorded, per_channel = [], False
        for run in (r for r in runs if r.variant == variant):
            stats = run.report.get("run", {}).get("input_statistics")
            if not stats:
                unrecorded.append(run.seed)
                continue
            per_channel |= len(set(stats["mean"])) > 1 or len(set(stats["std"])) > 1
            recorded.setdefault(f"mean {_rounded(stats['mean'])}, std {_rounded(stats['std'])}", []).append(run.seed)
        if unrecorded and per_channel:
            recorded["not recorded (one value for every channel)"] = unrecorded
        if len(recorded) > 1:
            notes.append(f"{variant}: its seeds normalised their inputs differently ("
                         + "; ".join(f"seed {', '.join(map(str, seeds))}: {key}" for key, seeds in recorded.items())
                         + "); retrain the older seeds for a like-for-like comparison")
    return notes


def _rounded(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def _merged_study(study: dict, part: dict) -> dict:
    merged = dict(study)
    for key in ("variants", "configs"):
        leading = study.get(key, {})  # its entries win, and its order leads
        merged[key] = leading | {k: v for k, v in part.get(key, {}).items() if k not in leading}
    merged["invocations"] = study.get("invocations", []) + part.get("invocations", [])
    return merged


def variants_of(runs: list[Run]) -> list[str]:
    return list(dict.fromkeys(r.variant for r in runs))


def domain_groups(runs: list[Run]) -> dict[str, list[str]]:
    """Unseen centers common to all runs; real held-out centers get their own table as well.

    The in-distribution test split ("clean") comes last, so that what a method costs or
    gains where there is no shift is reported beside the shifted centers.
    """
    unseen = [d for d in runs[0].report.get("unseen", []) if all(d in r.report.get("unseen", []) for r in runs)]
    real = [d for d in unseen if d.startswith("real:")]
    if real and len(real) < len(unseen):
        groups = {"real held-out centers": real, "virtual target centers": [d for d in unseen if d not in real],
                  "all unseen centers": unseen}
    else:
        groups = {"unseen centers": unseen}
    if all("clean" in r.report.get("domains", {}) for r in runs):
        groups["in-distribution test split"] = ["clean"]
    return groups


def run_stats(domains: dict, names: list[str]) -> dict:
    s = summarize_domains({n: domains[n] for n in names if n in domains})
    return {"auc_mean": s["auc"]["mean"], "auc_worst": s["auc"]["worst"], "auc_std": s["auc"]["std"],
            "sensitivity": s["sensitivity"]["mean"], "specificity": s["specificity"]["mean"]}


def mean_std(values) -> dict:
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    return {"mean": float(v.mean()) if v.size else math.nan,
            "std": float(v.std(ddof=1)) if v.size > 1 else math.nan, "n": int(v.size)}


def variant_table(runs: list[Run], names: list[str], setting: str) -> dict[str, dict]:
    table = {}
    for variant in variants_of(runs):
        per_seed = [run_stats(d, names) for r in runs if r.variant == variant and (d := r.domains(setting))]
        if per_seed:
            table[variant] = {k: mean_std([s[k] for s in per_seed]) for k in STATS}
    return table


def paired_test(diffs) -> dict:
    """Wilcoxon signed-rank test of paired differences; p is None when it cannot be computed."""
    from scipy.stats import wilcoxon

    d = np.array([x for x in diffs if x is not None and math.isfinite(x)], dtype=float)
    r = np.round(d, 12)  # float noise must not break ties or hide zeros
    out = {"n": int(d.size), "mean_diff": float(d.mean()) if d.size else math.nan,
           "higher": int((r > 0).sum()), "lower": int((r < 0).sum()), "p": None}
    nonzero = r[r != 0]
    if nonzero.size == 0:
        out["verdict"] = "no difference" if d.size else "no pairs"
    elif nonzero.size < MIN_PAIRS:
        out["verdict"] = f"too few pairs (n={nonzero.size} < {MIN_PAIRS}) for a test"
    else:
        # exact null distribution without ties; with ties the normal approximation (scipy's
        # default there is a permutation test, seconds per call)
        tied = np.unique(np.abs(nonzero)).size < nonzero.size
        out["p"] = float(wilcoxon(nonzero, method="approx" if tied or nonzero.size > 50 else "exact").pvalue)
        if out["p"] < ALPHA:
            out["verdict"] = significant_verdict(nonzero, out["mean_diff"])
        else:
            out["verdict"] = f"not significant at {ALPHA}"
    return out


def significant_verdict(nonzero: np.ndarray, mean_diff: float) -> str:
    """The direction the signed-rank test found (its rank sums, not the mean: one large difference can outweigh
    many small ones of the other sign in the mean), and a warning where the mean points the other way."""
    from scipy.stats import rankdata

    ranks = rankdata(np.abs(nonzero))
    higher = ranks[nonzero > 0].sum() > ranks[nonzero < 0].sum()
    verdict = f"{'higher' if higher else 'lower'}, significant at {ALPHA}"
    if (mean_diff > 0) != higher:
        verdict += " (by the ranks; the mean difference points the other way)"
    return verdict


def by_seed(runs: list[Run], variant: str) -> dict[int, Run]:
    return {r.seed: r for r in runs if r.variant == variant}


def compare(a: dict[int, Run], b: dict[int, Run], names: list[str], setting_a: str, setting_b: str) -> dict:
    """Paired differences a - b: AUC and sensitivity per (seed, center); summaries per seed."""
    rows = {name: [] for name in PER_CENTER} | {STATS[k]: [] for k in PER_SEED}
    for seed in sorted(set(a) & set(b)):
        da, db = a[seed].domains(setting_a), b[seed].domains(setting_b)
        if not da or not db:
            continue
        for c in names:
            if c in da and c in db:
                for name, key in PER_CENTER.items():
                    rows[name].append(_diff(da[c].get(key), db[c].get(key)))
        sa, sb = run_stats(da, names), run_stats(db, names)
        for k in PER_SEED:
            rows[STATS[k]].append(_diff(sa[k], sb[k]))
    return {metric: paired_test(d) | {"unit": "seed x center" if metric in PER_CENTER else "seed"}
            for metric, d in rows.items()}


def _diff(x, y) -> float:
    return float(x) - float(y) if x is not None and y is not None else math.nan


def mean_auc_by_center(runs: list[Run], names: list[str]) -> dict[str, float]:
    """AUC of each center averaged over every run (as trained, i.e. with TTA when it was on)."""
    return {c: mean_std([r.report["domains"][c].get("auc") for r in runs if c in r.report["domains"]])["mean"]
            for c in names}


SELECTION_TIE = 0.005  # AUC: within this of the best score, the earlier-listed variant is chosen


def earliest_within_tie(scores: dict[str, float]) -> str | None:
    """The selection rule every study shares: the highest score wins, but a variant within SELECTION_TIE
    of it that is listed earlier is chosen instead (the simpler baselines come first in every preset)."""
    scores = {v: score for v, score in scores.items() if score is not None and math.isfinite(score)}
    if not scores:  # a nan score (a diverged run, a one-class split) can be neither best nor within a tie
        return None
    best = max(scores.values())
    return next(v for v, score in scores.items() if score >= best - SELECTION_TIE)


def source_validation_selection(runs: list[Run]) -> dict:
    """The variant chosen on each run's source-validation AUC (the training clinic's validation split,
    on which every run also selects its epoch), never on a held-out center: the highest mean over
    seeds, ties as in `earliest_within_tie`."""
    scores = {variant: mean_std([(r.report.get("source_val") or {}).get("auc") for r in runs if r.variant == variant])
              for variant in variants_of(runs)}
    chosen = earliest_within_tie({v: s["mean"] for v, s in scores.items() if s["n"]})
    return {"rule": f"highest mean source-validation AUC over seeds; within {SELECTION_TIE} of the best, the "
                    "earlier-listed variant", "scores": scores, "selected": chosen}

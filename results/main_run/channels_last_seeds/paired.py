"""Channels-last vs NCHW main runs, 3 seeds, paired over (seed, unseen center).

    python -m hybrid.train --backend aer --seed S --channels-last --quiet --out runs/seedS_channels-last
    python -m hybrid.train --backend aer --seed S --no-channels-last --quiet --out runs/seedS_no-channels-last
    python results/main_run/channels_last_seeds/paired.py      # from the repository root

Seed 0 is `make run` (channels-last, runs/default_cl) against the NCHW run runs/default.
"""
import json
import statistics

from scipy.stats import wilcoxon

PAIRS = {0: ("runs/default_cl", "runs/default"), 1: ("runs/seed1_channels-last", "runs/seed1_no-channels-last"),
         2: ("runs/seed2_channels-last", "runs/seed2_no-channels-last")}


def unseen(report: dict) -> dict:
    return {k: v["auc"] for k, v in report["domains"].items() if k != "clean"}


diffs = []
for seed, (a, b) in PAIRS.items():
    ra, rb = (json.load(open(f"{p}/report.json")) for p in (a, b))
    ua, ub = unseen(ra), unseen(rb)
    print(f"{seed} NHWC mean {statistics.mean(ua.values()):.3f} worst {min(ua.values()):.3f} ({min(ua, key=ua.get)}) "
          f"clean {ra['domains']['clean']['auc']:.3f} | NCHW mean {statistics.mean(ub.values()):.3f} worst "
          f"{min(ub.values()):.3f} ({min(ub, key=ub.get)}) clean {rb['domains']['clean']['auc']:.3f}")
    diffs += [ua[k] - ub[k] for k in ua]
print(f"paired over (seed, center): n={len(diffs)} mean diff {statistics.mean(diffs):+.4f}, "
      f"wilcoxon p={wilcoxon(diffs).pvalue:.3g}")

"""Today's defaults, 3 seeds, on the AMD EPYC (AVX-512) development CPU of 2026-12-03.

    python -m hybrid.train --backend aer --seed S --quiet --out runs/design4/base_sS   # S = 0 is `make run`
    python results/main_run/seeds_epyc/summary.py                                      # from the repository root

Seeds 0 and 1 are also the baseline of design round 4 (results/design_validation/round4/).
"""
import json
import statistics

REPORTS = {0: "results/main_run/seed0_epyc/report.json", 1: "results/main_run/seeds_epyc/seed1/report.json",
           2: "results/main_run/seeds_epyc/seed2/report.json"}
GOAL = 0.93

for seed, path in REPORTS.items():
    report = json.load(open(path))
    unseen = {k: report["domains"][k]["auc"] for k in report["unseen"]}
    worst = min(unseen, key=unseen.get)
    below = sorted(k for k, v in unseen.items() if v < GOAL)
    print(f"seed {seed}: clean {report['domains']['clean']['auc']:.3f}, unseen mean {statistics.mean(unseen.values()):.3f}, "
          f"worst {unseen[worst]:.3f} ({worst}); below {GOAL}: {', '.join(below) or 'none'}")

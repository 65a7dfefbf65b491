"""Seconds for 95 % intervals over 3,858 report pairs (MIMIC-CXR's test size): scoring once with per-study
statistics, then 1,000 resamples of every rule-based metric (BLEU-1..4, ROUGE-L, CIDEr-D, all CE keys), without
and with METEOR, and a paired comparison of two systems.

    python bench/intervals.py --reports iu_xray_reports_train_val.json   # or set R2G_IU_REPORTS
    python bench/intervals.py --pairs 30 --resamples 20 --no-meteor      # seconds: the smoke run

Pairs are real IU-Xray reports (cleaned) scored against other reports, repeated up to --pairs; system B has
every third report right. Target: the 1,000 resamples of the rule-based metrics in <= 60 s on 2 cores. Prints a
provenance header first (bench/provenance.py; the load average too, as the machine may be shared); --json also
writes the timings with it.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.metrics import report_pairs  # noqa: E402
from bench.provenance import start, write_json  # noqa: E402
from r2g.metrics.bootstrap import paired, resample_weights, resampled_values  # noqa: E402
from r2g.metrics.score import score_studies  # noqa: E402


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reports", default=os.environ.get("R2G_IU_REPORTS"), required="R2G_IU_REPORTS" not in os.environ,
                    help="IU-Xray reports JSON with train and val lists of {report: ...}; default: $R2G_IU_REPORTS")
    ap.add_argument("--pairs", type=int, default=3858, help="report pairs (default: %(default)s)")
    ap.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default: %(default)s)")
    ap.add_argument("--no-meteor", dest="meteor", action="store_false", help="only the rule-based run (no JVM)")
    ap.add_argument("--json", help="also write the timings, with the provenance header, to this file")
    args = ap.parse_args()
    if not Path(args.reports).is_file():
        ap.error(f"--reports {args.reports}: no such file")
    provenance = start()
    print("start:", load())
    refs, preds_a = report_pairs(args.reports, args.pairs)
    preds_b = {k: refs[k] if i % 3 == 0 else preds_a[k] for i, k in enumerate(refs)}
    n = len(refs)

    runs = []
    for meteor in [False, True] if args.meteor else [False]:
        tag = "with METEOR" if meteor else "rule-based (no METEOR)"
        t0 = time.perf_counter()
        a = score_studies(refs, preds_a, meteor=meteor)
        scored = time.perf_counter() - t0
        weights = resample_weights(n, args.resamples, seed=0)
        t0 = time.perf_counter()
        values = resampled_values(a.stats, weights)
        boot = time.perf_counter() - t0
        per_family, probe = {}, weights[:100]
        for metric in a.stats:
            t1 = time.perf_counter()
            resampled_values([metric], probe)
            per_family[metric.keys[0]] = (time.perf_counter() - t1) * args.resamples / len(probe)
        low, high = np.percentile(values["CIDEr"], [2.5, 97.5])
        print(f"{n} pairs, {tag}: scoring with per-study statistics {scored:.1f} s; {args.resamples} resamples of "
              f"{len(values)} keys {boot:.1f} s (CIDEr {a.metrics['CIDEr']:.3f} [{low:.3f}, {high:.3f}])")
        print(f"  per family, extrapolated from {len(probe)} resamples: "
              + ", ".join(f"{k} {v:.1f} s" for k, v in per_family.items()))
        print("  " + load())
        runs.append({"pairs": n, "meteor": meteor, "resamples": args.resamples, "scoring_s": scored,
                     "resampling_s": boot, "per_family_s": per_family, "keys": len(values)})

    t0 = time.perf_counter()
    b = score_studies(refs, preds_b, meteor=args.meteor)
    a = score_studies(refs, preds_a, meteor=args.meteor)
    scored = time.perf_counter() - t0
    t0 = time.perf_counter()
    diffs = paired(a.stats, b.stats, n, samples=args.resamples, seed=0)
    compared = time.perf_counter() - t0
    print(f"paired comparison of two systems{' with METEOR' if args.meteor else ''}: scoring both {scored:.1f} s, "
          f"{args.resamples} paired resamples of {len(diffs)} keys {compared:.1f} s")
    print("end:", load())
    if args.json:
        write_json(args.json, {"reports": args.reports, "runs": runs,
                               "paired": {"scoring_s": scored, "resampling_s": compared, "keys": len(diffs)}}, provenance)


if __name__ == "__main__":
    main()

"""Seconds for 95 % intervals over 3,858 report pairs (MIMIC-CXR's test size): scoring once with per-study
statistics, then 1,000 resamples of every rule-based metric (BLEU-1..4, ROUGE-L, CIDEr-D, all CE keys), without
and with METEOR, and a paired comparison of two systems.

    python bench/intervals.py [--reports PATH] [--pairs 3858] [--resamples 1000] [--no-meteor]

Pairs are real IU-Xray reports (cleaned) scored against other reports, repeated up to --pairs; system B has
every third report right. Target: the 1,000 resamples of the rule-based metrics in <= 60 s on 2 cores.
The first lines say when, where and at which commit it ran, and the machine's load (it may be shared).
"""

import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import time
from pathlib import Path

import numpy as np

from r2g.data.reports import clean_report
from r2g.metrics.bootstrap import paired, resample_weights, resampled_values
from r2g.metrics.score import score_studies

ROOT = Path(__file__).resolve().parents[1]


def provenance() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    dirty = " (uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    return (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {git('rev-parse', '--short', 'HEAD')}"
            f"{dirty}, {cpu}, {os.cpu_count()} cores, OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS', 'unset')}")


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reports", default=os.environ.get("R2G_IU_REPORTS", "/work/shared/data/iu_xray_reports_train_val.json"))
    ap.add_argument("--pairs", type=int, default=3858)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--no-meteor", dest="meteor", action="store_false")
    args = ap.parse_args()
    print(provenance())
    print("start:", load())
    d = json.loads(Path(args.reports).read_text())
    texts = [clean_report(e["report"], "iu_xray") for split in d.values() for e in split]
    texts = (texts * (args.pairs // len(texts) + 1))[:args.pairs]
    shuffled = texts[:]
    random.Random(0).shuffle(shuffled)
    refs = {str(i): t for i, t in enumerate(texts)}
    preds_a = {str(i): t for i, t in enumerate(shuffled)}
    preds_b = {k: refs[k] if i % 3 == 0 else preds_a[k] for i, k in enumerate(refs)}
    n = len(refs)

    runs = [False, True] if args.meteor else [False]
    for meteor in runs:
        tag = "with METEOR" if meteor else "rule-based (no METEOR)"
        t0 = time.perf_counter()
        a = score_studies(refs, preds_a, meteor=meteor)
        scored = time.perf_counter() - t0
        weights = resample_weights(n, args.resamples, seed=0)
        t0 = time.perf_counter()
        values = resampled_values(a.stats, weights)
        boot = time.perf_counter() - t0
        per_family = {}
        for metric in a.stats:
            t1 = time.perf_counter()
            resampled_values([metric], weights[:100])
            per_family[metric.keys[0]] = (time.perf_counter() - t1) * args.resamples / 100
        low, high = np.percentile(values["CIDEr"], [2.5, 97.5])
        print(f"{n} pairs, {tag}: scoring with per-study statistics {scored:.1f} s; {args.resamples} resamples of "
              f"{len(values)} keys {boot:.1f} s (CIDEr {a.metrics['CIDEr']:.3f} [{low:.3f}, {high:.3f}])")
        print("  per family, extrapolated from 100 resamples: "
              + ", ".join(f"{k} {v:.1f} s" for k, v in per_family.items()))
        print("  " + load())

    t0 = time.perf_counter()
    b = score_studies(refs, preds_b, meteor=args.meteor)
    a = score_studies(refs, preds_a, meteor=args.meteor)
    scored = time.perf_counter() - t0
    t0 = time.perf_counter()
    diffs = paired(a.stats, b.stats, n, samples=args.resamples, seed=0)
    print(f"paired comparison of two systems{' with METEOR' if args.meteor else ''}: scoring both {scored:.1f} s, "
          f"{args.resamples} paired resamples of {len(diffs)} keys {time.perf_counter() - t0:.1f} s")
    print("end:", load())


if __name__ == "__main__":
    main()

"""Seconds to score 3,858 report pairs (MIMIC-CXR's test size), with and without METEOR.

    python bench/metrics.py [--reports ../shared/data/iu_xray_reports_train_val.json]

Pairs are real IU-Xray reports (cleaned) scored against other reports, repeated up to 3,858.
"""

import argparse
import json
import random
import time
from pathlib import Path

from r2g.data.reports import clean_report
from r2g.metrics.score import score

N = 3858


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reports", default=str(Path(__file__).resolve().parents[2] / "shared/data/iu_xray_reports_train_val.json"))
    args = ap.parse_args()
    d = json.loads(Path(args.reports).read_text())
    texts = [clean_report(e["report"], "iu_xray") for s in ("train", "val") for e in d[s]]
    texts = (texts * (N // len(texts) + 1))[:N]
    shuffled = texts[:]
    random.Random(0).shuffle(shuffled)
    refs = {str(i): t for i, t in enumerate(texts)}
    preds = {str(i): t for i, t in enumerate(shuffled)}
    for meteor in (False, True):
        t0 = time.perf_counter()
        result = score(refs, preds, meteor=meteor)
        print(f"{N} pairs, METEOR {'on ' if meteor else 'off'}: {time.perf_counter() - t0:6.1f} s "
              f"(BLEU-4 {result['BLEU_4']:.3f}, CIDEr {result['CIDEr']:.3f}, CE micro F1 {result['ce_micro_f1']:.3f})")


if __name__ == "__main__":
    main()

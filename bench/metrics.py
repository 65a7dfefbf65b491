"""Seconds to score 3,858 report pairs (MIMIC-CXR's test size), with and without METEOR.

    python bench/metrics.py --reports iu_xray_reports_train_val.json   # or set R2G_IU_REPORTS
    python bench/metrics.py --pairs 20 --no-meteor                     # seconds: the smoke run

Pairs are real IU-Xray reports (cleaned) scored against other reports, repeated up to --pairs. Prints a provenance
header first (bench/provenance.py); --json also writes the timings with it. Nothing else is written.
"""

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.provenance import start, write_json  # noqa: E402
from r2g.data.reports import clean_report  # noqa: E402
from r2g.metrics.score import score  # noqa: E402

N = 3858


def report_pairs(reports: str, pairs: int) -> tuple[dict[str, str], dict[str, str]]:
    """({id: reference}, {id: prediction}): `pairs` cleaned IU-Xray reports from the `reports` JSON (train and
    val, repeated as needed), each predicted by another of them (a fixed shuffle)."""
    d = json.loads(Path(reports).read_text())
    texts = [clean_report(e["report"], "iu_xray") for s in ("train", "val") for e in d[s]]
    texts = (texts * (pairs // len(texts) + 1))[:pairs]
    shuffled = texts[:]
    random.Random(0).shuffle(shuffled)
    return {str(i): t for i, t in enumerate(texts)}, {str(i): t for i, t in enumerate(shuffled)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reports", default=os.environ.get("R2G_IU_REPORTS"), required="R2G_IU_REPORTS" not in os.environ,
                    help="IU-Xray reports JSON with train and val lists of {report: ...}; default: $R2G_IU_REPORTS")
    ap.add_argument("--pairs", type=int, default=N, help="report pairs scored (default: %(default)s)")
    ap.add_argument("--no-meteor", action="store_true", help="time only the scoring without METEOR (no JVM)")
    ap.add_argument("--json", help="also write the timings, with the provenance header, to this file")
    args = ap.parse_args()
    if not Path(args.reports).is_file():
        ap.error(f"--reports {args.reports}: no such file")
    provenance = start()
    refs, preds = report_pairs(args.reports, args.pairs)
    runs = []
    for meteor in (False,) if args.no_meteor else (False, True):
        t0 = time.perf_counter()
        result = score(refs, preds, meteor=meteor)
        runs.append({"pairs": len(refs), "meteor": meteor, "seconds": time.perf_counter() - t0,
                     "BLEU_4": result["BLEU_4"], "CIDEr": result["CIDEr"], "ce_micro_f1": result["ce_micro_f1"]})
        print(f"{len(refs)} pairs, METEOR {'on ' if meteor else 'off'}: {runs[-1]['seconds']:6.1f} s "
              f"(BLEU-4 {result['BLEU_4']:.3f}, CIDEr {result['CIDEr']:.3f}, CE micro F1 {result['ce_micro_f1']:.3f})")
    if args.json:
        write_json(args.json, {"reports": args.reports, "runs": runs}, provenance)


if __name__ == "__main__":
    main()

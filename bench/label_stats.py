"""Label frequencies of the built-in rules labeler on real IU-Xray reports, as CE metrics see them.

    python bench/label_stats.py [--reports ../shared/data/iu_xray_reports_train_val.json] [--raw]

Reports are R2Gen-cleaned (what `r2g eval` labels) unless --raw. Prints one markdown row per label:
positive / uncertain / negative / blank counts, and the share of reports labelled No Finding.
To compare two versions of the labeler, run it at each (bench/RESULTS.md has the figures of issue 9's change).
"""

import argparse
import json
from collections import Counter
from pathlib import Path

from r2g.data.reports import clean_report
from r2g.labels import CHEXPERT_LABELS, NEGATIVE, POSITIVE, UNCERTAIN
from r2g.metrics.chexpert import label_reports


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reports", default=str(Path(__file__).resolve().parents[2] / "shared/data/iu_xray_reports_train_val.json"))
    ap.add_argument("--raw", action="store_true", help="label the raw report text instead of the R2Gen-cleaned one")
    args = ap.parse_args()
    data = json.loads(Path(args.reports).read_text())
    texts = [e["report"] if args.raw else clean_report(e["report"], "iu_xray") for split in data.values() for e in split]
    counts = {label: Counter() for label in CHEXPERT_LABELS}
    for labels in label_reports(texts):
        for label, value in labels.items():
            counts[label][value] += 1
    print(f"{len(texts)} reports ({'raw' if args.raw else 'R2Gen-cleaned'} text)\n")
    print("| label | positive | uncertain | negative | blank |")
    print("|---|---|---|---|---|")
    for label in CHEXPERT_LABELS:
        c = counts[label]
        print(f"| {label} | {c[POSITIVE]} | {c[UNCERTAIN]} | {c[NEGATIVE]} | {c[None]} |")
    print(f"\nNo Finding positive: {counts['No Finding'][POSITIVE] / len(texts):.1%} of reports")


if __name__ == "__main__":
    main()

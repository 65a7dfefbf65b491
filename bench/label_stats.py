"""Label frequencies of the built-in rules labeler on real IU-Xray reports, as CE metrics see them.

    python bench/label_stats.py --reports iu_xray_reports_train_val.json [--raw]   # or set R2G_IU_REPORTS

Reports are R2Gen-cleaned (what `r2g eval` labels) unless --raw. Prints one markdown row per label:
positive / uncertain / negative / blank counts, and the share of reports labelled No Finding.
To compare two versions of the labeler, run it at each (bench/RESULTS.md has the figures of issue 9's change).
Prints a provenance header first (bench/provenance.py); --json also writes the counts with it. Nothing else is
written.
"""

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.provenance import start, write_json  # noqa: E402
from r2g.data.reports import clean_report  # noqa: E402
from r2g.labels import CHEXPERT_LABELS, NEGATIVE, POSITIVE, UNCERTAIN  # noqa: E402
from r2g.metrics.chexpert import label_reports  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reports", default=os.environ.get("R2G_IU_REPORTS"), required="R2G_IU_REPORTS" not in os.environ,
                    help="IU-Xray reports JSON of split lists of {report: ...}; default: $R2G_IU_REPORTS")
    ap.add_argument("--raw", action="store_true", help="label the raw report text instead of the R2Gen-cleaned one")
    ap.add_argument("--json", help="also write the counts, with the provenance header, to this file")
    args = ap.parse_args()
    if not Path(args.reports).is_file():
        ap.error(f"--reports {args.reports}: no such file")
    provenance = start()
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
    no_finding = counts["No Finding"][POSITIVE] / len(texts)
    print(f"\nNo Finding positive: {no_finding:.1%} of reports")
    if args.json:
        names = {POSITIVE: "positive", UNCERTAIN: "uncertain", NEGATIVE: "negative", None: "blank"}
        table = {label: {names[v]: counts[label][v] for v in names} for label in CHEXPERT_LABELS}
        write_json(args.json, {"reports": args.reports, "raw": args.raw, "studies": len(texts),
                               "no_finding_share": no_finding, "counts": table}, provenance)


if __name__ == "__main__":
    main()

"""Length-grouped batches (`data.group_by_length`): padded-token share and CPU step time, with and without.

    python bench/length_grouping.py --iu PATH            # IU-Xray train reports + 2,000 synthetic MIMIC-style ones
    python bench/length_grouping.py --iu PATH --epochs 1 --mimic 500

Reports: the real IU-Xray train split (--iu PATH, default $R2G_IU_REPORTS; R2Gen-cleaned as `r2g shard` stores
them) and the reports `r2g synth --style mimic` writes (same generator, images not rendered). Each epoch's
train order comes from the loader's own stages (`ShuffleBuffer`, then `GroupByLength` or not) for one rank
and one worker, shuffle buffer 1000 (the default), cut into micro-batches of 6 (the paper's).

Tokens: a 2,000-token BPE trained on the split's reports, as the demo's LM has (`r2g.demo.tiny_lm`).
Padding: every batch of the epoch is built by the training code (`prompt.build_batch`: reports cut to the
dataset's token budget, eos included) at Llama-2-7B's layout (49 visual tokens from Swin-B, one view slot).
Printed: the share of report slots that are padding (what grouping can remove) and the share of all the
tokens the frozen LLM processes that are padding.

Step time: a small model with that tokenizer (the demo LM's size, a 4-layer Llama-256 from `train_tiny_lm`,
untrained; the tests' micro Swin with 4 visual tokens; fp32, AdamW, one thread): forward + backward + step
over the epoch's first `--steps` batches in each order (grouped batches come in random order, so they are a
fair sample), in alternating blocks. Both wall time and this process's CPU time are printed: on a machine
shared with other jobs the CPU time is the steadier of the two.

Output: a provenance header first (bench/provenance.py), then the JSON and table; --json also writes the JSON with
the header. The untrained tiny LM lives in a system temp folder, deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.provenance import start, write_json  # noqa: E402
from r2g.config import DATASET_PRESETS, ModelConfig  # noqa: E402
from r2g.data.loader import GroupByLength, ShardList, ShuffleBuffer  # noqa: E402
from r2g.data.reports import clean_report  # noqa: E402

MICRO_BATCH, SHUFFLE_BUFFER, SWIN_B_VISUAL_TOKENS = 6, 1000, 49


def iu_reports(path: Path) -> list[str]:
    return [clean_report(e["report"], "iu_xray") for e in json.loads(path.read_text())["train"]]


def mimic_reports(n: int, seed: int = 0) -> list[str]:
    from r2g.demo.report_text import write_report
    from r2g.demo.sample import sample_study

    return [clean_report(write_report(sample_study(seed, i, "mimic_cxr"))[0], "mimic_cxr") for i in range(n)]


def train_order(reports: list[str], grouped: bool, epoch: int, seed: int = 42) -> list[list[str]]:
    """One epoch's micro-batches of reports, in the order the train loader gives them (one rank, one worker)."""
    samples = [{"__key__": str(i), "json": json.dumps({"report": r}).encode()} for i, r in enumerate(reports)]
    shard_list = ShardList([], shuffle=True, seed=seed)
    shard_list.set_epoch(epoch)
    stream = ShuffleBuffer(shard_list, SHUFFLE_BUFFER, seed, rank=0).run(iter(samples))
    if grouped:
        stream = GroupByLength(shard_list, MICRO_BATCH, SHUFFLE_BUFFER, seed, rank=0).run(stream)
    order = [json.loads(s["json"])["report"] for s in stream]
    return [order[i : i + MICRO_BATCH] for i in range(0, len(order), MICRO_BATCH)]


def padding(batches: list[list[str]], tokenizer, cfg: ModelConfig, n_visual: int) -> dict:
    """Padding of these batches as the training code builds them."""
    from r2g.model.prompt import IGNORE_INDEX, build_batch

    report_slots = report_tokens = all_slots = real = 0
    for reports in batches:
        text = build_batch(tokenizer, reports, n_visual, cfg)
        is_report = text["labels"] != IGNORE_INDEX
        width = int(is_report.sum(1).max())
        report_slots += width * len(reports)
        report_tokens += int(is_report.sum())
        all_slots += text["attention_mask"].numel()
        real += int(text["attention_mask"].sum())
    return {"report_padding": 1 - report_tokens / report_slots, "sequence_padding": 1 - real / all_slots,
            "tokens_per_batch": all_slots / len(batches)}


def step_times(llm: Path, reports: list[str], budget: int, steps: int, rounds: int) -> dict:
    """Milliseconds per tiny-model training step in grouped and plain order (median of `rounds` blocks each)."""
    from r2g.model.r2gen import build_model
    from r2g.train.loop import model_inputs
    from r2g.demo.toys import TINY_VISION_KWARGS

    cfg = ModelConfig(llm=str(llm), vision_arch="swin_tiny_patch4_window7_224", vision_kwargs=TINY_VISION_KWARGS,
                      mode="delta", max_report_tokens=budget)
    torch.manual_seed(0)
    model = build_model(cfg)
    encode = model.report_encoder(1)
    size = TINY_VISION_KWARGS["img_size"]
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)

    def prepared(grouped: bool) -> list[dict]:  # text built beforehand, as the loader's workers do
        return [model_inputs({"images": torch.randn(len(r), 1, 3, size, size), "view_mask": torch.ones(len(r), 1, dtype=torch.bool),
                              "text": encode(r, 1)}, torch.device("cpu"), torch.float32)
                for r in train_order(reports, grouped, epoch=0)[:steps]]

    batches = {"grouped": prepared(True), "plain": prepared(False)}
    wall: dict[str, list[float]] = {"grouped": [], "plain": []}
    cpu: dict[str, list[float]] = {"grouped": [], "plain": []}
    for _ in range(rounds):
        for name, inputs in batches.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for x in inputs:
                model(**x).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            wall[name].append((time.perf_counter() - t0) / len(inputs))
            cpu[name].append((time.process_time() - c0) / len(inputs))
    padded = {name: 1 - sum(int(x["attention_mask"].sum()) for x in inputs) / sum(x["attention_mask"].numel() for x in inputs)
              for name, inputs in batches.items()}
    return {name: {"wall_ms": statistics.median(wall[name]) * 1e3, "cpu_ms": statistics.median(cpu[name]) * 1e3,
                   "cpu_blocks_ms": [round(t * 1e3, 1) for t in cpu[name]], "sequence_padding": padded[name],
                   "steps": len(batches[name])} for name in batches}


def bench(name: str, reports: list[str], budget: int, epochs: int, steps: int, rounds: int) -> dict:
    from transformers import AutoTokenizer

    from r2g.demo.tiny_lm import train_tiny_lm, train_tokenizer

    cfg = ModelConfig(max_report_tokens=budget)
    words = sorted(len(r.split()) for r in reports)
    row = {"dataset": name, "studies": len(reports), "micro_batch": MICRO_BATCH, "report_budget": budget,
           "words_median": words[len(words) // 2], "words_p90": words[int(0.9 * len(words))]}
    with tempfile.TemporaryDirectory() as tmp:
        llm = Path(tmp) / "llm"
        if steps:
            train_tiny_lm(reports, llm, vocab_size=2000, hidden=256, layers=4, heads=4, steps=1)  # untrained: speed only
            tokenizer = AutoTokenizer.from_pretrained(llm)
        else:  # padding only: the same tokenizer, no model
            tokenizer = train_tokenizer(reports, vocab_size=2000)
        for grouped in (False, True):
            batches = [b for e in range(epochs) for b in train_order(reports, grouped, e)]
            row["grouped" if grouped else "plain"] = padding(batches, tokenizer, cfg, SWIN_B_VISUAL_TOKENS)
        if steps:
            row["tiny_step"] = step_times(llm, reports, budget, steps, rounds)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iu", type=Path, default=os.environ.get("R2G_IU_REPORTS"),
                        required="R2G_IU_REPORTS" not in os.environ,
                        help="IU-Xray annotation.json (reports only are read); default: $R2G_IU_REPORTS.")
    parser.add_argument("--mimic", type=int, default=2000, help="Synthetic MIMIC-style reports.")
    parser.add_argument("--epochs", type=int, default=1, help="Epochs of train order measured.")
    parser.add_argument("--steps", type=int, default=60, help="Tiny-model steps per timing block (0: padding only).")
    parser.add_argument("--rounds", type=int, default=3, help="Alternating timing blocks per order.")
    parser.add_argument("--json", help="Also write the rows, with the provenance header, to this file.")
    args = parser.parse_args()
    if not args.iu.is_file():
        parser.error(f"--iu {args.iu}: no such file")
    provenance = start()
    torch.set_num_threads(1)  # one thread: the step-time ratio, not the machine's core count, is the point
    rows = [
        bench("iu_xray", iu_reports(args.iu), DATASET_PRESETS["iu_xray"]["max_report_tokens"], args.epochs, args.steps,
              args.rounds),
        bench("mimic_cxr (synthetic)", mimic_reports(args.mimic), DATASET_PRESETS["mimic_cxr"]["max_report_tokens"],
              args.epochs, args.steps, args.rounds),
    ]
    print(json.dumps(rows, indent=1))
    if args.json:
        write_json(args.json, rows, provenance)
    print("\n| dataset | order | report slots padded | LLM tokens padded (Swin-B + Llama-2 layout) | tokens/batch "
          "| step ms, CPU (wall) | step tokens padded |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        for order in ("plain", "grouped"):
            p, s = r[order], r.get("tiny_step", {}).get(order)
            step = f"{s['cpu_ms']:.1f} ({s['wall_ms']:.1f}) | {s['sequence_padding']:.1%}" if s else "- | -"
            print(f"| {r['dataset']} | {order} | {p['report_padding']:.1%} | {p['sequence_padding']:.1%} | "
                  f"{p['tokens_per_batch']:.0f} | {step} |")


if __name__ == "__main__":
    main()

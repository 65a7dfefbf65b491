"""Report generation speed: reports/s and generated tokens/s, batched vs one study at a time.

    python bench/generate.py                                   # tiny random model, CPU, random images
    python bench/generate.py --ckpt demo/runs/with-images --shards demo/shards   # after `make demo`

Both ways go through the model's own generation path (`R2GenGPT.generate`: beam search with the
GenerateConfig settings, beam 3, repetition and length penalty 2.0, KV cache) on the same studies, after one
untimed warm-up batch. Tokens/s counts the tokens of the returned reports (eos included, padding not); beam
search computes `num_beams` times as many.

The tiny model is random, so its reports have no natural end: min_new_tokens = max_new_tokens
(`--new-tokens`) makes every report the same length, and batched and single do the same amount of work.
With `--ckpt` the run's own generation settings apply (a report ends at eos or max_new_tokens) on real
test images from `--shards`, or random images without it.

It also checks that batching does not change the output: the same studies generated batched and one at a
time, with beam search (the timed runs) and greedily, should give the same reports. Generation prompts all
have the same length, so there is no text padding, and the encoder skips padded view slots; only
floating-point differences of batched kernels could break a near-tie.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.provenance import start, write_json  # noqa: E402
from r2g.config import GenerateConfig  # noqa: E402
from r2g.eval.reconstitute import inference_placement, load_run, open_run  # noqa: E402


def tiny_model(device: torch.device, dtype: torch.dtype, s=None):
    """(random delta R2GenGPT of bench/shapes.py's Shapes `s` (default: `tiny`) in eval mode, its image size)."""
    from bench.shapes import build_shaped_model, shapes, stand_in_tokenizer

    s = s or shapes("tiny")
    model = build_shaped_model(s, "delta", stand_in_tokenizer(), device, dtype)
    return model.eval(), s.image_size


def random_run(reports: int, new_tokens: int, s=None) -> tuple:
    """(model, Precision, GenerateConfig, studies) with no run folder: `tiny_model` placed and in the precision
    `r2g eval` would use, `new_tokens` per report (min = max: a random model's reports have no natural end),
    `reports` one-view studies of random pixels."""
    device, precision = inference_placement()  # as r2g eval and r2g generate
    model, image_size = tiny_model(device, precision.llm_dtype, s)
    if precision.ds_bf16:  # as load_for_inference: Swin and the trainables in bf16 too
        model.to_bf16()
    gen = GenerateConfig(min_new_tokens=new_tokens, max_new_tokens=new_tokens)
    return model.to(device), precision, gen, random_studies(reports, image_size)


def random_studies(n: int, image_size: int, seed: int = 0) -> list[list[torch.Tensor]]:
    """n one-view studies of random pixels: each a list of (3, H, W) views."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(3, image_size, image_size, generator=g)] for _ in range(n)]


def shard_studies(shards: str, split: str, n: int, data_cfg) -> list[list[torch.Tensor]]:
    """The first n studies of a split, with their real views, as the eval loader reads them."""
    from r2g.data.loader import make_loader, split_shards

    loader, _ = make_loader(split_shards(shards, split), dataclasses.replace(data_cfg, workers=0), batch_size=1,
                            train=False)
    studies = []
    for batch in loader:
        studies.append(list(batch["images"][0][batch["view_mask"][0]]))
        if len(studies) == n:
            break
    return studies


def record_lengths(model) -> list[int]:
    """A list that fills with the token count of every report `model` generates from now on.

    R2GenGPT.generate returns decoded text, and re-tokenizing text does not give back the generated ids, so
    this wraps the instance's `_beam_search` (the call that returns the new ids) and counts there: up to and
    including the first eos, else the whole row."""
    lengths: list[int] = []
    search, eos = model._beam_search, model.tokenizer.eos_token_id

    def counting(*args, **kwargs):
        new = search(*args, **kwargs)
        for row in new.tolist():
            lengths.append(row.index(eos) + 1 if eos in row else len(row))
        return new

    model._beam_search = counting
    return lengths


def generate_all(model, studies: list[list[torch.Tensor]], gen: GenerateConfig, batch_size: int) -> list[str]:
    """Reports for `studies`, `batch_size` studies per generate call, batched as `r2g generate` batches them."""
    from r2g.data.loader import Collate

    device, dtype = model.llm.device, model.llm.dtype  # images go in the LLM's dtype, as `r2g eval` passes them
    collate = Collate(max(len(views) for views in studies))
    reports = []
    for start in range(0, len(studies), batch_size):
        batch = collate([{"id": str(i), "views": views, "report": "", "labels": None}
                         for i, views in enumerate(studies[start : start + batch_size])])
        reports += model.generate(batch["images"].to(device, dtype), batch["view_mask"], gen)  # mask on the CPU, as r2g eval
    return reports


def timed(model, lengths: list[int], studies, gen: GenerateConfig, batch_size: int) -> dict:
    """Time `generate_all` after an untimed warm-up call on the first batch."""
    generate_all(model, studies[:batch_size], gen, batch_size)
    lengths.clear()
    t0 = time.perf_counter()
    reports = generate_all(model, studies, gen, batch_size)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {
        "batch_size": batch_size, "reports": len(reports), "seconds": seconds, "tokens": sum(lengths),
        "reports_per_s": len(reports) / seconds, "tokens_per_s": sum(lengths) / seconds, "texts": reports,
    }


def compare(batched: list[str], single: list[str], num_beams: int) -> dict:
    """Which studies got a different report batched than one at a time."""
    differ = [i for i, (a, b) in enumerate(zip(batched, single, strict=True)) if a != b]
    return {"num_beams": num_beams, "equal": len(batched) - len(differ), "of": len(batched), "differ_at": differ,
            "examples": [{"study": i, "batched": batched[i], "single": single[i]} for i in differ[:2]]}


def load(args) -> tuple:
    """(model on the device, its Precision, GenerateConfig, studies, description of model and images)."""
    if not args.ckpt:
        return *random_run(args.reports, args.new_tokens), {"model": "tiny random model (bench/shapes.py)",
                                                            "images": "random pixels, one view"}
    run = load_run(open_run(args.ckpt))
    model, precision, cfg = run.model, run.precision, run.cfg
    if args.shards:
        studies, images = shard_studies(args.shards, args.split, args.reports, cfg.data), f"{args.split} split of {args.shards}"
    else:
        studies, images = random_studies(args.reports, cfg.data.image_size), "random pixels, one view"
    return model, precision, cfg.generate, studies, {"model": f"run {args.ckpt}", "images": images}


def bench(args) -> dict:
    model, precision, gen, studies, about = load(args)
    lengths = record_lengths(model)
    with precision.autocast(next(model.parameters()).device):  # as r2g eval decodes
        batched = timed(model, lengths, studies, gen, args.batch_size)
        single = timed(model, lengths, studies, gen, 1)
        greedy = dataclasses.replace(gen, num_beams=1, length_penalty=1.0)  # greedy has no use for a length penalty (HF warns)
        checks = [compare(batched.pop("texts"), single.pop("texts"), gen.num_beams),
                  compare(generate_all(model, studies, greedy, args.batch_size), generate_all(model, studies, greedy, 1), 1)]
    return {
        **about, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "generate": {k: v for k, v in dataclasses.asdict(gen).items() if k != "batch_size"},
        "batched": batched, "single": single, "speedup": batched["reports_per_s"] / single["reports_per_s"],
        "batched_equals_single": checks,
    }


def print_result(r: dict) -> None:
    g = r["generate"]
    print(f"{r['model']} on {r['device']}; images: {r['images']}; beam {g['num_beams']}, repetition penalty "
          f"{g['repetition_penalty']}, length penalty {g['length_penalty']}, {g['min_new_tokens']}-{g['max_new_tokens']} new tokens")
    for name in ("batched", "single"):
        x = r[name]
        print(f"  {name:7s} batch {x['batch_size']:3d}: {x['reports']} reports in {x['seconds']:.2f} s = "
              f"{x['reports_per_s']:.2f} reports/s, {x['tokens_per_s']:.0f} tokens/s ({x['tokens']} tokens)")
    print(f"  speed-up from batching: {r['speedup']:.2f}x")
    for c in r["batched_equals_single"]:
        search = "greedy" if c["num_beams"] == 1 else f"beam {c['num_beams']}"
        print(f"  batched == one at a time, {search}: "
              f"{c['equal']}/{c['of']} reports equal" + (f" (differ at {c['differ_at']})" if c["differ_at"] else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reports", type=int, default=16, help="studies to generate reports for")
    ap.add_argument("--batch-size", type=int, default=8, help="studies per generate call in the batched run")
    ap.add_argument("--new-tokens", type=int, default=40, help="tiny model: min = max new tokens per report")
    ap.add_argument("--ckpt", help="a run folder (r2g_config.json + trainable.safetensors) instead of the tiny model")
    ap.add_argument("--shards", help="with --ckpt: real images from this shard folder (default: random pixels)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--json", help="also write the JSON result, with the provenance header, to this file")
    args = ap.parse_args()
    provenance = start()
    result = bench(args)
    print(json.dumps(result, indent=2))
    print_result(result)
    if args.json:
        write_json(args.json, result, provenance)


if __name__ == "__main__":
    main()

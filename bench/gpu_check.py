"""The first GPU check, in one command (issue 10 point 6): under 8 minutes on one H100 / H200.

    python bench/gpu_check.py                          # Llama-2-7B shapes, bf16, writes runs/gpu_check/{json,md}
    python bench/gpu_check.py --llm-shapes tiny        # the same code path on a CPU in minutes (the test runs it)

What it measures, at Swin-B 224 px + Llama-2-7B shapes with random weights (bench/shapes.py), every report
filling the 100-token budget (MIMIC-CXR's worst case), micro-batch 6:
1. the training step of each mode (shallow, delta, deep) under ZeRO-2, without and with --grad-ckpt:
   step time, tokens/s, MFU, peak memory (bench/train_step.py's `mode_bench`);
2. each step's peak memory against `r2g plan`'s estimate for the same shapes, sequence and micro-batch:
   torch's peak allocated against the plan's tensors (its total less the workspace row), and peak reserved
   against the plan's tensors plus its allocator-slack assumption, so the GPU constants get calibrated;
3. beam-3 generation, reports/s and tokens/s, batched (bench/generate.py's `timed`);
4. a ZeRO-3 training step (shallow), with its peak memory against the plan;
5. every path that only CUDA reaches, through r2g's own commands on a tiny synthetic run (bench/cuda_paths.py:
   train-zero3, resume, eval-zero3, generate), pass/fail and seconds each; a failure's output is kept in
   gpu_check.json. The paths, found by reading for host-only calls on device tensors and for collectives:
   - partitioned loading: model/zero3_load.read_elements fills a rank's partition on its GPU from a bf16
     safetensors file in a bf16 run (same dtype: the old code called .numpy() on the partition), through a host
     buffer and copy_ (train-zero3; eval-zero3 again for inference)
   - export: train/checkpoint.gather_trainable copies DeepSpeed's fp32 masters off the GPU, export_trainable
     writes them with their record (train-zero3); exported_best on resume (resume)
   - reconstitution: eval/reconstitute.load_for_inference places the whole model on the GPU in the run's
     precision (generate); load_partitioned_for_inference builds a ZeRO-3 engine there (eval-zero3)
   - meter: train/meter.ThroughputMeter on pinned CUDA batches and the GPU's peak FLOP/s by device name for
     MFU (train-zero3)
   - decode: eval/decode.decode moves batches to the GPU, all_max and gather_objects over NCCL, synced beams
     under ZeRO-3 with 2+ ranks (train-zero3's validation, eval-zero3)
   - agreement: the step loss all-reduced on the GPU, r2g.dist.raise_together's all_max / all_gather_object
     over NCCL at every step, after rank 0's scoring and export, around checkpoint commits (train-zero3, resume;
     over NCCL only with 2+ GPUs: with one GPU the commands run on one rank)
   - RNG: train/checkpoint.rng_state / set_rng_state save and restore every GPU's generator per rank (resume)
   - resume state: train/world_state gathers masters and Adam moments off the GPU partitions and scatters them
     back, with fused Adam's step count on the weights' device and the bf16 working weights set from the
     masters (train-zero3 saves, resume loads)
Writes gpu_check.json and gpu_check.md into --out and prints the markdown.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.provenance import header, start, work_dir, write_json  # noqa: E402

GIB = 2**30


def plan_for(s, tokenizer, row: dict, ds_name: str):
    """`r2g plan`'s estimate for a bench row: the bench's shapes, mode, micro-batch, sequence and ZeRO config."""
    from r2g.config import ModelConfig
    from r2g.plan import LLMShape, Setup, estimate, read_ds, vision_shape

    config = {"model_type": "llama", "vocab_size": len(tokenizer), **s.llm}
    llm = LLMShape.from_config(config, "bench shapes")
    vision = vision_shape(ModelConfig(vision_arch=s.vision_arch, vision_kwargs=s.vision_kwargs, mode=row["mode"]))
    cuda = torch.cuda.is_available()
    setup = Setup(mode=row["mode"], ds=read_ds(f"ds_configs/{ds_name}"), micro_batch=row["micro_batch"],
                  grad_ckpt=row["grad_ckpt"], seq_len=row["seq_len"], views=1, device="cuda" if cuda else "cpu",
                  peak_tflops=None, mem_gib=1e6)
    return estimate(llm, vision, setup, suggest=False)


def compare(row: dict, plan) -> dict:
    """The bench row with the plan's figures beside its measured peaks (None on a CPU: no CUDA peaks)."""
    tensors = plan.total - plan.memory["workspace"]
    slack = plan.assumptions.get("allocator_slack", 0.0)
    activations = plan.memory["LLM activations"] + plan.memory["vision activations"]
    out = {**row, "plan_tensors_gib": tensors / GIB, "plan_total_gib": plan.total / GIB,
           "plan_activations_gib": activations / GIB}
    if row.get("max_mem_gib"):
        out["allocated_vs_plan"] = row["max_mem_gib"] / (tensors / GIB) - 1
        out["reserved_vs_plan"] = row["max_reserved_gib"] / (tensors * (1 + slack) / GIB) - 1
    return out


def generation(s, reports: int, batch_size: int, new_tokens: int) -> dict:
    """Beam-3 reports/s of the delta model at shapes `s`, `new_tokens` per report, decoded as
    bench/generate.py decodes its random model (and `r2g eval` a run)."""
    from bench.generate import random_run, record_lengths, timed

    model, precision, gen, studies = random_run(reports, new_tokens, s)
    lengths = record_lengths(model)
    with precision.autocast(next(model.parameters()).device):
        result = timed(model, lengths, studies, gen, batch_size)
    result.pop("texts")
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {**result, "num_beams": gen.num_beams, "new_tokens": new_tokens}


def markdown(r: dict, provenance: dict) -> str:
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    lines = [f"## GPU check: {r['device']}, {r['llm_shapes']} shapes, {r['dtype']}", "", header(provenance), "",
             f"{r['seconds']:.0f} s in all; peak {fmt(r['peak_tflops'], 'g')} TFLOP/s; micro-batch {r['micro_batch']}, "
             f"sequence {r['steps'][0]['seq_len']} tokens; median of {r['timed_steps']} steps.", "",
             "| ZeRO | mode | grad-ckpt | step ms | tokens/s | MFU | peak alloc GiB | plan tensors GiB | alloc vs plan "
             "| peak reserved GiB | reserved vs plan |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["steps"]:
        lines.append(
            f"| {x['zero_stage']} | {x['mode']} | {'yes' if x['grad_ckpt'] else 'no'} | {x['step_ms']:.1f} | "
            f"{x['tokens_per_s']:,.0f} | {fmt(x['mfu'], '.1%')} | {fmt(x['max_mem_gib'], '.2f')} | "
            f"{x['plan_tensors_gib']:.2f} | {fmt(x.get('allocated_vs_plan'), '+.0%')} | "
            f"{fmt(x['max_reserved_gib'], '.2f')} | {fmt(x.get('reserved_vs_plan'), '+.0%')} |")
    g = r["generation"]
    lines += ["", f"Generation, beam {g['num_beams']}, batch {g['batch_size']}, {g['new_tokens']} new tokens each: "
              f"{g['reports_per_s']:.2f} reports/s, {g['tokens_per_s']:,.0f} tokens/s ({g['reports']} reports, "
              f"{g['seconds']:.1f} s)."]
    lines += ["", "| CUDA-only path (bench/cuda_paths.py) | device | ranks | result | s |", "|---|---|---|---|---|"]
    lines += [f"| {p['path']} | {p['device']} | {p['ranks']} | {'ok' if p['ok'] else 'FAILED'} | {p['seconds']:.0f} |"
              for p in r["paths"]]
    return "\n".join(lines) + "\n"


def run(args) -> dict:
    from bench.cuda_paths import run_paths
    from bench.shapes import shapes, stand_in_tokenizer
    from bench.train_step import modes_bench

    t0 = time.perf_counter()
    s, tokenizer = shapes(args.llm_shapes), stand_in_tokenizer()
    steps = []
    for ds_name, modes, ckpts in (("zero2.json", ("shallow", "delta", "deep"), (False, True)),
                                  ("zero3.json", ("shallow",), (False,))):
        for ckpt in ckpts:
            result = modes_bench(args.llm_shapes, args.micro_batch, args.steps, args.warmup, ckpt, ds_name, modes)
            for row in result["modes"]:
                row |= {"zero_stage": result["zero_stage"], "mfu": row.pop("mfu")}
                steps.append(compare(row, plan_for(s, tokenizer, row, ds_name)))
                print(f"{ds_name} {row['mode']} grad_ckpt={ckpt}: {row['step_ms']:.1f} ms", flush=True)
    gen = generation(s, args.reports, args.gen_batch, args.new_tokens)
    paths = run_paths(Path(args.out) / "cuda_paths")
    return {"llm_shapes": args.llm_shapes, "vision_arch": s.vision_arch, "device": result["device"],
            "dtype": result["dtype"], "peak_tflops": result["peak_tflops"],
            "micro_batch": args.micro_batch, "timed_steps": args.steps,
            "steps": steps, "generation": gen, "paths": paths, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm-shapes", choices=("llama2-7b", "tiny"), default="llama2-7b")
    ap.add_argument("--micro-batch", type=int, default=6)
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per row")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reports", type=int, default=16, help="reports generated (timed)")
    ap.add_argument("--gen-batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=100)
    ap.add_argument("--out", default=str(work_dir("gpu_check")),
                    help="folder for gpu_check.json and .md (default: %(default)s)")
    args = ap.parse_args()
    provenance = start()
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "gpu_check.json", result, provenance)
    (out / "gpu_check.md").write_text(markdown(result, provenance))
    print(markdown(result, provenance))


if __name__ == "__main__":
    main()

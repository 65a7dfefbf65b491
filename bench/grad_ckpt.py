"""Activation memory of one training step with and without `--grad-ckpt` (model.grad_ckpt), on the CPU.

    python bench/grad_ckpt.py                 # Swin-B 224 px + a 16-layer Llama-2-shaped LM (~270M), micro-batch 6
    python bench/grad_ckpt.py --layers 2 --hidden 64 --swin tiny   # seconds: the CI smoke run

Each measurement runs in a fresh process: build the model (fp32, random weights, through `build_model` as
training does), build one micro-batch (one 224 px view per study, every report cut to the 100-token budget:
MIMIC-CXR's worst case), then one forward + backward. Two figures per run:

- stored: bytes autograd keeps for the backward pass (saved-tensor hooks; parameters and their views left out)
  — exact, and what checkpointing is meant to cut;
- peak: the process's peak resident memory during forward + backward minus its resident memory just before
  (Linux VmHWM, reset through /proc/self/clear_refs), with glibc's mmap threshold fixed at 64 KiB so freed tensor
  memory goes back to the OS at once and the resident size follows the live tensors. It adds what `stored` does
  not see: the gradients of the trainable weights, the logits' and the loss's temporaries, and the recomputed
  layer during the backward pass.

Shallow mode at two LLM depths separates the LLM's per-layer activations from the fixed part (embeddings,
logits, loss); deep minus shallow is Swin's. Prints a JSON object and a markdown table.

    python bench/grad_ckpt.py --timing --layers 8   # compute cost: fwd + bwd with and without, alternated

Timing runs one model per mode and switches checkpointing on and off between steps (the same weights and
batch), alternating so that a machine shared with other jobs slows both alike; medians of `--reps` steps each.

Output: a provenance header first (bench/provenance.py), then the JSON and table; --json also writes the JSON with
the header. Nothing else is written.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.provenance import start, write_json  # noqa: E402

MiB = 2**20


def build(args):
    """(model, forward kwargs) for `args`: fp32, random weights, one micro-batch."""
    import torch

    from bench.shapes import LONG_REPORT, random_llm, stand_in_tokenizer
    from r2g.config import ModelConfig
    from r2g.model.prompt import build_batch
    from r2g.model.r2gen import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = stand_in_tokenizer()
    llm = random_llm({"hidden_size": args.hidden, "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
                      "num_key_value_heads": args.heads, "intermediate_size": args.intermediate, "vocab_size": 32000,
                      "max_position_embeddings": 4096}, tokenizer, torch.device("cpu"), torch.float32)
    tiny_swin = {"embed_dim": 32, "depths": (1, 1, 1, 1), "num_heads": (1, 2, 4, 8)}
    swin = {"tiny": ("swin_tiny_patch4_window7_224", tiny_swin),
            "base": ("swin_base_patch4_window7_224", {})}[args.swin]
    cfg = ModelConfig(vision_arch=swin[0], vision_kwargs=swin[1], mode=args.mode, grad_ckpt=args.ckpt,
                      max_report_tokens=100)
    model = build_model(cfg, llm=llm, tokenizer=tokenizer).train()
    batch = build_batch(tokenizer, [LONG_REPORT] * args.micro_batch, model.num_visual_tokens(1), cfg)
    inputs = {"images": torch.randn(args.micro_batch, 1, 3, 224, 224),
              "view_mask": torch.ones(args.micro_batch, 1, dtype=torch.bool), **batch}
    return model, inputs


def measure(args) -> dict:
    """One forward + backward in this process (see the module docstring)."""
    import gc

    from bench.memory import proc_status, reset_peak, saved_tensor_bytes

    model, inputs = build(args)
    gc.collect()
    before, _ = proc_status("VmRSS", "VmHWM")
    reset_peak()
    start = time.perf_counter()
    with saved_tensor_bytes(model.parameters()) as stored:
        loss = model(**inputs).loss
    loss.backward()
    seconds = time.perf_counter() - start
    _, peak = proc_status("VmRSS", "VmHWM")
    return {
        "mode": args.mode, "grad_ckpt": args.ckpt, "layers": args.layers, "micro_batch": args.micro_batch,
        "seq_len": inputs["input_ids"].shape[1], "stored_mib": stored() / MiB,
        "peak_mib": (peak - before) / MiB, "resident_before_mib": before / MiB, "seconds": seconds,
        "llm_params_m": sum(p.numel() for p in model.llm.parameters()) / 1e6,
        "vision_params_m": sum(p.numel() for p in model.vision.parameters()) / 1e6,
    }


def set_ckpt(model, on: bool) -> None:
    """Switch the checkpointing that `build_model(grad_ckpt=True)` set up on or off, weights untouched."""
    for module in model.llm.modules():
        if hasattr(module, "_gradient_checkpointing_func"):  # Hugging Face's per-layer switch
            module.gradient_checkpointing = on
    if model.cfg.mode != "shallow":
        model.vision.set_grad_checkpointing(on)


def time_steps(args) -> dict:
    """Median fwd + bwd seconds with checkpointing off and on, alternated over `args.reps` rounds."""
    import statistics

    import torch

    args.ckpt = True
    model, inputs = build(args)
    seconds = {False: [], True: []}
    for round_ in range(args.reps + 1):  # round 0 warms up
        for on in (False, True):
            set_ckpt(model, on)
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            model(**inputs).loss.backward()
            if round_:
                seconds[on].append(time.perf_counter() - start)
    off, on = statistics.median(seconds[False]), statistics.median(seconds[True])
    return {"mode": args.mode, "layers": args.layers, "off_s": off, "on_s": on, "ratio": on / off, "all": seconds}


def run_child(args, mode: str, ckpt: bool, layers: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--mode", mode, "--reps", str(args.reps),
           *(["--timing"] if args.timing else []), "--layers", str(layers), *(["--ckpt"] if ckpt else []),
           "--hidden", str(args.hidden), "--heads", str(args.heads), "--intermediate", str(args.intermediate),
           "--micro-batch", str(args.micro_batch), "--swin", args.swin, "--threads", str(args.threads)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"measurement {mode} ckpt={ckpt} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--intermediate", type=int, default=2752)  # Llama-2's 11008 / 4096 ratio
    ap.add_argument("--micro-batch", type=int, default=6)
    ap.add_argument("--swin", choices=["base", "tiny"], default="base")
    ap.add_argument("--modes", default="shallow,delta,deep")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timing", action="store_true", help="time fwd + bwd with and without instead of memory")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", help="also write the JSON result, with the provenance header, to this file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="shallow", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(time_steps(args) if args.timing else measure(args)))
        return
    provenance = start()
    if args.timing:
        runs = [run_child(args, mode, True, args.layers) for mode in args.modes.split(",")]
        print(json.dumps(runs, indent=1))
        if args.json:
            write_json(args.json, runs, provenance)
        print("\n| mode | fwd+bwd off (s) | fwd+bwd on (s) | on / off |\n|---|---|---|---|")
        for r in runs:
            print(f"| {r['mode']} | {r['off_s']:.1f} | {r['on_s']:.1f} | {r['ratio']:.2f} |")
        return

    runs = [run_child(args, mode, ckpt, args.layers) for mode in args.modes.split(",") for ckpt in (False, True)]
    half = max(1, args.layers // 2)  # shallow at half the depth: per-layer and fixed parts of the LLM's share
    runs += [run_child(args, "shallow", ckpt, half) for ckpt in (False, True)]
    by = {(r["mode"], r["grad_ckpt"], r["layers"]): r for r in runs}
    per_layer = {}
    for ckpt in (False, True):
        full, part = by[("shallow", ckpt, args.layers)], by[("shallow", ckpt, half)]
        tokens = full["micro_batch"] * full["seq_len"]
        stored_layer = (full["stored_mib"] - part["stored_mib"]) / (args.layers - half) * MiB
        per_layer[ckpt] = {"stored_bytes_per_token_layer": stored_layer / tokens,
                           "per_hidden": stored_layer / tokens / args.hidden,
                           "fixed_stored_mib": full["stored_mib"] - stored_layer * args.layers / MiB}
    result = {"runs": runs, "llm_per_layer": {str(k): v for k, v in per_layer.items()}}
    print(json.dumps(result, indent=1))
    if args.json:
        write_json(args.json, result, provenance)
    print("\n| mode | grad-ckpt | stored for backward (MiB) | peak over resident (MiB) | fwd+bwd (s) |")
    print("|---|---|---|---|---|")
    for r in runs:
        if r["layers"] == args.layers:
            on = "on" if r["grad_ckpt"] else "off"
            print(f"| {r['mode']} | {on} | {r['stored_mib']:.0f} | {r['peak_mib']:.0f} | {r['seconds']:.1f} |")
    for ckpt, v in per_layer.items():
        print(f"LLM, grad-ckpt {'on' if ckpt else 'off'}: {v['stored_bytes_per_token_layer']:.0f} bytes stored per "
              f"token per layer ({v['per_hidden']:.1f} x hidden), fixed part {v['fixed_stored_mib']:.0f} MiB")


if __name__ == "__main__":
    main()

"""Training-step speed, two ways.

    python bench/train_step.py                          # overhead: r2g step vs bare loop (tiny, fp32, CPU)
    python bench/train_step.py --llm-shapes llama2-7b   # per mode: Swin-B + Llama-2-7B shapes, bf16, CUDA
    python bench/train_step.py --llm-shapes tiny        # the same per-mode code path, tiny, on CPU (CI smoke)

Overhead: both loops run the same model, batch and AdamW; the ratio is the overhead of the DeepSpeed engine,
and the host-to-device input handling that r2g adds on top of forward/backward/step. Tokenizing happens in
the loader's worker processes, overlapped with the step (as in `r2g train`), so it is built once here.

Per mode (`--llm-shapes`): for shallow, delta and deep, a random-init model of those shapes (bench/shapes.py:
the LLM created in bf16 on the GPU, frozen; Swin per mode as in training) wrapped in DeepSpeed ZeRO-2 exactly
as `r2g train` does (bf16 on CUDA, fp32 on CPU), timed over forward + engine.backward + engine.step with the
prompt and labels built once, as the loader's workers build them off the step. Every report fills the report budget
(100 tokens, eos included), so the sequence length is MIMIC-CXR's worst case. Prints micro-batch, sequence
length, median step time, samples/s, tokens/s, model TFLOP/s per GPU (r2g/model/flops.py), MFU against the
GPU's dense bf16 peak (none on CPU), peak GPU memory and trainable parameters: a JSON object, then a table.

Output: a provenance header first (bench/provenance.py), the JSON and table, and the same JSON with the header
in --json. Nothing else is kept: the overhead run's tiny LLM goes to a system temp folder, deleted at the end.
"""

from __future__ import annotations

import argparse
import gc
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
from r2g.config import ModelConfig, RunConfig, TrainConfig  # noqa: E402


def tiny_config(tmp: Path, mode: str) -> RunConfig:
    """Config of the tests' micro-Swin + a tiny Llama written to `tmp` (fp32 on CPU)."""
    from r2g.demo.toys import TINY_VISION_KWARGS, write_tiny_llm

    corpus = ["the heart is normal in size . the lungs are clear . no pleural effusion or pneumothorax ."] * 50
    write_tiny_llm(tmp / "llm", corpus)
    return RunConfig(model=ModelConfig(llm=str(tmp / "llm"), vision_arch="swin_tiny_patch4_window7_224",
                                       vision_kwargs=TINY_VISION_KWARGS, mode=mode, max_report_tokens=60),
                     train=TrainConfig(micro_batch=6, grad_clip=1.0, warmup_steps=0))


SHORT_REPORT = "the heart is normal in size . the lungs are clear . no effusion ."


def loader_batch(micro_batch: int, image_size: int, report: str) -> dict:
    """A batch as the loader yields it: one view per study, random pixels, the same report for every study."""
    return {
        "images": torch.randn(micro_batch, 1, 3, image_size, image_size),
        "view_mask": torch.ones(micro_batch, 1, dtype=torch.bool),
        "reports": [report] * micro_batch,
    }


def with_text(model, batch: dict) -> dict:
    """`batch` plus its text tensors, as the training loader's workers attach them (off the training step)."""
    n_views = batch["view_mask"].shape[1]
    return {**batch, "text": model.report_encoder(n_views)(batch["reports"], n_views)}


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_steps(step, n: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    synchronize()  # the warmup's queued GPU work must not land in the first timed step
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bare_step_fn(model, inputs, lr: float, clip: float):
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=lr, weight_decay=0.05)

    def step():
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def ds_engine(model, cfg, ds_path: str):
    """`model` in a one-process DeepSpeed engine, as `r2g train` makes it (bf16 on CUDA, fp32 on CPU)."""
    import deepspeed

    from r2g.dist import init_distributed
    from r2g.ds_config import resolve_ds_config

    init_distributed()
    ds = resolve_ds_config(ds_path, cfg, world=1, total_steps=10_000, bf16=torch.cuda.is_available())
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.trainable_parameters(), config=ds)
    return engine


def r2g_step_fn(model, cfg, inputs_fn, ds_path: str):
    return engine_step_fn(ds_engine(model, cfg, ds_path), inputs_fn)


def engine_step_fn(engine, inputs_fn):
    """One training step as the training loop takes it."""

    def step():
        inputs = inputs_fn()  # the per-step input handling of the training loop
        loss = engine(**inputs).loss
        engine.backward(loss)
        engine.step()

    return step


def cpu_bench(steps: int, rounds: int = 5) -> dict:
    """Bare and r2g steps timed in alternating blocks (`rounds` blocks of `steps` each), so that a
    neighbour's load on a shared machine slows both alike instead of whichever ran second."""
    from r2g.model.r2gen import build_model
    from r2g.train.loop import model_inputs

    device, dtype = torch.device("cpu"), torch.float32
    with tempfile.TemporaryDirectory() as tmp:
        cfg = tiny_config(Path(tmp), "delta")
        size = cfg.model.vision_kwargs["img_size"]
        torch.manual_seed(0)
        model = build_model(cfg.model)
        inputs = model_inputs(with_text(model, loader_batch(cfg.train.micro_batch, size, SHORT_REPORT)), device, dtype)
        bare_step = bare_step_fn(model, inputs, cfg.train.lr, cfg.train.grad_clip)
        torch.manual_seed(0)  # the same initial weights for the r2g loop
        model = build_model(cfg.model)
        batch = with_text(model, loader_batch(cfg.train.micro_batch, size, SHORT_REPORT))
        r2g_step = r2g_step_fn(model, cfg, lambda: model_inputs(batch, device, dtype),
                               str(ROOT / "ds_configs" / "zero2.json"))
        bare_blocks, r2g_blocks = [], []
        for _ in range(rounds):
            bare_blocks.append(time_steps(bare_step, steps))
            r2g_blocks.append(time_steps(r2g_step, steps))
    bare, r2g = statistics.median(bare_blocks), statistics.median(r2g_blocks)
    return {"device": "cpu", "bare_median_s": bare, "r2g_median_s": r2g, "ratio": r2g / bare, "target": 1.10,
            "block_ratios": [r / b for r, b in zip(r2g_blocks, bare_blocks)]}


def mode_bench(s, mode: str, tokenizer, micro_batch: int, steps: int, warmup: int, ds_path: str,
               grad_ckpt: bool = False) -> dict:
    """Speed, memory and trainable parameters of one alignment mode's training step at shapes `s`. Builds the
    model, times it, and frees it (DeepSpeed engine included) before returning, so modes do not add up."""
    from r2g.dist import auto_dtype, init_distributed
    from r2g.model.flops import FlopCounts, train_flops_per_sample
    from r2g.model.prompt import IGNORE_INDEX
    from r2g.train.loop import model_inputs

    from bench.shapes import LONG_REPORT, build_shaped_model

    _, _, device = init_distributed()
    cuda = device.type == "cuda"
    dtype = auto_dtype(device)  # what `r2g train --precision auto` picks
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    model = build_shaped_model(s, mode, tokenizer, device, dtype, grad_ckpt=grad_ckpt)
    trainable = sum(p.numel() for p in model.trainable_parameters())
    counts = FlopCounts.from_model(model)
    engine = ds_engine(model, RunConfig(model=model.cfg, train=TrainConfig(micro_batch=micro_batch)), ds_path)
    engine.train()
    batch = with_text(engine.module, loader_batch(micro_batch, s.image_size, LONG_REPORT))
    inputs = model_inputs(batch, device, dtype)
    n_visual, (B, T) = engine.module.num_visual_tokens(1), inputs["input_ids"].shape
    n_report = int((inputs["labels"][0] != IGNORE_INDEX).sum())
    if n_report != model.cfg.max_report_tokens:
        raise RuntimeError(f"the bench report fills {n_report} of {model.cfg.max_report_tokens} report tokens; lengthen it")
    step_s = time_steps(engine_step_fn(engine, lambda: model_inputs(batch, device, dtype)), steps, warmup)
    flops = B * train_flops_per_sample(counts, T, n_visual)
    row = {
        "mode": mode, "grad_ckpt": grad_ckpt, "trainable_params": trainable, "micro_batch": B, "seq_len": T,
        "prompt_tokens": T - n_visual - n_report, "visual_tokens": n_visual, "report_tokens": n_report,
        "step_ms": step_s * 1e3, "samples_per_s": B / step_s, "tokens_per_s": int(inputs["attention_mask"].sum()) / step_s,
        "tflops_per_gpu": flops / step_s / 1e12,
        "max_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "max_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30 if cuda else None,
    }
    engine.destroy()  # gives back DeepSpeed's hold on Python's GC, so the collection below frees the model
    del engine, model, inputs
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return row


def modes_bench(shapes_name: str, micro_batch: int, steps: int, warmup: int, grad_ckpt: bool = False,
                ds_name: str = "zero2.json", modes: tuple[str, ...] | None = None) -> dict:
    """`mode_bench` for each of `modes` (default: shallow, delta and deep) under ds_configs/`ds_name`, with the
    device's peak and MFU added."""
    from r2g.config import MODES
    from r2g.model.flops import mfu, peak_flops

    from bench.shapes import shapes, stand_in_tokenizer

    cuda = torch.cuda.is_available()
    if shapes_name != "tiny" and not cuda:
        raise SystemExit(f"--llm-shapes {shapes_name} needs a CUDA GPU; on a CPU use --llm-shapes tiny")
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = peak_flops(device_name) if cuda else None
    s, tokenizer = shapes(shapes_name), stand_in_tokenizer()
    ds_path = ROOT / "ds_configs" / ds_name
    stage = json.loads(ds_path.read_text())["zero_optimization"]["stage"]
    rows = [mode_bench(s, mode, tokenizer, micro_batch, steps, warmup, str(ds_path), grad_ckpt) for mode in modes or MODES]
    for row in rows:
        row["mfu"] = mfu(row["tflops_per_gpu"] * 1e12, peak)
    return {
        "llm_shapes": shapes_name, "vision_arch": s.vision_arch, "image_size": s.image_size, "device": device_name,
        "dtype": "bf16" if cuda else "fp32", "zero_stage": stage, "grad_ckpt": grad_ckpt, "steps": steps, "warmup": warmup,
        "peak_tflops": peak / 1e12 if peak else None,
        "sequence": "worst case: prompt + visual tokens + a report filling max_report_tokens (eos included); "
                    "the prompt is tokenized by a stand-in BPE, not Llama-2's tokenizer",
        "modes": rows,
    }


def print_modes_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    r0 = result["modes"][0]
    table = Table(title=f"train step per mode: {result['vision_arch']} + Llama {result['llm_shapes']} shapes, "
                        f"{result['dtype']}, ZeRO-{result['zero_stage']}, {result['device']}")
    columns = ("mode", "trainable", "micro-batch", "seq len", "step ms", "samples/s", "tokens/s", "TFLOP/s", "MFU", "max mem GiB")
    for col in columns:
        table.add_column(col, justify="left" if col == "mode" else "right")
    for r in result["modes"]:
        table.add_row(
            r["mode"], f"{r['trainable_params']:,}", str(r["micro_batch"]), str(r["seq_len"]), f"{r['step_ms']:.1f}",
            f"{r['samples_per_s']:.2f}", f"{r['tokens_per_s']:,.0f}", f"{r['tflops_per_gpu']:.3g}",
            f"{r['mfu']:.1%}" if r["mfu"] is not None else "-",
            f"{r['max_mem_gib']:.1f}" if r["max_mem_gib"] is not None else "-",
        )
    console = Console()
    if not console.is_terminal:  # piped or captured: rich would squeeze the table into 80 columns
        console = Console(width=140)
    console.print(table)
    console.print(f"seq len {r0['seq_len']} = prompt {r0['prompt_tokens']} + visual {r0['visual_tokens']} + report "
                  f"{r0['report_tokens']}: {result['sequence']}. Median of {result['steps']} steps after "
                  f"{result['warmup']} warmup.", highlight=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--llm-shapes", choices=("llama2-7b", "tiny"),
                    help="per-mode speed at these shapes (default: the overhead ratio on a tiny CPU model)")
    ap.add_argument("--micro-batch", type=int, default=6, help="per-mode bench: studies per step (the paper's 6)")
    ap.add_argument("--warmup", type=int, default=3, help="per-mode bench: untimed steps first")
    ap.add_argument("--grad-ckpt", action="store_true", help="per-mode bench: with activation checkpointing")
    ap.add_argument("--json", help="also write the JSON result, with the provenance header, to this file")
    args = ap.parse_args()
    provenance = start()
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    if args.llm_shapes:
        result = modes_bench(args.llm_shapes, args.micro_batch, args.steps, args.warmup, args.grad_ckpt)
        print(json.dumps(result, indent=2))
        print_modes_table(result)
    else:
        result = cpu_bench(args.steps)
        print(json.dumps(result, indent=2))
        print(f"r2g step {result['r2g_median_s'] * 1e3:.1f} ms vs bare {result['bare_median_s'] * 1e3:.1f} ms: "
              f"ratio {result['ratio']:.2f} (target <= {result['target']:.2f})")
    if args.json:
        write_json(args.json, result, provenance)
    from r2g.dist import close_distributed

    close_distributed()


if __name__ == "__main__":
    main()

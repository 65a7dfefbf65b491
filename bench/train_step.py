"""Median training-step time: the r2g DeepSpeed step vs a bare PyTorch loop doing the same math.

    python bench/train_step.py                # tiny model, fp32, ZeRO-2 (target ratio <= 1.10)

Not written yet: the GPU mode with Swin-B + Llama-2-7B shapes (tokens/s and MFU per mode); the session that
wrote this had no GPU to check it on. Training logs report MFU on CUDA already (r2g/model/flops.py).

Both loops run the same model, batch and AdamW; the ratio is the overhead of the DeepSpeed engine, the
prompt building and the loader-side work that r2g adds on top of forward/backward/step.
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


def tiny_setup(tmp: Path, mode: str, image_size: int, vision_kwargs: dict, llm_kwargs: dict | None = None):
    from tests.conftest import write_tiny_llm

    from r2g.config import ModelConfig, RunConfig, TrainConfig
    from r2g.model.r2gen import build_model

    corpus = ["the heart is normal in size . the lungs are clear . no pleural effusion or pneumothorax ."] * 50
    write_tiny_llm(tmp / "llm", corpus, **(llm_kwargs or {}))
    cfg = RunConfig(model=ModelConfig(llm=str(tmp / "llm"), vision_arch="swin_tiny_patch4_window7_224",
                                      vision_kwargs=vision_kwargs, mode=mode, max_report_tokens=60),
                    train=TrainConfig(micro_batch=6, grad_clip=1.0, warmup_steps=0))
    return cfg, build_model(cfg.model)


def make_batch(model, cfg, image_size: int, device, dtype):
    from r2g.train.loop import model_inputs

    batch = {
        "images": torch.randn(cfg.train.micro_batch, 1, 3, image_size, image_size),
        "view_mask": torch.ones(cfg.train.micro_batch, 1, dtype=torch.bool),
        "reports": ["the heart is normal in size . the lungs are clear . no effusion ."] * cfg.train.micro_batch,
    }
    return model_inputs(model, batch, device, dtype)


def time_steps(step, n: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
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


def r2g_step_fn(model, cfg, inputs_fn, ds_path: str):
    import deepspeed

    from r2g.dist import init_distributed
    from r2g.train.ds_config import resolve_ds_config

    init_distributed()
    ds = resolve_ds_config(ds_path, cfg, world=1, total_steps=10_000, bf16=torch.cuda.is_available())
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.trainable_parameters(), config=ds)

    def step():
        inputs = inputs_fn(engine.module)  # r2g builds the prompt/labels every step, so time it too
        loss = engine(**inputs).loss
        engine.backward(loss)
        engine.step()

    return step


def cpu_bench(steps: int) -> dict:
    torch.manual_seed(0)
    kwargs = {"img_size": 64, "window_size": 2, "embed_dim": 32, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8]}
    with tempfile.TemporaryDirectory() as tmp:
        cfg, model = tiny_setup(Path(tmp), "delta", 64, kwargs)
        device, dtype = torch.device("cpu"), torch.float32
        inputs = make_batch(model, cfg, 64, device, dtype)
        bare = time_steps(bare_step_fn(model, inputs, cfg.train.lr, cfg.train.grad_clip), steps)
        torch.manual_seed(0)
        cfg, model = tiny_setup(Path(tmp), "delta", 64, kwargs)
        r2g = time_steps(r2g_step_fn(model, cfg, lambda m: make_batch(m, cfg, 64, device, dtype),
                                     str(ROOT / "ds_configs" / "zero2.json")), steps)
    return {"device": "cpu", "bare_median_s": bare, "r2g_median_s": r2g, "ratio": r2g / bare, "target": 1.10}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    result = cpu_bench(args.steps)
    print(json.dumps(result, indent=2))
    print(f"r2g step {result['r2g_median_s'] * 1e3:.1f} ms vs bare {result['bare_median_s'] * 1e3:.1f} ms: "
          f"ratio {result['ratio']:.2f} (target <= {result['target']:.2f})")


if __name__ == "__main__":
    main()

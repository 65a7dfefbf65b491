"""Precision "bf16" through the engine set-up training uses (r2g.train.loop.build_engine), on CPU, under each
shipped DeepSpeed config: every trainable and Swin weight bf16 (ZeRO-3 included, where DeepSpeed itself casts
nothing), the LLM's rotary frequencies the fp32 values transformers computes, a step that trains, and an
optimizer that DeepSpeed builds without compiling an op."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from r2g.demo.toys import TINY_VISION_KWARGS, write_tiny_llm
from r2g.dist import free_port

pytestmark = pytest.mark.slow
CONFIGS = ("zero2.json", "zero3.json", "zero3_offload.json")
# Two blocks in the first stage: the second shifts its windows, so Swin holds an attn_mask buffer.
SHIFTED = {**TINY_VISION_KWARGS, "depths": [2, 1, 1, 1]}


def _no_compiling(builder, *args, **kwargs):
    raise AssertionError(f"DeepSpeed compiled the op {builder.name}")


def _worker(rank: int, world: int, port: int, llm: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    from deepspeed.ops.op_builder.builder import OpBuilder
    from transformers import AutoModelForCausalLM

    from r2g.config import ModelConfig, RunConfig, TrainConfig
    from r2g.dist import close_distributed, init_distributed
    from r2g.ds_config import fill_ds_config, load_ds_config, zero_stage
    from r2g.model.prompt import build_batch
    from r2g.precision import resolve_precision
    from r2g.train.loop import build_engine

    _, _, device = init_distributed()  # builds (or loads) the CPU comm op: the one op allowed
    OpBuilder.jit_load = _no_compiling
    fp32_rotary = {n: b for n, b in AutoModelForCausalLM.from_pretrained(llm).named_buffers() if "inv_freq" in n}
    cfg = RunConfig(
        model=ModelConfig(llm=llm, vision_arch="swin_tiny_patch4_window7_224", vision_kwargs=SHIFTED,
                          vision_weights="none", mode="delta", llm_lora=True),
        train=TrainConfig(micro_batch=2, lr=1e-3, warmup_steps=1),
    )
    for name in CONFIGS:
        ds = load_ds_config(name)
        precision = resolve_precision("bf16", device, zero_stage(ds))
        engine, _ = build_engine(cfg, fill_ds_config(ds, name, cfg, world, 4, precision.ds_bf16), precision)
        model = engine.module

        optimizer = engine.basic_optimizer
        assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["fused"], (name, optimizer)
        weights = {n: getattr(p, "ds_tensor", p) for n, p in model.named_parameters()
                   if p.requires_grad or n.startswith("vision.")}
        assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"vision", "mapper", "llm"}
        assert all(w.dtype == torch.bfloat16 for w in weights.values()), (name, {n: w.dtype for n, w in weights.items()})
        masks = [b for n, b in model.vision.named_buffers() if n.endswith("attn_mask") and b is not None]
        assert masks and all(m.dtype == torch.bfloat16 for m in masks), name

        views = torch.tensor([[True, True], [True, False]])
        text = build_batch(model.tokenizer, ["the heart is normal .", "no effusion ."], model.num_visual_tokens(2), cfg.model)
        for _ in range(2):
            loss = engine(images=torch.randn(2, 2, 3, 64, 64, dtype=precision.input_dtype), view_mask=views, **text).loss
            engine.backward(loss)
            engine.step()
            assert torch.isfinite(loss), name

        rotary = {n.removeprefix("llm.base_model.model."): b for n, b in model.named_buffers() if "inv_freq" in n}
        assert rotary.keys() == fp32_rotary.keys()
        assert all(b.dtype == torch.float32 and torch.equal(b, fp32_rotary[n]) for n, b in rotary.items()), name
        engine.destroy()
    close_distributed()


def test_bf16_engines_train_bf16_weights_around_fp32_rotary_buffers_with_a_torch_adamw(tmp_path: Path):
    llm = write_tiny_llm(tmp_path / "llm", ["the heart is normal .", "no effusion ."] * 10, hidden=32)
    mp.spawn(_worker, args=(1, free_port(), str(llm)), nprocs=1)

"""r2g plan: parameter counts of the built-in configs, hand-computed memory rows, the activation formulas
against what autograd really keeps, suggestions when a run does not fit, and the command's JSON."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from bench.memory import saved_tensor_bytes
from r2g.config import ModelConfig
from r2g.errors import R2GError
from r2g.plan import (
    GIB, VISION_SAVED_PER_TOKEN_CHANNEL, DSFacts, LLMShape, Setup, VisionShape, builtin_names, estimate,
    llm_head_bytes, llm_layer_bytes, load_llm_shape, memory_rows, read_ds, vision_shape,
)

# Parameter counts as the model cards and `num_parameters()` of the released checkpoints give them.
PUBLISHED = {
    "llama2-7b": 6_738_415_616, "llama2-13b": 13_015_864_320, "llama2-70b": 68_976_648_192,
    "llama3-8b": 8_030_261_248, "llama3-70b": 70_553_706_496, "mistral-7b": 7_241_732_096,
    "qwen2.5-7b": 7_615_616_512, "qwen2.5-72b": 72_706_203_648,
}
# A hand-sized Llama: hidden 8, MLP 16, 2 layers, 2 heads of 4, 1 kv head, 10 tokens.
TINY = LLMShape("tiny", hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1, head_dim=4, vocab=10, tied=False,
                qkv_bias=False)
# A hand-sized encoder: 16 channels out, 4 tokens per view, two qkv blocks of 16 channels on 4 tokens.
TINY_VISION = VisionShape("tiny", params=1000, features=16, tokens_per_view=4, block_dims=(16, 16), token_channels=128, largest_block=64,
                          forward_flops=10_000)


@pytest.fixture(scope="module")
def swin_b() -> VisionShape:
    return vision_shape(ModelConfig())


def test_builtin_configs_have_the_published_sizes():
    assert builtin_names() == sorted(PUBLISHED)
    for name, params in PUBLISHED.items():
        assert load_llm_shape(name).params == params, name
    l7 = load_llm_shape("llama2-7b")
    assert (l7.hidden, l7.intermediate, l7.layers, l7.heads, l7.kv_heads, l7.vocab) == (4096, 11008, 32, 32, 32, 32000)
    assert load_llm_shape("llama3-70b").kv_dim == 8 * 128 and load_llm_shape("qwen2.5-7b").qkv_bias


@pytest.mark.parametrize("name", ["llama2-7b", "qwen2.5-7b"])
def test_counts_equal_transformers_model_built_from_the_config(name):
    """The count is independent of our formula: Hugging Face builds the model (on the meta device)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from r2g.plan import CONFIGS

    config = AutoConfig.from_pretrained(CONFIGS / f"{name}.json")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shape = load_llm_shape(name)
    assert shape.params == sum(p.numel() for p in model.parameters())
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert shape.matmul_params == sum(m.weight.numel() for m in linears)


def test_hand_computed_tiny_config():
    # per layer: q, o 8x8; k, v 4x8; gate, up, down 8x16 = 128 + 64 + 384 = 576 weights + 2 norms of 8
    assert TINY.layer_params == 592
    assert TINY.params == 10 * 8 * 2 + 2 * 592 + 8  # embedding + lm_head, layers, final norm = 1352
    n = 16 * 8 + 8 + 2 * 8  # shallow trains the mapper: Linear 16 -> 8 with bias, LayerNorm(8) = 152
    zero2 = DSFacts(stage=2, contiguous_gradients=False)
    rows, host, _ = memory_rows(TINY, TINY_VISION, Setup(mode="shallow", ds=zero2, gpus=2), seq_len=5, micro_batch=0)
    assert rows["frozen LLM weights"] == 2 * 1352  # bf16, every rank holds all of it under ZeRO-2
    assert rows["trainable weights"] == 2 * n
    assert rows["gradients"] == 2 * n / 2 + 4 * n / 2  # bf16 partition + its fp32 copy for the step
    assert rows["fp32 masters + Adam"] == 12 * n / 2  # master, m, v: 4 bytes each, partitioned over 2
    assert rows["vision weights (frozen)"] == 2 * 1000 and host == 0
    assert rows["LLM activations"] == rows["vision activations"] == 0  # micro-batch 0
    zero3 = DSFacts(stage=3, contiguous_gradients=False, prefetch_bucket_size=100, max_reuse_distance=0)
    rows, *_ = memory_rows(TINY, TINY_VISION, Setup(mode="shallow", ds=zero3, gpus=4), seq_len=5, micro_batch=0)
    assert rows["frozen LLM weights"] == 2 * 1352 / 4 and rows["trainable weights"] == 2 * n / 4
    assert rows["ZeRO-3 gathered weights"] == 2 * (592 + 100)  # a layer (> the 80-weight lm_head) + prefetch
    reuse = DSFacts(stage=3, contiguous_gradients=False, prefetch_bucket_size=100, max_live_parameters=1000)
    rows, *_ = memory_rows(TINY, TINY_VISION, Setup(mode="shallow", ds=reuse, gpus=4), seq_len=5, micro_batch=0)
    assert rows["ZeRO-3 gathered weights"] == 2 * (1000 + 100)  # kept for reuse up to max_live_parameters
    rows, *_ = memory_rows(TINY, TINY_VISION, Setup(mode="shallow", ds=DSFacts(stage=3), gpus=4), seq_len=5, micro_batch=0)
    assert rows["ZeRO-3 gathered weights"] == 2 * 1352  # never more than the whole model
    offload = DSFacts(stage=3, offload_param=True, offload_optimizer=True, contiguous_gradients=False)
    rows, host, _ = memory_rows(TINY, TINY_VISION, Setup(mode="shallow", ds=offload, gpus=4), seq_len=5, micro_batch=0)
    assert rows["frozen LLM weights"] == rows["fp32 masters + Adam"] == 0
    assert host == 12 * n / 4 + 2 * 1352 / 4


def test_delta_and_deep_trainables_at_llama2_7b_shapes(swin_b):
    """The figures the README gives: 4.21M, 4.98M and 90.95M trainable parameters."""
    llm = load_llm_shape("llama2-7b")
    plans = {m: estimate(llm, swin_b, Setup(mode=m)) for m in ("shallow", "delta", "deep")}
    assert sum(plans["shallow"].trainable.values()) == 1024 * 4096 + 3 * 4096
    assert sum(plans["delta"].trainable.values()) == 4_976_640
    assert sum(plans["deep"].trainable.values()) == 90_949_816
    assert plans["delta"].sequence["visual"] == 49 and plans["delta"].sequence["report"] == 100


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_llm_layer_formula_equals_what_autograd_keeps(dtype):
    """A frozen Llama with grouped-query attention, padded rows, inputs_embeds that need a gradient: the
    per-layer bytes (4 layers minus 2 layers) equal the formula exactly; the rest is the head term's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    B, T, a = 2, 40, dtype.itemsize
    shape = LLMShape("t", hidden=64, intermediate=176, layers=0, heads=4, kv_heads=2, head_dim=16, vocab=300,
                     tied=False, qkv_bias=False)

    def saved(layers: int) -> int:
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=176, num_hidden_layers=layers,
                             num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
        model = LlamaForCausalLM(config).to(dtype).requires_grad_(False)
        embeds = torch.randn(B, T, 64, dtype=dtype, requires_grad=True)
        mask = torch.ones(B, T, dtype=torch.long)
        mask[0, -7:] = 0
        labels = torch.randint(0, 300, (B, T))
        with saved_tensor_bytes([*model.parameters(), *model.buffers()]) as saved:
            model(inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False)
        return saved()

    two, four = saved(2), saved(4)
    assert (four - two) / 2 == B * T * llm_layer_bytes(shape, a, T)
    # Outside the layers autograd keeps the final norm's input and the fp32 log-softmax (the formula's 4h + 4 +
    # 4V); the other 8V (10V in bf16) of llm_head_bytes are the gradients alive at the start of backward.
    kept_outside = two - 2 * B * T * llm_layer_bytes(shape, a, T)
    head_saved = B * T * (llm_head_bytes(shape, a) - (10 if a == 2 else 8) * shape.vocab)
    assert kept_outside == pytest.approx(head_saved, rel=0.15)


@pytest.mark.parametrize("mode", ["delta", "deep"])
def test_vision_coefficient_on_another_swin(mode):
    """The per token-channel coefficient, measured on Swin-B, predicts what Swin-T keeps within 10 %."""
    from r2g.model.vision import build_vision_encoder

    cfg = ModelConfig(vision_arch="swin_tiny_patch4_window7_224", mode=mode, lora_dropout=0.0)
    encoder = build_vision_encoder(cfg).train()
    image = torch.randn(1, 3, 224, 224)
    with saved_tensor_bytes([*encoder.parameters(), *encoder.buffers()]) as saved:
        encoder.forward_features(image)
    measured = saved()
    predicted = 4 * VISION_SAVED_PER_TOKEN_CHANNEL[mode] * vision_shape(cfg).token_channels
    assert measured == pytest.approx(predicted, rel=0.10)


def test_ds_configs_read(tmp_path):
    assert (read_ds("ds_configs/zero2.json").stage, read_ds("ds_configs/zero2.json").overlap_comm) == (2, True)
    z3 = read_ds("ds_configs/zero3_offload.json")
    assert (z3.stage, z3.offload_param, z3.offload_optimizer, z3.reduce_bucket_size) == (3, True, True, 5e8)
    with pytest.raises(R2GError, match="--ds"):
        read_ds(str(tmp_path / "missing.json"))


def test_zero3_divides_by_world_and_grad_ckpt_shrinks_activations(swin_b):
    llm = load_llm_shape("llama2-13b")
    z3 = read_ds("ds_configs/zero3.json")
    one, eight = (estimate(llm, swin_b, Setup(ds=z3, gpus=g)) for g in (1, 8))
    assert one.memory["frozen LLM weights"] == pytest.approx(8 * eight.memory["frozen LLM weights"])
    assert one.memory["frozen LLM weights"] == 2 * llm.params
    ckpt = estimate(llm, swin_b, Setup(ds=z3, gpus=8, grad_ckpt=True))
    assert ckpt.memory["LLM activations"] < eight.memory["LLM activations"] / 4
    assert ckpt.samples_per_s < eight.samples_per_s  # the recomputed forward costs time
    assert eight.samples_per_s == pytest.approx(8 * one.samples_per_s)


def test_largest_micro_batch_is_the_largest_that_fits(swin_b):
    llm = load_llm_shape("llama2-7b")
    plan = estimate(llm, swin_b, Setup(mem_gib=40))
    b = plan.max_micro_batch
    assert b > 6
    assert estimate(llm, swin_b, Setup(mem_gib=40, micro_batch=b)).fits
    assert not estimate(llm, swin_b, Setup(mem_gib=40, micro_batch=b + 1)).fits


def test_70b_on_one_80gb_gpu_suggests_zero3_over_enough_gpus(swin_b):
    llm = load_llm_shape("llama2-70b")
    plan = estimate(llm, swin_b, Setup(ds=read_ds("ds_configs/zero2.json")))
    assert not plan.fits and plan.max_micro_batch == 0
    zero3 = [s for s in plan.suggestions if s.startswith("--ds ds_configs/zero3.json over >= ")]
    assert len(zero3) == 1
    n = int(zero3[0].split(">= ")[1].split()[0])
    z3 = read_ds("ds_configs/zero3.json")
    assert estimate(llm, swin_b, Setup(ds=z3, gpus=n)).fits
    assert not estimate(llm, swin_b, Setup(ds=z3, gpus=n - 1)).fits
    assert any(s.startswith("--ds ds_configs/zero3_offload.json") for s in plan.suggestions)


def test_too_large_micro_batch_suggests_a_smaller_one_and_grad_ckpt(swin_b):
    plan = estimate(load_llm_shape("llama2-7b"), swin_b, Setup(micro_batch=96))
    assert not plan.fits
    assert any(s.startswith("--grad-ckpt:") for s in plan.suggestions)
    assert any(s.startswith(f"--micro-batch {plan.max_micro_batch} ") for s in plan.suggestions)


def test_cpu_device_has_no_cuda_context_and_fp32(swin_b):
    plan = estimate(load_llm_shape("llama2-7b"), swin_b, Setup(device="cpu", peak_tflops=None, mem_gib=64))
    rows = plan.memory
    assert rows["frozen LLM weights"] == 4 * load_llm_shape("llama2-7b").params
    tensors = sum(v for k, v in rows.items() if k not in ("workspace", "gradients", "DeepSpeed buckets"))
    assert rows["workspace"] == pytest.approx(0.15 * GIB + 0.10 * tensors)
    assert plan.model_states == sum(rows[k] for k in ("frozen LLM weights", "trainable weights",
                                                      "fp32 masters + Adam", "vision weights (frozen)"))
    assert plan.samples_per_s is None and plan.hours_per_epoch is None


def test_plan_command_reads_a_local_folder_and_prints_json(tmp_path):
    from typer.testing import CliRunner

    from r2g.cli import app

    folder = tmp_path / "my-llm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10}))
    runner = CliRunner()
    result = runner.invoke(app, ["plan", "--llm", str(folder), "--json", "--gpus", "2", "--dataset", "iu_xray"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["llm_params"] == TINY.params
    assert plan["setup"]["world"] == 2 and plan["sequence"]["report"] == 60  # IU-Xray's report budget
    assert plan["studies"] == 2_069 and plan["fits"] is True
    rows = plan["memory"]  # nothing trains but the mapper, so the activations outweigh the gradients
    assert plan["total"] == pytest.approx(sum(v for k, v in rows.items() if k != "gradients"))
    assert plan["hours_per_epoch"] == pytest.approx(plan["studies"] / plan["samples_per_s"] / 3600)
    table = runner.invoke(app, ["plan", "--llm", "llama2-70b"])
    assert table.exit_code == 0 and "does not fit" in table.stdout and "zero3.json over >=" in table.stdout
    bad = runner.invoke(app, ["plan", "--llm", str(tmp_path / "nowhere")])
    assert isinstance(bad.exception, R2GError) and "built-in config" in str(bad.exception)


def test_plan_takes_the_run_settings_as_r2g_train_does():
    """--mode, --grad-ckpt, --ds, --micro-batch and --precision are r2g/config.py's flags (same defaults, same
    checks); --dataset takes the datasets' names, and the older short ones."""
    from typer.testing import CliRunner

    from r2g.cli import app
    from r2g.config import ModelConfig, TrainConfig

    def setup(*flags):
        result = CliRunner().invoke(app, ["plan", "--llm", "llama2-7b", "--json", *flags])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["setup"]

    default = setup()
    assert (default["mode"], default["micro_batch"], default["grad_ckpt"], default["precision"], default["dataset"]) == (
        ModelConfig.mode, TrainConfig.micro_batch, ModelConfig.grad_ckpt, TrainConfig.precision, "mimic_cxr")
    assert default["ds"] == dataclasses.asdict(read_ds(TrainConfig.ds_config)) == dataclasses.asdict(Setup().ds)
    given = setup("--mode", "deep", "--grad-ckpt", "--ds", "ds_configs/zero3.json", "--micro-batch", "3",
                  "--precision", "bf16", "--dataset", "iu")
    assert (given["mode"], given["grad_ckpt"], given["ds"]["stage"], given["micro_batch"], given["precision"],
            given["dataset"]) == ("deep", True, 3, 3, "bf16", "iu_xray")
    for flags, message in ((("--mode", "huge"), "model.mode (--mode): 'huge' is not one of shallow, delta, deep"),
                           (("--dataset", "chexpert"), "--dataset 'chexpert': unknown dataset; choose one of iu_xray, mimic_cxr")):
        bad = CliRunner().invoke(app, ["plan", "--llm", "llama2-7b", *flags])
        assert isinstance(bad.exception, R2GError) and message in str(bad.exception)



def test_precisions_as_r2g_train_resolves_them(swin_b):
    llm = load_llm_shape("llama2-7b")
    n = 90_949_816  # deep
    mixed = estimate(llm, swin_b, Setup(mode="deep", precision="bf16-mixed")).memory
    assert mixed["frozen LLM weights"] == 2 * llm.params and mixed["trainable weights"] == 4 * n
    bf16 = estimate(llm, swin_b, Setup(mode="deep", precision="bf16")).memory
    assert bf16["trainable weights"] == 2 * n and bf16["LLM activations"] == mixed["LLM activations"]
    with pytest.raises(R2GError, match="bf16-mixed needs ZeRO-0/1/2"):
        estimate(llm, swin_b, Setup(precision="bf16-mixed", ds=read_ds("ds_configs/zero3.json")))


def test_grad_ckpt_keeps_block_inputs_of_swin(swin_b):
    llm = load_llm_shape("llama2-7b")
    full, ckpt = (estimate(llm, swin_b, Setup(mode="deep", grad_ckpt=c)).memory["vision activations"] for c in (False, True))
    per_image = 2 * (swin_b.token_channels + VISION_SAVED_PER_TOKEN_CHANNEL["deep"] * swin_b.largest_block)
    assert ckpt == 6 * per_image < full / 4  # micro-batch 6, one MIMIC-CXR view each
    assert estimate(llm, swin_b, Setup(mode="shallow", grad_ckpt=True)).memory["vision activations"] == 0


def test_peak_counts_the_larger_of_activations_and_gradients():
    from r2g.plan import peak

    rows = {"frozen LLM weights": 10, "trainable weights": 1, "gradients": 5, "fp32 masters + Adam": 3,
            "DeepSpeed buckets": 7, "vision weights (frozen)": 2, "LLM activations": 4, "vision activations": 4}
    # CPU: buckets are touched only as gradients pass through them -> 16 persistent + max(8, 5 + 7)
    assert peak(rows, Setup(device="cpu")) == 16 + 12
    # CUDA: DeepSpeed allocates the buckets once, so they persist -> 23 + max(8, 5)
    assert peak(rows, Setup(device="cuda")) == 23 + 8
    assert peak(rows | {"ZeRO-3 gathered weights": 6}, Setup(device="cuda")) == 23 + 6 + 8


def test_decoding_plan_against_hand_computed_steps_memory_and_hours():
    """r2g.plan_decode on TINY (1,352 weights: embeddings and LM head 2 x 80, two layers of 592, final norm 8), 2 GPUs,
    bf16, memory and link at 1 GB/s, 10 us per all-reduce; 10 studies in batches of 2, 1 beam, 6 prompt tokens,
    4 new tokens: KV cache 2 x 2 layers x 4 (kv_dim) x 2 bytes x 20 tokens = 640 bytes."""
    from r2g.plan import GPU_ASSUMPTIONS
    from r2g.plan_decode import DecodeSetup, decode_ways, kv_cache_bytes, replicated_params

    s = DecodeSetup(gpus=2, bytes_per_weight=2, hbm_gbps=1, link_gbps=1, allreduce_latency_us=10, studies=10,
                    prompt_tokens=6, batch_size=2, num_beams=1, max_new_tokens=4, prefetch_elements=0)
    assert TINY.params == 1352 and kv_cache_bytes(TINY, s) == 640 and replicated_params(TINY) == 80 + 5 * 8
    whole, zero3, tp = decode_ways(TINY, s)
    # whole: all 2,704 weight bytes and the KV cache read per step; 2 GPUs take 5 batches in 3 rounds
    assert whole.step_ms == pytest.approx(3344e-9 * 1e3) and whole.batches_at_once == 2
    assert whole.hours == pytest.approx(3 * 4 * 3344e-9 / 3600)
    # ZeRO-3: the same read plus half the weights (1,352 bytes) gathered from the other GPU
    assert zero3.step_ms == pytest.approx(4696e-9 * 1e3) and zero3.hours == pytest.approx(3 * 4 * 4696e-9 / 3600)
    # TP: half of the 1,232 split weights (1,232 bytes) + the 120 whole ones (240 bytes) + half the KV cache read;
    # 4 all-reduces of 32 bytes of hidden states and one of 40 bytes of logits, each moving 2 x 1/2 of its size
    assert tp.step_ms == pytest.approx((1792e-9 + 5 * 10e-6 + 4 * 32e-9 + 40e-9) * 1e3) and tp.batches_at_once == 1
    assert tp.hours == pytest.approx(5 * 4 * 51.96e-6 / 3600)
    # memory: tensors (+10 % allocator slack) + CUDA context + NCCL buffers
    workspace = (GPU_ASSUMPTIONS["cuda_context_gib"] + GPU_ASSUMPTIONS["nccl_gib"]) * GIB
    for way, tensors in ((whole, 2704 + 640), (zero3, 1352 + 2 * 592 + 640), (tp, 1472 + 320)):
        assert way.memory_gib * GIB == pytest.approx(tensors * 1.1 + workspace), way.name


def test_plan_command_shows_the_decoding_side(tmp_path):
    """70B on 8 H100s: whole does not fit in 80 GB; TP's token step is several times ZeRO-3's per batch."""
    from typer.testing import CliRunner

    from r2g import cli

    r = CliRunner().invoke(cli.app, ["plan", "--llm", "llama2-70b", "--gpus", "8", "--json"])
    assert r.exit_code == 0, r.output
    ways = {w["name"]: w for w in json.loads(r.output)["decode"]["ways"]}
    assert ways["whole"]["memory_gib"] > 80 > ways["tp"]["memory_gib"] and ways["zero3"]["memory_gib"] < 80
    assert ways["zero3"]["step_ms"] / ways["zero3"]["batches_at_once"] > 3 * ways["tp"]["step_ms"]
    assert json.loads(r.output)["decode"]["assumptions"]["test_studies"] == 3858
    r = CliRunner().invoke(cli.app, ["plan", "--llm", "llama2-7b", "--gpu", "nope", "--gpu-tflops", "100"])
    assert "unknown memory bandwidth" in str(r.exception)

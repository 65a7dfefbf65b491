"""`r2g plan`: will a training run fit in memory, and how long will an epoch take?

Pure arithmetic on published sizes: the LLM's config.json (a local HF folder, or a built-in public config in
r2g/model/configs/), the vision encoder's shapes (timm, built on the meta device: no memory, no weights), the
DeepSpeed config's ZeRO stage, offload and bucket sizes, and the sequence budget of the dataset preset.

Memory per GPU (or per CPU process with `device="cpu"`), `a` bytes per element of the frozen LLM and `va` of
the trainables (bf16 = 2 on CUDA, fp32 = 4 on CPU, bf16-mixed: 2 and 4, as r2g.precision resolves
`train.precision`), W = data-parallel world size:

    frozen LLM weights      a * P_llm                  (ZeRO-3: / W, plus the gathered layer and prefetch bucket)
    trainable weights       va * n                     (ZeRO-3: / W)
    gradients               va * n / W + 4 * n / W     (ZeRO-2: its partition and the fp32 copy the step uses;
                                                        ZeRO-3: a persistent fp32 partition, 4 * n / W)
    fp32 masters + Adam     (4 + 4 + 4) * n / W        (offload_optimizer: on the host instead)
    DeepSpeed buckets       reduce_bucket_size * va    (x2 under ZeRO-2 with overlap_comm; on CPU only the
                                                        part the gradients fill is ever touched, see there)
    LLM activations         B * T * (per-layer bytes of `llm_layer_bytes` * L + logits), see there
    vision encoder          frozen Swin weights + B * views * va * k_mode * sum(tokens * channels of every block)
    workspace               CUDA context + NCCL buffers + allocator slack (GPU_ASSUMPTIONS), or on CPU the
                            runtime's own memory + allocator slack (CPU_ASSUMPTIONS)

The total is a step's peak, not the sum of the rows: the activations are all alive when backward starts and
the gradients fill as backward frees them, so it counts what persists (`persistent_rows`) plus the larger of
the two (`peak`).

n = trainable parameters (mapper; + Swin q/v LoRA in delta; + all of Swin in deep). Time per epoch uses
`r2g.model.flops.train_flops_per_sample` at an assumed model FLOPs utilisation (MFU) of the GPU's peak.
The CPU figures are checked against measured peaks of real `r2g train` steps by bench/plan_check.py.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from r2g.config import PROMPT, DataConfig, ModelConfig, TrainConfig, preset, read_json
from r2g.errors import R2GError

CONFIGS = Path(__file__).resolve().parent / "model" / "configs"
GIB = 2**30

# Architectures whose decoder layer is Llama's (RMSNorm, RoPE, SwiGLU MLP), the layout the formulas count.
LLAMA_LIKE = ("llama", "mistral", "qwen2")

# Per dataset (r2g.config.DATASETS): train studies and views per study. Studies: R2Gen's split, which
# R2GenGPT uses (paper: MIMIC-CXR 270,790 train / 2,130 val / 3,858 test; IU-Xray 2,069 / 296 / 590 in R2Gen's
# annotation.json; the IU-Xray annotation in shared/data follows another split, 3,062 train studies: pass
# --studies). Views: R2Gen's MIMIC-CXR annotation has one image per study, its IU-Xray two.
DATASET_FACTS = {
    "mimic_cxr": {"train_studies": 270_790, "views": 1},
    "iu_xray": {"train_studies": 2_069, "views": 2},
}

# Stated assumptions until a GPU run calibrates them (bench/gpu_check.py compares its peaks with these).
GPU_ASSUMPTIONS = {
    "cuda_context_gib": 0.75,  # CUDA context + cuBLAS/cuDNN workspaces, outside torch's allocator
    "nccl_gib": 0.5,  # NCCL communicator buffers when W > 1
    "allocator_slack": 0.10,  # caching-allocator fragmentation, as a share of the tensors above
}
CPU_ASSUMPTIONS = {
    "runtime_gib": 0.15,  # what r2g train holds beyond its imports besides tensors: DeepSpeed engine, gloo, the
                          # data pipeline, Python objects (measured: 0.13-0.16 GB, bench/plan_check.py)
    "allocator_slack": 0.10,  # glibc heap fragmentation, as a share of the tensors above
}

# Elements autograd keeps per (token x channel) of each Swin block, per image: measured on Swin-B at 224 px with
# torch.autograd.graph.saved_tensors_hooks (deep 18.2, delta 12.7; bf16 exactly half the bytes of fp32). Deep
# keeps every block's LayerNorm and Linear inputs, q/k/v and the attention output, the GELU input (4C), the
# fc2 input (4C); delta keeps only what flows back to the first LoRA (the frozen Linears' inputs are not
# needed); shallow runs Swin without a graph. tests/test_plan.py re-measures it on another Swin.
VISION_SAVED_PER_TOKEN_CHANNEL = {"shallow": 0.0, "delta": 12.7, "deep": 18.2}
# DeepSpeed's defaults for keys a config leaves out (deepspeed/runtime/zero/config.py).
DS_DEFAULTS = {"reduce_bucket_size": 5e8, "stage3_prefetch_bucket_size": 5e7, "contiguous_gradients": True,
               "overlap_comm": False, "stage3_max_live_parameters": 1e9, "stage3_max_reuse_distance": 1e9}


def builtin_names() -> list[str]:
    return sorted(p.stem for p in CONFIGS.glob("*.json"))


# ---------------------------------------------------------------------------------------------- LLM


@dataclass(frozen=True)
class LLMShape:
    """The sizes of a Llama-style decoder that memory and FLOPs depend on, from its config.json."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool  # tie_word_embeddings: lm_head shares the embedding table
    qkv_bias: bool  # Qwen2 has biases on q, k and v

    @classmethod
    def from_config(cls, config: dict, name: str) -> "LLMShape":
        model_type = config.get("model_type", "?")
        if model_type not in LLAMA_LIKE:
            raise R2GError(f"{name}: model_type '{model_type}' is not one r2g plan can count; it knows the "
                           f"Llama-style decoders {list(LLAMA_LIKE)}")
        try:
            heads = config["num_attention_heads"]
            return cls(
                name=name, hidden=config["hidden_size"], intermediate=config["intermediate_size"],
                layers=config["num_hidden_layers"], heads=heads, kv_heads=config.get("num_key_value_heads") or heads,
                head_dim=config.get("head_dim") or config["hidden_size"] // heads, vocab=config["vocab_size"],
                tied=bool(config.get("tie_word_embeddings", False)),
                qkv_bias=model_type == "qwen2" or bool(config.get("attention_bias", False)),
            )
        except KeyError as e:
            raise R2GError(f"{name}: config.json has no {e.args[0]}") from None

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def layer_matmul_params(self) -> int:
        """Weights of one layer's Linears: q, o (q_dim x hidden), k, v (kv_dim x hidden), gate, up, down."""
        return 2 * self.hidden * self.q_dim + 2 * self.hidden * self.kv_dim + 3 * self.hidden * self.intermediate

    @property
    def layer_params(self) -> int:
        bias = self.q_dim + 2 * self.kv_dim if self.qkv_bias else 0
        return self.layer_matmul_params + bias + 2 * self.hidden  # + the two RMSNorm gains

    @property
    def params(self) -> int:
        """All weights: embedding (+ lm_head unless tied), layers, final norm."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.layers * self.layer_params + self.hidden

    @property
    def matmul_params(self) -> int:
        """P of r2g.model.flops: every Linear weight, lm_head included, the embedding table not."""
        return self.vocab * self.hidden + self.layers * self.layer_matmul_params


def load_llm_shape(spec: str) -> LLMShape:
    """A built-in name (r2g/model/configs/<name>.json), a local HF folder (its config.json only), or a
    config.json file."""
    path = CONFIGS / f"{spec}.json" if spec in builtin_names() else Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise R2GError(f"--llm '{spec}': neither a built-in config ({', '.join(builtin_names())}) nor a folder "
                       "with config.json")
    config = read_json(path)
    return LLMShape.from_config(config.get("text_config", config), spec)


def llm_layer_bytes(llm: LLMShape, a: int, seq_len: int) -> float:
    """Bytes autograd keeps per token for one frozen decoder layer (HF Llama / Mistral / Qwen2, SDPA attention).

    The weights are frozen, so no Linear keeps its input; the gradient still has to reach inputs_embeds, so
    everything else that backward needs stays: each RMSNorm's input upcast to fp32 and its fp32 1/rms
    (2 x (4h + 4)); SDPA's q (after RoPE), k, v and output in the compute dtype and its fp32 log-sum-exp per
    head, where k and v are repeated to every query head (transformers' repeat_kv, which SDPA gets whenever the
    batch is padded, as training batches are), so 4 q-sized tensors; a (T x T) mask per layer (a * T per
    token); the SwiGLU's gate, up and SiLU(gate) (3f). Equal to what autograd keeps, measured with
    saved_tensors_hooks on CPU in fp32 and bf16 (tests/test_plan.py)."""
    norms = 2 * (4 * llm.hidden + 4)
    attention = a * (4 * llm.q_dim + seq_len) + 4 * llm.heads
    return norms + attention + a * 3 * llm.intermediate


def llm_head_bytes(llm: LLMShape, a: int) -> float:
    """Bytes per token outside the layers: the final RMSNorm's fp32 input, and the loss. Transformers computes
    the cross-entropy on fp32 logits; at the start of backward the fp32 log-softmax it kept, the loss gradient
    and the logits' gradient (4V each) are alive together, plus its cast to a bf16 compute dtype."""
    return 4 * llm.hidden + 4 + 12 * llm.vocab + (2 * llm.vocab if a == 2 else 0)


def llm_activation_bytes(llm: LLMShape, a: int, seq_len: int, grad_ckpt: bool) -> float:
    """Peak activation bytes per sequence: every layer's saved tensors, plus one layer's worth of backward
    temporaries. With activation checkpointing a layer keeps only its input (a * h per token) and backward
    recomputes one layer at a time (one more layer's worth)."""
    layer = llm_layer_bytes(llm, a, seq_len)
    kept = llm.layers * (a * llm.hidden) + 2 * layer if grad_ckpt else (llm.layers + 1) * layer
    return seq_len * (kept + llm_head_bytes(llm, a))


# ------------------------------------------------------------------------------------------- vision


@dataclass(frozen=True)
class VisionShape:
    arch: str
    params: int
    features: int  # C: channels of the visual tokens
    tokens_per_view: int  # 49 for Swin at 224 px
    block_dims: tuple[int, ...]  # channels of every block that has a fused qkv (where delta puts its LoRA)
    token_channels: int  # sum over those blocks of tokens x channels
    largest_block: int  # the largest tokens x channels of one block (what checkpointing recomputes at once)
    forward_flops: int  # one image through the encoder


def vision_shape(cfg: ModelConfig) -> VisionShape:
    """Sizes of `cfg.vision_arch` (with cfg.vision_kwargs) from a meta-device timm model: nothing allocated."""
    import timm
    import torch

    from r2g.model.flops import encoder_forward_flops
    from r2g.model.vision import tokens_per_view

    try:
        with torch.device("meta"):
            enc = timm.create_model(cfg.vision_arch, pretrained=False, num_classes=0, **cfg.vision_kwargs)
    except (RuntimeError, TypeError) as e:
        raise R2GError(f"model.vision_arch: timm cannot build '{cfg.vision_arch}' ({e})") from None
    blocks = [m for m in enc.modules() if isinstance(getattr(getattr(m, "attn", None), "qkv", None), torch.nn.Linear)]
    return VisionShape(
        arch=cfg.vision_arch, params=sum(p.numel() for p in enc.parameters()), features=enc.num_features,
        tokens_per_view=tokens_per_view(enc), block_dims=tuple(b.dim for b in blocks),
        token_channels=sum(math.prod(b.input_resolution) * b.dim for b in blocks),
        largest_block=max(math.prod(b.input_resolution) * b.dim for b in blocks),
        forward_flops=encoder_forward_flops(enc),
    )


def vision_activation_elements(vision: VisionShape, mode: str, grad_ckpt: bool) -> float:
    """Elements the encoder keeps for backward per image. Checkpointed (timm, block by block), each block keeps
    its input and backward recomputes one block at a time."""
    k = VISION_SAVED_PER_TOKEN_CHANNEL[mode]
    if grad_ckpt and k:
        return vision.token_channels + k * vision.largest_block
    return k * vision.token_channels


def trainable_params(mode: str, vision: VisionShape, llm: LLMShape, lora_r: int) -> dict[str, int]:
    """Trainable parameters by group: the mapper (Linear C -> hidden + LayerNorm), Swin q/v LoRA (delta: A and B
    for q and v of every block, 4 * r * dim), all of Swin (deep)."""
    groups = {"mapper": vision.features * llm.hidden + llm.hidden + 2 * llm.hidden}
    if mode == "delta":
        groups["vision LoRA"] = sum(4 * lora_r * d for d in vision.block_dims)
    if mode == "deep":
        groups["vision"] = vision.params
    return groups


# --------------------------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class DSFacts:
    """What the memory depends on in a DeepSpeed config."""

    stage: int = 2
    offload_param: bool = False
    offload_optimizer: bool = False
    reduce_bucket_size: float = DS_DEFAULTS["reduce_bucket_size"]
    prefetch_bucket_size: float = DS_DEFAULTS["stage3_prefetch_bucket_size"]
    max_live_parameters: float = DS_DEFAULTS["stage3_max_live_parameters"]
    max_reuse_distance: float = DS_DEFAULTS["stage3_max_reuse_distance"]
    contiguous_gradients: bool = True
    overlap_comm: bool = False
    source: str = ""


def read_ds(path: str) -> DSFacts:
    """ZeRO stage, offload and bucket sizes of a DeepSpeed JSON (a shipped name such as
    ds_configs/zero3.json works from any folder)."""
    from r2g.ds_config import load_ds_config

    zero = load_ds_config(path).get("zero_optimization", {})

    def offloaded(key: str) -> bool:
        return zero.get(key, {}).get("device", "none") not in ("none", None)

    return DSFacts(
        stage=int(zero.get("stage", 0)), offload_param=offloaded("offload_param"),
        offload_optimizer=offloaded("offload_optimizer"),
        reduce_bucket_size=float(zero.get("reduce_bucket_size", DS_DEFAULTS["reduce_bucket_size"])),
        prefetch_bucket_size=float(zero.get("stage3_prefetch_bucket_size", DS_DEFAULTS["stage3_prefetch_bucket_size"])),
        max_live_parameters=float(zero.get("stage3_max_live_parameters", DS_DEFAULTS["stage3_max_live_parameters"])),
        max_reuse_distance=float(zero.get("stage3_max_reuse_distance", DS_DEFAULTS["stage3_max_reuse_distance"])),
        contiguous_gradients=bool(zero.get("contiguous_gradients", DS_DEFAULTS["contiguous_gradients"])),
        overlap_comm=bool(zero.get("overlap_comm", DS_DEFAULTS["overlap_comm"])), source=str(path),
    )


@dataclass(frozen=True)
class Setup:
    """One planned run: everything `estimate` needs besides the model shapes. The settings a run has too
    (mode, LoRA rank, checkpointing, micro-batch, precision, DeepSpeed config, dataset) default to the run
    config's defaults (r2g.config); `from_config` takes them from a run's."""

    mode: str = ModelConfig.mode
    gpus: int = 1  # per node
    nodes: int = 1
    mem_gib: float = 80.0  # per GPU (per process on CPU)
    ds: DSFacts = field(default_factory=lambda: read_ds(TrainConfig.ds_config))
    micro_batch: int = TrainConfig.micro_batch
    grad_ckpt: bool = ModelConfig.grad_ckpt
    dataset: str = DataConfig.dataset
    studies: int | None = None  # train studies per epoch; None = the dataset's
    seq_len: int | None = None  # the longest sequence; None = prompt + visual tokens + the dataset's report budget
    views: int | None = None  # images per study; None = the dataset's
    device: str = "cuda"  # cuda | cpu
    precision: str = TrainConfig.precision  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | bf16-mixed | fp32
    mfu: float = 0.40
    peak_tflops: float | None = 989.0  # dense bf16 peak per GPU (H100 SXM); None = unknown (no time estimate)
    lora_r: int = ModelConfig.lora_r

    @classmethod
    def from_config(cls, model: ModelConfig, train: TrainConfig, **planned) -> "Setup":
        """The setup of a run with these settings (its `--ds` read); `planned`: the other fields (GPUs, memory,
        dataset, ...)."""
        return cls(mode=model.mode, lora_r=model.lora_r, grad_ckpt=model.grad_ckpt, micro_batch=train.micro_batch,
                   precision=train.precision, ds=read_ds(train.ds_config), **planned)

    @property
    def world(self) -> int:
        return self.gpus * self.nodes

    def dtype_bytes(self) -> tuple[int, int]:
        """(bytes per element of the frozen LLM and its activations, of the vision encoder, mapper and their
        activations), as r2g.precision resolves train.precision on this device and ZeRO stage."""
        import torch

        from r2g.precision import resolve_precision

        p = resolve_precision(self.precision, torch.device(self.device), self.ds.stage)
        return p.llm_dtype.itemsize, 2 if p.ds_bf16 else 4


def sequence(setup: Setup, vision: VisionShape) -> dict[str, int]:
    """Token counts of the longest training sequence: [bos] "Human: <Img>" visual "</Img> {prompt} \\nAssistant:"
    then a report filling the preset's budget. The prompt is counted at 4 characters per token (Llama-2's
    tokenizer on this English prompt; the benches' stand-in BPE gives 27 tokens), so no tokenizer is needed."""
    from r2g.model.prompt import IMAGE_OPEN, text_after_image

    prompt = 1 + math.ceil(len(IMAGE_OPEN + text_after_image(PROMPT)) / 4)
    report = preset(setup.dataset)["max_report_tokens"]
    visual = vision.tokens_per_view  # the views of a study are averaged into one grid (view_merge "mean")
    if setup.seq_len:  # a measured length (bench/plan_check.py): the report is what the prompt leaves
        report = setup.seq_len - prompt - visual
    return {"prompt": prompt, "visual": visual, "report": report, "total": prompt + visual + report}


# ------------------------------------------------------------------------------------------ estimate


@dataclass(frozen=True)
class Plan:
    llm: str
    llm_params: int
    mode: str
    trainable: dict[str, int]
    setup: Setup
    sequence: dict[str, int]
    memory: dict[str, float]  # bytes per GPU, by row
    total: float
    capacity: float
    fits: bool
    max_micro_batch: int
    host_per_gpu: float  # bytes per GPU held in host memory (offload)
    flops_per_sample: float
    samples_per_s: float | None
    hours_per_epoch: float | None
    studies: int
    assumptions: dict[str, float]
    suggestions: list[str] = field(default_factory=list)

    @property
    def model_states(self) -> float:
        """What stays between steps: the weights, the fp32 masters and Adam's moments (and on CUDA DeepSpeed's
        buckets, which it allocates once); gradients and activations come and go within a step."""
        return sum(v for k, v in self.memory.items() if k in persistent_rows(self.setup))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["setup"]["world"] = self.setup.world
        d["model_states"] = self.model_states
        d["gib"] = {k: v / GIB for k, v in self.memory.items()} | {"total": self.total / GIB,
                                                                   "capacity": self.capacity / GIB}
        return d


def persistent_rows(setup: Setup) -> tuple[str, ...]:
    """Rows that stay allocated through the step. ZeRO-3 allocates its gradient partition and its bucket once;
    ZeRO-2 allocates its buckets at each backward (in full on CUDA; on CPU a page is resident only once a
    gradient is written to it) and its gradient partition as backward ends."""
    rows = ("frozen LLM weights", "trainable weights", "fp32 masters + Adam", "vision weights (frozen)")
    if setup.ds.stage >= 3:
        return rows + ("gradients", "DeepSpeed buckets")
    return rows + (("DeepSpeed buckets",) if setup.device == "cuda" else ())


def peak(rows: dict[str, float], setup: Setup) -> float:
    """Peak tensors of a step: what persists, plus the gathered ZeRO-3 layers, plus the larger of the
    activations (all alive when backward starts) and the gradient side (the gradients and, on CPU, the buckets
    they pass through, which fill as backward frees the activations)."""
    keep = persistent_rows(setup)
    activations = rows["LLM activations"] + rows["vision activations"]
    gradient_side = sum(v for k, v in rows.items() if k in ("gradients", "DeepSpeed buckets") and k not in keep)
    return (sum(rows[k] for k in keep if k in rows) + rows.get("ZeRO-3 gathered weights", 0.0)
            + max(activations, gradient_side))


def memory_rows(llm: LLMShape, vision: VisionShape, setup: Setup, seq_len: int,
                micro_batch: int) -> tuple[dict, float, float]:
    """(bytes per GPU by row, bytes per GPU on the host, peak bytes per GPU: the step's peak tensors plus the
    workspace) for one micro-batch size."""
    (a, va), W, ds = setup.dtype_bytes(), setup.world, setup.ds
    n_views = setup.views or DATASET_FACTS[setup.dataset]["views"]
    n = sum(trainable_params(setup.mode, vision, llm, setup.lora_r).values())
    zero3 = ds.stage >= 3
    shard = W if zero3 else 1
    opt_shard = W if ds.stage >= 1 else 1
    grad_shard = W if ds.stage >= 2 else 1
    frozen_vision = 0 if setup.mode == "deep" else vision.params

    rows: dict[str, float] = {}
    rows["frozen LLM weights"] = 0.0 if (zero3 and ds.offload_param) else a * llm.params / shard
    if zero3:
        # The module being computed, gathered whole, and the next ones being prefetched. From the second step
        # on, DeepSpeed also keeps up to max_live_parameters gathered that it will reuse within
        # max_reuse_distance (both 1e9 by default, as in ds_configs/zero3.json), i.e. all of a model below 1B
        # (measured: +2.2 GB per rank from step 2 at 0.55B in fp32, bench/plan_check.py).
        largest = max(llm.layer_params, llm.vocab * llm.hidden)
        held = max(largest, ds.max_live_parameters) if ds.max_reuse_distance > 0 else largest
        rows["ZeRO-3 gathered weights"] = a * min(held + ds.prefetch_bucket_size, llm.params)
    rows["trainable weights"] = va * n / shard
    # ZeRO-3: an fp32 partition of the gradients (the bucket holds them on the way); below: the gradients in
    # the compute dtype, then the (partitioned) fp32 copy the optimizer steps on.
    rows["gradients"] = 4 * n / W if zero3 else va * n / grad_shard + 4 * n / opt_shard
    optimizer = 12 * n / opt_shard  # fp32 master copy + Adam's two moments
    rows["fp32 masters + Adam"] = 0.0 if ds.offload_optimizer else optimizer
    if ds.contiguous_gradients and ds.stage >= 2 and (setup.device == "cuda" or zero3):
        # CUDA allocates the whole bucket. On CPU a page becomes resident only once a gradient is written to
        # it: ZeRO-3 keeps its one bucket, so what the gradients filled stays; ZeRO-2 allocates its buckets
        # anew for each backward, and the gradients pass through them instead of staying in .grad, which the
        # gradients row already counts (measured, bench/plan_check.py).
        buffers = 2 if (ds.stage == 2 and ds.overlap_comm) else 1
        touched = ds.reduce_bucket_size if setup.device == "cuda" else min(ds.reduce_bucket_size, n)
        rows["DeepSpeed buckets"] = buffers * va * touched
    rows["vision weights (frozen)"] = va * frozen_vision / shard
    rows["LLM activations"] = micro_batch * llm_activation_bytes(llm, a, seq_len, setup.grad_ckpt)
    rows["vision activations"] = micro_batch * n_views * va * vision_activation_elements(vision, setup.mode, setup.grad_ckpt)
    tensors = peak(rows, setup)
    if setup.device == "cuda":
        g = GPU_ASSUMPTIONS
        rows["workspace"] = (g["cuda_context_gib"] + (g["nccl_gib"] if W > 1 else 0)) * GIB + g["allocator_slack"] * tensors
    else:
        rows["workspace"] = CPU_ASSUMPTIONS["runtime_gib"] * GIB + CPU_ASSUMPTIONS["allocator_slack"] * tensors
    host = (optimizer if ds.offload_optimizer else 0.0) + (a * llm.params / W if zero3 and ds.offload_param else 0.0)
    return rows, host, tensors + rows["workspace"]


def estimate(llm: LLMShape, vision: VisionShape, setup: Setup, suggest: bool = True) -> Plan:
    """Memory per GPU, the largest micro-batch that fits, FLOPs per sample and time per epoch for `setup`."""
    from r2g.model.flops import FlopCounts, train_flops_per_sample

    if setup.mode not in VISION_SAVED_PER_TOKEN_CHANNEL:
        raise R2GError(f"--mode '{setup.mode}': choose shallow, delta or deep")
    if setup.dataset not in DATASET_FACTS:
        raise R2GError(f"--dataset '{setup.dataset}': choose one of {', '.join(DATASET_FACTS)}")
    seq = sequence(setup, vision)
    T = seq["total"]
    rows, host, total = memory_rows(llm, vision, setup, T, setup.micro_batch)
    capacity = setup.mem_gib * GIB
    max_micro_batch = largest_micro_batch(llm, vision, setup)

    counts = FlopCounts(llm_matmul_params=llm.matmul_params, llm_layers=llm.layers, llm_hidden=llm.hidden,
                        vision_forward=vision.forward_flops, vision_features=vision.features, mode=setup.mode)
    n_views = setup.views or DATASET_FACTS[setup.dataset]["views"]
    flops = train_flops_per_sample(counts, T, seq["visual"], n_images=n_views)
    # Checkpointing recomputes each LLM layer's forward during backward: work done, not model FLOPs.
    recompute = (2 * llm.matmul_params * T + 4 * llm.layers * T * T * llm.hidden) if setup.grad_ckpt else 0
    studies = setup.studies or DATASET_FACTS[setup.dataset]["train_studies"]
    samples_per_s = hours = None
    if setup.peak_tflops:
        samples_per_s = setup.world * setup.mfu * setup.peak_tflops * 1e12 / (flops + recompute)
        hours = studies / samples_per_s / 3600
    assumptions = dict(GPU_ASSUMPTIONS if setup.device == "cuda" else CPU_ASSUMPTIONS, mfu=setup.mfu)
    plan = Plan(
        llm=llm.name, llm_params=llm.params, mode=setup.mode,
        trainable=trainable_params(setup.mode, vision, llm, setup.lora_r), setup=setup, sequence=seq,
        memory=rows, total=total, capacity=capacity, fits=total <= capacity, max_micro_batch=max_micro_batch,
        host_per_gpu=host, flops_per_sample=flops, samples_per_s=samples_per_s, hours_per_epoch=hours,
        studies=studies, assumptions=assumptions,
    )
    if suggest and not plan.fits:
        plan = dataclasses.replace(plan, suggestions=suggestions(llm, vision, setup))
    return plan


def largest_micro_batch(llm: LLMShape, vision: VisionShape, setup: Setup, limit: int = 1 << 16) -> int:
    """The largest micro-batch whose peak fits in setup.mem_gib (0 if none does); the peak grows with it."""
    T = sequence(setup, vision)["total"]
    fits = lambda b: memory_rows(llm, vision, setup, T, b)[2] <= setup.mem_gib * GIB  # noqa: E731
    lo, hi = 0, 1
    while hi <= limit and fits(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def suggestions(llm: LLMShape, vision: VisionShape, setup: Setup) -> list[str]:
    """What would fit instead, each with the flags to pass: --grad-ckpt, a smaller micro-batch, ZeRO-3 over
    enough GPUs, ZeRO-3 with offload."""
    capacity = setup.mem_gib * GIB
    T = sequence(setup, vision)["total"]  # none of the changes below alters the sequence

    def total(**changes) -> float:
        return memory_rows(llm, vision, dataclasses.replace(setup, **changes), T, setup.micro_batch)[2]

    out = []
    ckpt_options = (True,) if setup.grad_ckpt else (False, True)
    ckpt_flag = lambda ckpt: " --grad-ckpt" if ckpt and not setup.grad_ckpt else ""  # noqa: E731
    if not setup.grad_ckpt and (t := total(grad_ckpt=True)) <= capacity:
        out.append(f"--grad-ckpt: {t / GIB:.1f} GiB per GPU at micro-batch {setup.micro_batch}")
    for ckpt in ckpt_options:
        smaller = largest_micro_batch(llm, vision, dataclasses.replace(setup, grad_ckpt=ckpt))
        if 1 <= smaller < setup.micro_batch:
            accum = math.ceil(setup.micro_batch / smaller)
            out.append(f"--micro-batch {smaller}{ckpt_flag(ckpt)} (with --grad-accum {accum} in r2g train to keep "
                       "the batch size)")
            break
    # ZeRO-3 holds every parameter in one dtype, so bf16-mixed becomes bf16 there (r2g.precision).
    precision = "bf16" if setup.precision == "bf16-mixed" else setup.precision
    precision_flag = " --precision bf16" if precision != setup.precision else ""
    zero3 = read_ds("ds_configs/zero3.json")
    found = next(((world, ckpt, t) for ckpt in ckpt_options for world in range(1, 4097)
                  if (t := total(ds=zero3, grad_ckpt=ckpt, gpus=world, nodes=1, precision=precision)) <= capacity), None)
    if found and (found[0] > setup.world or setup.ds.stage != 3):
        world, ckpt, t = found
        out.append(f"--ds ds_configs/zero3.json{ckpt_flag(ckpt)}{precision_flag} over >= {world} GPUs: "
                   f"{t / GIB:.1f} GiB per GPU at micro-batch {setup.micro_batch}")
    offload = dataclasses.replace(setup, ds=read_ds("ds_configs/zero3_offload.json"), grad_ckpt=True, precision=precision)
    _, host, t = memory_rows(llm, vision, offload, T, setup.micro_batch)
    if t <= capacity:
        out.append(f"--ds ds_configs/zero3_offload.json{ckpt_flag(True)}{precision_flag} on {setup.world} GPU(s): {t / GIB:.1f} GiB "
                   f"per GPU and {host / GIB:.1f} GiB of host memory per GPU")
    if not out:
        out.append("nothing found up to 4,096 GPUs at this micro-batch: lower --micro-batch or use GPUs with more memory")
    return out

"""The eval side of `r2g plan`: memory per GPU and hours to decode a test split, with the LLM whole on every GPU,
ZeRO-3-partitioned (`--ds zero3.json`) or tensor-parallel (`--tp N`).

Decoding a few studies at a time is bound by memory traffic, not FLOPs: every token step reads every weight once.
Per token step, with a bytes per weight, P LLM weights (P_rep of them, embeddings and norms, whole on every rank
under TP), G GPUs, a batch of B studies x k beams, a link of `link_gbps` GB/s per GPU between them and memory of
`hbm_gbps` GB/s:

    whole    a * P / hbm                                      each GPU decodes its own batches (G at a time)
    ZeRO-3   a * P / hbm + a * P * (G - 1) / G / link         each GPU gathers every layer from the others, for
                                                              every token step; G batches at a time
    TP       a * (P - P_rep) / G / hbm + a * P_rep / hbm      each GPU reads its slices; per layer two all-reduces
             + (2 L + 1) * (latency + 2 (G - 1) / G * x / link)   of the hidden states x = B k h a bytes, and one
                                                              of the logits (x = B k V a); one batch at a time

(the KV cache read is added to each: its bytes / hbm, split over G under TP). A test split of S studies takes
ceil(S / B) batches of `max_new_tokens` steps (every beam decoding to the limit: an upper bound; the prefill of
the prompt and visual tokens is left out, it is one compute-bound pass per batch). Memory per GPU: its weights (ZeRO-3: its partition plus
one gathered layer and the prefetch bucket, as the training plan counts them), the KV cache of its batch
(2 L kv_dim a per token per beam; TP: its heads only) and the runtime's workspace (GPU_ASSUMPTIONS).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from r2g.config import GenerateConfig
from r2g.plan import GIB, GPU_ASSUMPTIONS, LLMShape

# Memory bandwidth per GPU in GB/s (datasheets): what a decode step is bound by.
HBM_GBPS = {"A100": 2039, "H100": 3350, "H100 PCIe": 2000, "H100 NVL": 3900, "H200": 4800, "H200 NVL": 4800,
            "GH200": 4900, "B200": 8000, "GB200": 8000}
LINK_GBPS = 450.0  # NVLink 4 (H100 SXM), per GPU and direction; across nodes 400 Gb/s InfiniBand is 50
INTER_NODE_GBPS = 50.0
ALLREDUCE_LATENCY_US = 10.0  # one small NCCL all-reduce within a node
# Test studies of R2Gen's splits (paper: MIMIC-CXR 3,858; IU-Xray 590).
TEST_STUDIES = {"mimic_cxr": 3_858, "iu_xray": 590}


@dataclass(frozen=True)
class DecodeSetup:
    gpus: int = 8  # over all nodes
    nodes: int = 1
    bytes_per_weight: int = 2  # bf16 on CUDA
    hbm_gbps: float = HBM_GBPS["H100"]
    link_gbps: float | None = None  # None: NVLink within a node, InfiniBand across nodes
    allreduce_latency_us: float = ALLREDUCE_LATENCY_US
    studies: int = TEST_STUDIES["mimic_cxr"]
    prompt_tokens: int = 100  # prompt + visual tokens before the report
    batch_size: int = GenerateConfig.batch_size
    num_beams: int = GenerateConfig.num_beams
    max_new_tokens: int = GenerateConfig.max_new_tokens
    prefetch_elements: float = 5e7  # ZeRO-3's stage3_prefetch_bucket_size

    @property
    def link(self) -> float:
        return self.link_gbps or (LINK_GBPS if self.nodes == 1 else INTER_NODE_GBPS)


@dataclass(frozen=True)
class DecodeWay:
    name: str
    memory_gib: float  # per GPU
    step_ms: float  # one token step of one batch
    batches_at_once: int  # batches decoded side by side over all GPUs
    hours: float  # the whole test split

    def to_dict(self) -> dict:
        return asdict(self)


def replicated_params(llm: LLMShape) -> int:
    """Weights AutoTP leaves whole on every rank: the input embeddings and the norms (the LM head is split)."""
    return llm.vocab * llm.hidden + (2 * llm.layers + 1) * llm.hidden


def kv_cache_bytes(llm: LLMShape, s: DecodeSetup) -> float:
    """Keys and values of one batch at its longest: every layer, every beam, prompt and generated tokens."""
    tokens = s.batch_size * s.num_beams * (s.prompt_tokens + s.max_new_tokens)
    return 2 * llm.layers * llm.kv_dim * s.bytes_per_weight * tokens


def decode_ways(llm: LLMShape, s: DecodeSetup) -> list[DecodeWay]:
    """Whole, ZeRO-3 and TP decoding of the test split on `s.gpus` GPUs (see the module docstring)."""
    a, P, G, hbm, link = s.bytes_per_weight, llm.params, s.gpus, s.hbm_gbps * 1e9, s.link * 1e9
    kv = kv_cache_bytes(llm, s)
    workspace = GPU_ASSUMPTIONS["cuda_context_gib"] * GIB + (GPU_ASSUMPTIONS["nccl_gib"] * GIB if G > 1 else 0)
    slack = 1 + GPU_ASSUMPTIONS["allocator_slack"]
    batches = math.ceil(s.studies / s.batch_size)

    def way(name: str, tensors: float, step_s: float, at_once: int) -> DecodeWay:
        hours = math.ceil(batches / at_once) * s.max_new_tokens * step_s / 3600
        return DecodeWay(name, (tensors * slack + workspace) / GIB, step_s * 1e3, at_once, hours)

    whole = way("whole", a * P + kv, (a * P + kv) / hbm, G)
    gathered = a * (llm.layer_params + s.prefetch_elements)
    zero3 = way("zero3", a * P / G + gathered + kv, (a * P + kv) / hbm + a * P * (G - 1) / G / link, G)
    rep = replicated_params(llm)
    sliced = a * (P - rep) / G + a * rep
    hidden, logits = s.batch_size * s.num_beams * llm.hidden * a, s.batch_size * s.num_beams * llm.vocab * a

    def allreduce(x: float) -> float:
        return s.allreduce_latency_us * 1e-6 + 2 * (G - 1) / G * x / link

    tp_step = (sliced + kv / G) / hbm + 2 * llm.layers * allreduce(hidden) + allreduce(logits) if G > 1 else \
        (sliced + kv) / hbm
    tp = way("tp", sliced + kv / G, tp_step, 1)
    return [whole, zero3, tp]


def assumptions(s: DecodeSetup) -> dict[str, float]:
    return {"bytes_per_weight": s.bytes_per_weight, "hbm_gbps": s.hbm_gbps, "link_gbps": s.link,
            "allreduce_latency_us": s.allreduce_latency_us, "test_studies": s.studies, "batch_size": s.batch_size,
            "num_beams": s.num_beams, "steps_per_batch (max_new_tokens)": s.max_new_tokens}

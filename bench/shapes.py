"""R2GenGPT models of given shapes with random weights, built in memory (no files, nothing downloaded).

Speed depends on shapes, not on weights: a random Llama with Llama-2-7B's dimensions costs what Llama-2-7B
costs per token. The benches build their models here, through `build_model` (so the LLM is frozen and the
vision encoder is frozen / LoRA-adapted / trainable for each mode exactly as in training).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from r2g.config import PROMPT, ModelConfig
from r2g.model.prompt import IMAGE_CLOSE, IMAGE_OPEN
from r2g.model.r2gen import R2GenGPT, build_model

# A MIMIC-CXR-style findings + impression, long enough to fill the 100-token report budget: the benches
# feed the worst case, every report cut to max_report_tokens.
LONG_REPORT = (
    "PA and lateral views of the chest provided. There is no focal consolidation, effusion, or pneumothorax. "
    "The cardiomediastinal silhouette is normal. Imaged osseous structures are intact. No free air below the "
    "right hemidiaphragm is seen. Mild atelectasis is noted at the left lung base. The hila are unremarkable "
    "and the pulmonary vasculature is not engorged. A right internal jugular central venous catheter ends in "
    "the mid superior vena cava. Sternotomy wires are intact and aligned. There is mild degenerative change "
    "along the thoracic spine. The upper abdomen is unremarkable. Compared with the prior study, the small "
    "left pleural effusion has resolved and the heart size is unchanged. IMPRESSION: No acute "
    "cardiopulmonary process. Mild left basilar atelectasis. Stable moderate cardiomegaly without edema."
)


@dataclass(frozen=True)
class Shapes:
    """Sizes of the vision encoder (a timm architecture + overrides, at `image_size`) and of the Llama."""

    vision_arch: str
    vision_kwargs: dict[str, Any]
    image_size: int
    llm: dict[str, Any] = field(default_factory=dict)  # LlamaConfig sizes; no vocab_size = the tokenizer's


LLAMA2_7B = Shapes(
    "swin_base_patch4_window7_224", {}, 224,
    {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
     "intermediate_size": 11008, "vocab_size": 32000, "max_position_embeddings": 4096},
)


def shapes(name: str) -> Shapes:
    """`llama2-7b` (Swin-B at 224 px + Llama-2-7B dimensions) or `tiny` (the test suite's micro-Swin + a
    2-layer Llama of hidden 64, runs in seconds on a CPU)."""
    if name == "llama2-7b":
        return LLAMA2_7B
    if name == "tiny":
        from r2g.demo.toys import TINY_VISION_KWARGS

        # std 0.3, as in the tests' tiny LM: at HF's 0.02 a tiny random LM ignores its input.
        return Shapes("swin_tiny_patch4_window7_224", TINY_VISION_KWARGS, TINY_VISION_KWARGS["img_size"],
                      {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
                       "intermediate_size": 128, "max_position_embeddings": 512, "initializer_range": 0.3})
    raise ValueError(f"unknown shapes '{name}'; choose llama2-7b or tiny")


def stand_in_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the prompt and `LONG_REPORT`, standing in for the LLM's tokenizer: it
    gives the bos / eos / pad ids and whole-word tokens for the prompt, roughly as a 32k vocabulary does
    (Llama-2's own tokenizer, not available here, may differ by a few prompt tokens)."""
    from r2g.demo.tiny_lm import train_tokenizer

    return train_tokenizer([LONG_REPORT, PROMPT, f"{IMAGE_OPEN}{IMAGE_CLOSE} \nAssistant:"], vocab_size=1000)


def random_llm(sizes: dict[str, Any], tokenizer: PreTrainedTokenizerFast, device: torch.device, dtype: torch.dtype):
    """A random-init LlamaForCausalLM created directly on `device` in `dtype` (a 7B model never exists in
    fp32 or on the CPU), with SDPA attention."""
    config = LlamaConfig(
        **{"vocab_size": len(tokenizer), **sizes},
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")


def build_shaped_model(
    s: Shapes, mode: str, tokenizer: PreTrainedTokenizerFast, device: torch.device, dtype: torch.dtype, seed: int = 0,
    grad_ckpt: bool = False,
) -> R2GenGPT:
    """R2GenGPT of shapes `s` in alignment `mode`, through `build_model` as training builds it. The LLM is on
    `device` in `dtype`; Swin and mapper are fp32 on the CPU, where DeepSpeed (or the caller) moves them."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vision_arch=s.vision_arch, vision_kwargs=s.vision_kwargs, mode=mode, grad_ckpt=grad_ckpt)
    return build_model(cfg, llm=random_llm(s.llm, tokenizer, device, dtype), tokenizer=tokenizer)

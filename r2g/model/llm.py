"""The language side: a frozen Hugging Face causal LM and its tokenizer, from a local folder only.

Under ZeRO-3 (an `HfDeepSpeedConfig` kept alive by the caller) the weights load partitioned, each rank reading
only its own share from the safetensors files (r2g/model/zero3_load.py), so no rank holds a full copy even
while loading; otherwise through `from_pretrained`. Nothing here touches parameter data afterwards (no
`.float()`, no copies): freezing only flips `requires_grad`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn as nn
from peft import LoraConfig, get_peft_model
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_LORA_TARGETS
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.integrations import deepspeed_config, is_deepspeed_zero3_enabled

from r2g.config import ModelConfig
from r2g.errors import R2GError
from r2g.model.tp_load import load_tensor_parallel
from r2g.model.zero3_load import load_partitioned

LLM_HINT = (
    "--llm must be a local Hugging Face folder with config.json and tokenizer files, e.g. /models/Llama-2-7b-chat-hf"
)
# config.json keys that say where or with which library version a model was saved, not what it is.
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version")


def _check_folder(path: str | Path) -> Path:
    folder = Path(path)
    if not str(path) or not (folder / "config.json").is_file():
        raise R2GError(f"{LLM_HINT} (got '{path}')")
    return folder


def load_llm(path: str | Path, dtype: torch.dtype | None = None,
             tensor_parallel: int = 1) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A frozen causal LM and its tokenizer from the local folder `path` (never the Hub).

    dtype: parameter dtype; None means float32 (transformers 5 would otherwise use the checkpoint's dtype,
    e.g. fp16 for Llama-2, which is wrong on CPU). Pass torch.bfloat16 on GPU.
    tensor_parallel: > 1 splits its layers over that many ranks (r2g/model/tp_load.py), each reading its slices.
    """
    folder = _check_folder(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise R2GError(f"{LLM_HINT}; cannot load the tokenizer from {folder} ({e})") from None
    if tokenizer.eos_token_id is None:
        raise R2GError(f"{folder}: the tokenizer has no eos token; set eos_token in tokenizer_config.json")
    try:
        if tensor_parallel > 1:  # each rank reads only its own slice of every split weight
            model = load_tensor_parallel(folder, dtype or torch.float32, tensor_parallel)
        elif is_deepspeed_zero3_enabled():  # each rank reads only its own partition of every weight
            model = load_partitioned(folder, dtype or torch.float32, deepspeed_config())
        else:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32, local_files_only=True)
    except (OSError, ValueError) as e:  # no weights, not a causal-LM architecture, ...
        raise R2GError(f"{LLM_HINT}; cannot load a causal LM from {folder} ({e})") from None
    n_embeddings = model.get_input_embeddings().num_embeddings
    special = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
    outside = {name: i for name, i in special.items() if i is not None and i >= n_embeddings}
    if outside:  # e.g. a tokenizer class that adds its own pad token to a model that has no row for it
        raise R2GError(f"{folder}: special token ids {outside} are outside the model's {n_embeddings} embeddings; "
                       "the tokenizer files do not belong to this model")
    model.requires_grad_(False)
    return model, tokenizer


def config_hash(path: str | Path) -> str:
    """sha256 of the LLM folder's config.json, canonicalised (sorted keys, no whitespace, without
    `_name_or_path` / `transformers_version`), so a run can check it is reloaded with the same LLM."""
    config = json.loads((_check_folder(path) / "config.json").read_text())
    for key in _VOLATILE_CONFIG_KEYS:
        config.pop(key, None)
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def lora_targets(llm: PreTrainedModel) -> list[str]:
    """Names of the attention projections LoRA adapts in this LLM family: peft's own per-architecture table
    (keyed by config.json's model_type), which gives the query and value projections, q_proj and v_proj for
    Llama, Llama-3, Mistral and Qwen2 (c_attn for GPT-2, ...)."""
    model_type = llm.config.model_type
    if model_type not in PEFT_LORA_TARGETS:
        raise R2GError(f"--llm-lora: peft has no LoRA target modules for model_type '{model_type}' (config.json); "
                       "train without --llm-lora")
    return list(PEFT_LORA_TARGETS[model_type])


def add_llm_lora(llm: PreTrainedModel, cfg: ModelConfig) -> nn.Module:
    """LoRA (peft) on the LLM's query and value projections (`lora_targets`); returns the peft-wrapped model,
    in which only the LoRA weights train. A projection with a bias (Qwen2's q/k/v) keeps it, frozen."""
    targets = lora_targets(llm)
    lora = LoraConfig(
        r=cfg.llm_lora_r,
        lora_alpha=cfg.llm_lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(llm, lora)
    except ValueError as e:  # peft: target modules not found
        raise R2GError(f"--llm-lora: this LLM has no {targets} layers to adapt ({e}); "
                       "train without --llm-lora") from None


def enable_grad_ckpt(llm: PreTrainedModel) -> None:
    """Activation checkpointing of every decoder layer: each keeps only its input hidden states and recomputes
    its activations in the backward pass (only while training; generation is untouched).

    Non-reentrant torch checkpointing, because the LLM's weights are frozen: it gives gradients to the mapper
    (through inputs_embeds) and to LoRA weights inside the layers whatever requires grad, and it recomputes
    through the module hooks ZeRO-3 uses to gather partitioned weights. Reentrant checkpointing needs an input
    that requires grad, which is why Hugging Face also hooks the input embeddings to make their output require
    grad; non-reentrant needs no such hook, so it is removed (our inputs_embeds carry the mapper's graph)."""
    if not llm.supports_gradient_checkpointing:
        raise R2GError(f"--grad-ckpt: {type(llm).__name__} does not support activation checkpointing; train without it")
    # transformers 5 renamed gradient_checkpointing_enable (deprecated there) to activation_checkpointing_enable.
    enable = getattr(llm, "activation_checkpointing_enable", None) or llm.gradient_checkpointing_enable
    enable({"use_reentrant": False})
    llm.disable_input_require_grads()

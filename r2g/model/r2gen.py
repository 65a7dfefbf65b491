"""R2GenGPT: Swin visual tokens, mapped into a frozen LLM's embedding space, followed by the report.

    images (B, V, 3, H, W) --Swin, merge views--> (B, N, C) --Linear, LayerNorm--> (B, N, hidden)
    prompt + report ids (B, T) --LLM embeddings--> (B, T, hidden), visual tokens scattered into the N
    placeholder slots (Hugging Face LLaVA style) --LLM--> loss on the report tokens / generated report.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast

from r2g.config import GenerateConfig, ModelConfig
from r2g.errors import R2GError
from r2g.model.llm import add_llm_lora, enable_grad_ckpt, load_llm
from r2g.model.prompt import ReportEncoder, build_batch, pad_id, stop_ids
from r2g.model.vision import build_vision_encoder, encode, num_visual_tokens, state_dict_mismatch

PARAM_GROUPS = ("vision", "vision LoRA", "mapper", "llm", "llm LoRA")


class VisualProjector(nn.Module):
    """Vision features to LLM embeddings: Linear(C -> hidden) then LayerNorm(hidden), as the reference's
    `llama_proj` + `layer_norm`."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C) -> (B, N, hidden)."""
        return self.norm(self.proj(x))


def merge_visual(embeds: torch.Tensor, visual: torch.Tensor, image_positions: torch.Tensor) -> torch.Tensor:
    """Put the visual tokens into the placeholder slots, row-major.

    embeds: (B, T, D) text embeddings; visual: (B, N, D); image_positions: (B, T) bool with N True per row, best on
    the CPU (as build_batch makes it): checked and turned into indices there, so the forward pass waits on no
    copy back from the GPU.
    """
    B, N = visual.shape[:2]
    per_row = image_positions.sum(dim=1)
    if image_positions.shape[0] != B or not bool((per_row == N).all()):
        raise ValueError(
            f"image placeholder slots and visual tokens do not match: slots: {int(per_row.sum())}, tokens: {B * N} "
            f"(shape {tuple(visual.shape)}); build the batch with n_visual=model.num_visual_tokens(V)"
        )
    slots = image_positions.flatten().nonzero().squeeze(1).to(embeds.device, non_blocking=True)
    return embeds.flatten(0, 1).index_copy(0, slots, visual.flatten(0, 1).to(embeds.dtype)).view_as(embeds)


def _numel(p: torch.Tensor) -> int:
    # ZeRO-3 leaves partitioned parameters with numel() == 0 and records the full size as ds_numel.
    return getattr(p, "ds_numel", p.numel())


def _group(name: str) -> str:
    """Parameter name -> its row in the startup table."""
    part = name.split(".", 1)[0]
    return f"{part} LoRA" if part in ("vision", "llm") and "lora_" in name else part


class R2GenGPT(nn.Module):
    """Swin encoder (`vision`), projector (`mapper`) and frozen causal LM (`llm`) with its `tokenizer`."""

    def __init__(self, cfg: ModelConfig, vision: nn.Module, llm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        super().__init__()
        self.cfg = cfg
        self.vision = vision
        self.mapper = VisualProjector(vision.num_features, llm.get_input_embeddings().embedding_dim)
        self.llm = llm
        self.tokenizer = tokenizer

    # ------------------------------------------------------------------------------------ inputs

    def num_visual_tokens(self, n_views: int) -> int:
        """Visual tokens per study for images with `n_views` view slots (49, or 49 * n_views for concat)."""
        return num_visual_tokens(self.vision, n_views, self.cfg.view_merge)

    def report_encoder(self, max_views: int) -> ReportEncoder:
        """The text half of a training batch, for the data loader's workers (batches of 1..max_views views)."""
        return ReportEncoder(self.tokenizer, self.cfg, {v: self.num_visual_tokens(v) for v in range(1, max_views + 1)})

    def visual_tokens(self, images: torch.Tensor, view_mask: torch.Tensor) -> torch.Tensor:
        """images (B, V, 3, H, W), view_mask (B, V) bool -> (B, N, hidden) in the LLM's embedding dtype."""
        images = images.to(next(self.vision.parameters()).dtype)
        visual = self.mapper(encode(self.vision, images, view_mask, self.cfg.view_merge))
        return visual.to(self.llm.get_input_embeddings().weight.dtype)

    def input_embeds(
        self, images: torch.Tensor, view_mask: torch.Tensor, input_ids: torch.Tensor, image_positions: torch.Tensor
    ) -> torch.Tensor:
        """Embeddings of input_ids (B, T) with the visual tokens in the image_positions slots -> (B, T, hidden)."""
        embeds = self.llm.get_input_embeddings()(input_ids)
        return merge_visual(embeds, self.visual_tokens(images, view_mask), image_positions)

    # ---------------------------------------------------------------------------- train / generate

    def forward(
        self,
        images: torch.Tensor,
        view_mask: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None,
        image_positions: torch.Tensor,
    ) -> CausalLMOutputWithPast:
        """Tensors as `prompt.build_batch` makes them (plus images / view_mask); `.loss` is the mean token
        cross-entropy over the report tokens and eos, `.logits` is (B, T, vocab). view_mask and image_positions
        may stay on the CPU (no device sync: see `encode`, `merge_visual`); the others go on the model's device."""
        embeds = self.input_embeds(images, view_mask, input_ids, image_positions)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, use_cache=False)

    @torch.no_grad()
    def generate(
        self, images: torch.Tensor, view_mask: torch.Tensor, gen: GenerateConfig, synced_gpus: bool = False
    ) -> list[str]:
        """Beam-search reports for a batch of studies: images (B, V, 3, H, W), view_mask (B, V) -> B strings
        (view_mask best on the CPU, as in `forward`).

        synced_gpus: keep stepping until every rank is done (needed under ZeRO-3, where each forward pass
        gathers weights collectively)."""
        B, V = view_mask.shape
        batch = build_batch(self.tokenizer, None, self.num_visual_tokens(V), self.cfg, batch_size=B)
        embeds = self.input_embeds(images, view_mask, batch["input_ids"].to(images.device), batch["image_positions"])
        # Given inputs_embeds and no input_ids, generate returns only the new tokens, and the repetition
        # penalty sees only those, as in the reference; transformers warns about the latter on every call.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Passing `repetition_penalty` with `inputs_embeds`")
            new_tokens = self._beam_search(embeds, batch["attention_mask"].to(images.device), gen, synced_gpus)
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def _beam_search(
        self, embeds: torch.Tensor, attention_mask: torch.Tensor, gen: GenerateConfig, synced_gpus: bool
    ) -> torch.Tensor:
        """embeds (B, T, hidden) -> new token ids (B, <= max_new_tokens)."""
        return self.llm.generate(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            num_beams=gen.num_beams,
            repetition_penalty=gen.repetition_penalty,
            length_penalty=gen.length_penalty,
            min_new_tokens=gen.min_new_tokens,
            max_new_tokens=gen.max_new_tokens,
            eos_token_id=stop_ids(self.tokenizer, self.llm.generation_config.eos_token_id),
            pad_token_id=pad_id(self.tokenizer),
            do_sample=False,
            use_cache=True,
            synced_gpus=synced_gpus,
        )

    # ------------------------------------------------------------------------------ trainable state

    def to_bf16(self) -> "R2GenGPT":
        """Every weight in bf16 (precision "bf16": DeepSpeed keeps fp32 masters of the trainables) with the LLM's
        buffers left as transformers built them: Llama's rotary `inv_freq` stays fp32, since bf16-rounded
        frequencies rotate positions differently, the more so the further into the sequence. Swin's floating
        buffers (the shifted windows' `attn_mask`) follow its weights: attention wants the mask in the queries'
        dtype. Called before `deepspeed.initialize`, not left to it: under ZeRO-3 the engine casts nothing
        once the LLM is partitioned, and its `buffer_dtype` would cast every buffer. A parameter ZeRO-3 has
        already partitioned (the frozen LLM's, loaded in bf16) is left alone: its data is an empty stub."""
        self.vision.to(torch.bfloat16)
        self.mapper.to(torch.bfloat16)
        with torch.no_grad():
            for p in self.llm.parameters():  # LoRA weights: peft keeps adapters fp32 in a bf16 model
                if not hasattr(p, "ds_id") and p.is_floating_point():
                    p.data = p.data.to(torch.bfloat16)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimizer updates (mode-dependent; the LLM's own weights never)."""
        return [p for p in self.parameters() if p.requires_grad]

    def param_table(self) -> list[tuple[str, int, int]]:
        """(group, n_trainable, n_total) for the groups vision, vision LoRA, mapper, llm, llm LoRA that exist."""
        counts = {g: [0, 0] for g in PARAM_GROUPS}
        for name, p in self.named_parameters():
            row = counts[_group(name)]
            row[0] += _numel(p) if p.requires_grad else 0
            row[1] += _numel(p)
        return [(g, n_train, n_total) for g, (n_train, n_total) in counts.items() if n_total]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable tensors under their module names: the names and shapes of `trainable.safetensors`. (Training
        writes that file from DeepSpeed's fp32 masters, `train.checkpoint.gather_trainable`, not from this, which
        under ZeRO-3 or bf16 would give partitions or bf16 copies.)"""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Load a run's `trainable.safetensors` (or `trainable_state_dict`), strictly: same names and shapes,
        nothing else."""
        params = {name: p for name, p in self.named_parameters() if p.requires_grad}
        mismatch = state_dict_mismatch(params, sd)
        if mismatch:
            raise R2GError(
                f"trainable weights do not fit this model (mode '{self.cfg.mode}', llm_lora {self.cfg.llm_lora}): "
                f"{mismatch}; load them with the run's own r2g_config.json and --llm"
            )
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(sd[name])


def build_model(
    cfg: ModelConfig,
    llm: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    dtype: torch.dtype | None = None,
) -> R2GenGPT:
    """R2GenGPT for `cfg`; the LLM comes from the local folder `cfg.llm` (in `dtype`, None = float32) unless
    given with its tokenizer. The LLM is frozen either way; `cfg.llm_lora` adds trainable LoRA to it, and
    `cfg.grad_ckpt` checkpoints its layers' activations (and Swin's, see vision.enable_grad_ckpt)."""
    if llm is None:
        llm, tokenizer = load_llm(cfg.llm, dtype)
    elif tokenizer is None:
        raise ValueError("build_model: pass the tokenizer together with the llm")
    llm.requires_grad_(False)
    if cfg.grad_ckpt:
        enable_grad_ckpt(llm)
    if cfg.llm_lora:
        llm = add_llm_lora(llm, cfg)
    return R2GenGPT(cfg, build_vision_encoder(cfg), llm, tokenizer)

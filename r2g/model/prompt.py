"""Token layout of one R2GenGPT sample, as the reference builds it:

    [bos] Human: <Img> [visual x N] </Img> {prompt} \\nAssistant: {report} [eos] [pad ...]

Each text piece is tokenized on its own with add_special_tokens=False. `input_ids` holds a placeholder id at the
N visual slots (`image_positions` marks them); the model swaps in the visual embeddings there. Loss (`labels`)
is on the report tokens and the eos only.

Unlike the reference, which appends "</s>" as text, lets truncation cut it off and pads with id 0, the report
is cut to `max_report_tokens - 1` tokens before the eos id is appended (so every target ends with eos, within
budget; `model.keep_eos = False` cuts report + eos together instead, as the reference does), and padding uses the tokenizer's pad id (eos when it has none), masked in attention and labels.
"""

from __future__ import annotations

import functools

import torch
from transformers import PreTrainedTokenizerBase

from r2g.config import ModelConfig
from r2g.errors import R2GError

IGNORE_INDEX = -100  # label value the Hugging Face loss skips
IMAGE_OPEN, IMAGE_CLOSE = "Human: <Img>", "</Img> "


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id used for padding and for the visual placeholders: pad, else eos (Llama-2 has no pad token).
    Its embedding never matters: pads are masked and placeholders are overwritten."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def stop_ids(tokenizer: PreTrainedTokenizerBase, model_eos: int | list[int] | None) -> list[int]:
    """Token ids that end a generated report: the tokenizer's eos (the id every training target ends with)
    and the model's own end ids from its generation_config.json. Instruction-tuned models end a turn with
    another token than the tokenizer's eos (Llama-3-Instruct: <|eot_id|> and <|end_of_text|>; Qwen2-Instruct:
    <|im_end|> and <|endoftext|>), and a frozen LLM keeps writing those."""
    extra = [] if model_eos is None else [model_eos] if isinstance(model_eos, int) else list(model_eos)
    return list(dict.fromkeys([tokenizer.eos_token_id, *extra]))


def text_after_image(prompt: str) -> str:
    """The prompt text between the visual slots and the report: "</Img> {prompt} \\nAssistant:"."""
    return f"{IMAGE_CLOSE}{prompt} \nAssistant:"


@functools.lru_cache(maxsize=8)
def prompt_pieces(tokenizer: PreTrainedTokenizerBase, prompt: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Token ids before and after the visual slots: ([bos] + "Human: <Img>", "</Img> {prompt} \\nAssistant:").
    A tokenizer without a bos token gets none. Cached (hence tuples): the pieces are the same for every sample."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    before = tokenizer(IMAGE_OPEN, add_special_tokens=False)["input_ids"]
    after = tokenizer(text_after_image(prompt), add_special_tokens=False)["input_ids"]
    return tuple(bos + before), tuple(after)


def build_batch(
    tokenizer: PreTrainedTokenizerBase,
    reports: list[str] | None,
    n_visual: int,
    cfg: ModelConfig,
    batch_size: int = 1,
) -> dict[str, torch.Tensor | None]:
    """Model inputs for a batch of studies.

    reports: one target report per study (training / validation loss), or None for generation: then the batch
    is `batch_size` copies of the prompt alone. Every study shares the prompt and the visual-token count, so
    prompt-only rows have equal length and need no (left) padding.
    Returns input_ids (B, T) long, attention_mask (B, T) long, labels (B, T) long or None,
    image_positions (B, T) bool with exactly n_visual True per row.
    """
    before, after = prompt_pieces(tokenizer, cfg.prompt)
    prompt = torch.tensor([*before, *[pad_id(tokenizer)] * n_visual, *after])  # (P,)
    is_image = torch.zeros(len(prompt), dtype=torch.bool)
    is_image[len(before) : len(before) + n_visual] = True

    if reports is None:
        input_ids = prompt.expand(batch_size, -1).clone()
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "labels": None,
            "image_positions": is_image.expand(batch_size, -1).clone(),
        }

    targets = report_targets(tokenizer, reports, cfg.max_report_tokens, cfg.keep_eos)
    B, P, R = len(reports), len(prompt), max(len(t) for t in targets)
    input_ids = torch.full((B, P + R), pad_id(tokenizer))
    attention_mask = torch.zeros(B, P + R, dtype=torch.long)
    labels = torch.full((B, P + R), IGNORE_INDEX)
    input_ids[:, :P] = prompt
    attention_mask[:, :P] = 1
    for i, target in enumerate(targets):  # right padding: row i is real up to P + len(target)
        input_ids[i, P : P + len(target)] = torch.tensor(target)
        attention_mask[i, P : P + len(target)] = 1
        labels[i, P : P + len(target)] = torch.tensor(target)
    image_positions = torch.zeros(B, P + R, dtype=torch.bool)
    image_positions[:, :P] = is_image
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "image_positions": image_positions,
    }


class ReportEncoder:
    """`build_batch` for the data loader: (reports, views per study) -> the text tensors of a training batch.

    The loader's worker processes call it while the GPU runs the previous step, so tokenizing stays off the
    training step. `visual_tokens` maps a batch's view-slot count to the study's visual-token count
    (`R2GenGPT.num_visual_tokens`), which depends on the view merge.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, cfg: ModelConfig, visual_tokens: dict[int, int]):
        self.tokenizer, self.cfg, self.visual_tokens = tokenizer, cfg, visual_tokens

    def __call__(self, reports: list[str], n_views: int) -> dict[str, torch.Tensor]:
        return build_batch(self.tokenizer, reports, self.visual_tokens[n_views], self.cfg)


def report_targets(tokenizer: PreTrainedTokenizerBase, reports: list[str], max_report_tokens: int,
                   keep_eos: bool = True) -> list[list[int]]:
    """Report token ids + eos within `max_report_tokens`. keep_eos: the report is cut to `max_report_tokens - 1`
    tokens, so every target ends with eos; otherwise report + eos are cut together, as the reference's
    `truncation=True, max_length=...` does, and an over-long report ends without eos (`--no-keep-eos`)."""
    if max_report_tokens < 2:
        raise R2GError(f"model.max_report_tokens is {max_report_tokens}; it counts the eos, so it must be >= 2")
    ids = tokenizer(list(reports), add_special_tokens=False)["input_ids"]
    if not keep_eos:
        return [(t + [tokenizer.eos_token_id])[:max_report_tokens] for t in ids]
    return [t[: max_report_tokens - 1] + [tokenizer.eos_token_id] for t in ids]

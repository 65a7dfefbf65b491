"""A small pretrained language model for the demo, trained from scratch on report text in a few CPU minutes.

R2GenGPT keeps its LLM frozen, and a frozen random LM cannot write, so the demo first trains this one: a
byte-level BPE tokenizer and a 4-layer Llama on the training reports. Both are saved with `save_pretrained`,
so the folder loads through `load_llm` exactly like Llama-2-7B.

A large LLM can read what a mapper puts between its `<Img>` tags because it reads almost anything; a
4-layer model trained on reports alone has no reason to look there. So the demo trains it on documents in
the prompt's own layout (`prompt_document`), whose visual slots hold a note of finding words
(`finding_note`) taken from the report's labels: the model learns to write the report the note describes,
and the mapper then has to learn to write that note from the image. Measured in bench/RESULTS.md.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from r2g.errors import R2GError
from r2g.labels import CHEXPERT_LABELS
from r2g.model.prompt import IMAGE_OPEN, text_after_image

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"

# One report word per CheXpert observation, for the finding note; "normal" fills the slots that show none.
NOTE_WORDS = {
    "Enlarged Cardiomediastinum": "mediastinum", "Cardiomegaly": "cardiomegaly", "Lung Opacity": "opacity",
    "Lung Lesion": "nodule", "Edema": "edema", "Consolidation": "consolidation", "Pneumonia": "pneumonia",
    "Atelectasis": "atelectasis", "Pneumothorax": "pneumothorax", "Pleural Effusion": "effusion",
    "Pleural Other": "thickening", "Fracture": "fracture", "Support Devices": "device",
}
NORMAL_WORD = "normal"


def finding_note(labels: dict[str, int | None], n_slots: int, rng: random.Random) -> str:
    """`n_slots` words, one per visual slot, as a per-region reading of the image would give: every
    positive or uncertain observation in at least one slot, each other slot `normal` or (half the time) one
    of the findings again, at random places; all `normal` when there is none. labels: CheXpert label -> 1,
    0, -1 or None, as the labeler gives them."""
    findings = [NOTE_WORDS[name] for name in CHEXPERT_LABELS if name in NOTE_WORDS and labels.get(name) in (1, -1)]
    if len(findings) > n_slots:
        raise R2GError(f"finding note: {len(findings)} findings do not fit {n_slots} slots")
    slots = [rng.choice(findings) if findings and rng.random() < 0.5 else NORMAL_WORD for _ in range(n_slots)]
    for position, word in zip(rng.sample(range(n_slots), len(findings)), findings):
        slots[position] = word
    return " ".join(slots)


def prompt_document(note: str, report: str, prompt: str) -> str:
    """One training document in R2GenGPT's prompt layout (`prompt.build_batch`), the note in the visual slots."""
    return f"{IMAGE_OPEN}{note}{text_after_image(prompt)}{report}"


def train_tokenizer(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (any text encodes, decoding round-trips) with Llama's special tokens; like Llama's
    tokenizer it prepends <s> unless add_special_tokens=False."""
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK)


def pack(tokenizer: PreTrainedTokenizerFast, corpus: list[str], seq_len: int) -> torch.Tensor:
    """All reports as one stream `<s> report </s> <s> report </s> ...`, cut into rows: (n_rows, seq_len)."""
    ids = tokenizer(corpus, add_special_tokens=False)["input_ids"]
    stream = [t for report in ids for t in [tokenizer.bos_token_id, *report, tokenizer.eos_token_id]]
    n_rows = len(stream) // seq_len
    if n_rows < 2:
        raise R2GError(f"tiny LM: the corpus gives {len(stream)} tokens, fewer than 2 x seq_len ({seq_len}); "
                       "use more reports or a shorter seq_len")
    return torch.tensor(stream[: n_rows * seq_len]).view(n_rows, seq_len)


@torch.no_grad()
def mean_loss(model: LlamaForCausalLM, rows: torch.Tensor, batch_size: int) -> float:
    """Mean next-token cross-entropy over rows (n, seq_len), in eval mode."""
    model.eval()
    losses = [model(input_ids=x, labels=x).loss.item() for x in rows.split(batch_size)]
    model.train()
    return sum(losses) / len(losses)


def lr_at(step: int, steps: int, lr: float) -> float:
    """Linear warmup over the first 10% of steps, then cosine decay to lr / 10."""
    warmup = max(1, steps // 10)
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def train_tiny_lm(
    corpus: list[str],
    out_dir: str | Path,
    vocab_size: int = 2000,
    hidden: int = 256,
    layers: int = 4,
    heads: int = 4,
    steps: int = 200,
    seq_len: int = 128,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train tokenizer + Llama on `corpus` (report strings) and save both to `out_dir`.

    Rows of packed reports are sampled at random; 5% of the rows (at least one) are held out to measure the
    loss before and after training. Deterministic for a given seed (on one machine / thread count).
    Returns {"loss_init", "loss_final", "ppl_init", "ppl_final", "losses" (train loss every 10 steps),
    "seconds", "params", "tokens", "vocab_size"}.
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(corpus, vocab_size)
    rows = pack(tokenizer, corpus, seq_len)
    n_held = max(1, len(rows) // 20)
    held_out, train_rows = rows[:n_held], rows[n_held:]

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=32 * math.ceil(hidden * 8 / 3 / 32),  # Llama's 8/3 ratio, rounded up to 32
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=1024,  # R2GenGPT prompts (text + 49 visual tokens + report) stay below this
        tie_word_embeddings=True,  # halves the parameters of a model this small
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    generator = torch.Generator().manual_seed(seed)

    loss_init = mean_loss(model, held_out, batch_size)
    losses = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        x = train_rows[torch.randint(len(train_rows), (batch_size,), generator=generator)]
        loss = model(input_ids=x, labels=x).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 10 == 0 or step == steps - 1:
            losses.append(round(loss.item(), 4))
            if log:
                log(f"tiny LM step {step + 1}/{steps}: loss {loss.item():.3f}")
    loss_final = mean_loss(model, held_out, batch_size)

    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {
        "loss_init": loss_init,
        "loss_final": loss_final,
        "ppl_init": math.exp(loss_init),
        "ppl_final": math.exp(loss_final),
        "losses": losses,
        "seconds": time.perf_counter() - start,
        "params": sum(p.numel() for p in model.parameters()),
        "tokens": rows.numel(),
        "vocab_size": len(tokenizer),
    }

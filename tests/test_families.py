"""LLM families other than Llama-2, as tiny random-init local folders with tokenizers built here: Llama-3
(grouped-query attention, a 128,256-row embedding, its special tokens at Llama-3's own ids), Qwen2 (bias in
q/k/v, no bos token) and Mistral (SentencePiece-style word prefix), base and instruction-tuned variants.

Token-level checks per family (prompt ids, labels, eos, truncation, the ids that end generation, LoRA
targets), then train -> checkpoint -> `r2g eval` -> `r2g generate` through the real commands."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from r2g.config import PROMPT, GenerateConfig
from r2g.errors import R2GError
from r2g.model.llm import load_llm, lora_targets
from r2g.model.prompt import IGNORE_INDEX, IMAGE_OPEN, build_batch, pad_id, text_after_image
from r2g.model.r2gen import build_model

from .test_eval import r2g
from .test_model import images, micro_cfg
from .test_train import losses, train


@dataclass(frozen=True)
class Family:
    """What a tiny stand-in for one public LLM family needs to be like the real one."""

    config: type  # transformers config class
    specials: dict[str, int | None]  # special token -> its id in the real tokenizer (None: right after the BPE vocab)
    bos: str | None
    eos: str  # the tokenizer's eos (tokenizer_config.json)
    pad: str | None
    model_eos: tuple[str, ...]  # generation_config.json's eos_token_id
    vocab_size: int | None = None  # embedding rows; None = the tokenizer's size
    metaspace: bool = False  # SentencePiece-style "▁" word prefix (Llama-2, Mistral) instead of byte-level BPE
    config_kwargs: dict = field(default_factory=dict)


LLAMA3_SPECIALS = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|eot_id|>": 128009}
QWEN2_SPECIALS = {"<|endoftext|>": None, "<|im_start|>": None, "<|im_end|>": None}
FAMILIES = {
    "llama3": Family(LlamaConfig, LLAMA3_SPECIALS, "<|begin_of_text|>", "<|end_of_text|>", None, ("<|end_of_text|>",),
                     vocab_size=128256, config_kwargs={"num_key_value_heads": 1, "rope_theta": 500000.0}),
    "llama3-instruct": Family(LlamaConfig, LLAMA3_SPECIALS, "<|begin_of_text|>", "<|eot_id|>", None,
                              ("<|end_of_text|>", "<|eot_id|>"), vocab_size=128256,
                              config_kwargs={"num_key_value_heads": 1, "rope_theta": 500000.0}),
    "qwen2": Family(Qwen2Config, QWEN2_SPECIALS, None, "<|endoftext|>", "<|endoftext|>", ("<|endoftext|>",),
                    config_kwargs={"num_key_value_heads": 2}),
    "qwen2-instruct": Family(Qwen2Config, QWEN2_SPECIALS, None, "<|im_end|>", "<|endoftext|>",
                             ("<|im_end|>", "<|endoftext|>"), config_kwargs={"num_key_value_heads": 2}),
    "mistral": Family(MistralConfig, {"<unk>": None, "<s>": None, "</s>": None}, "<s>", "</s>", None, ("</s>",),
                      metaspace=True, config_kwargs={"num_key_value_heads": 2, "sliding_window": 64}),
}
LAYERS = 2
REPORTS = [
    "the heart normal-sized .",
    "the heart is normal in size . the lungs are clear . no pleural effusion or pneumothorax . no acute "
    "cardiopulmonary process . mild cardiomegaly . small left "
    "pleural effusion .",
]
# Everything the tests tokenize: a Metaspace BPE without byte fallback knows only the characters it saw.
CORPUS = REPORTS + [PROMPT, IMAGE_OPEN + text_after_image(PROMPT)] + [
    text for i in range(40)
    for text in (f"study {i} . the heart normal-sized .", f"Study {i}. The Heart: normal-sized.")
]


def family_tokenizer(fam: Family) -> PreTrainedTokenizerFast:
    """A BPE trained on CORPUS with the family's special tokens, at the real tokenizer's ids where given."""
    fixed = {token: i for token, i in fam.specials.items() if i is not None}
    unk = "<unk>" if "<unk>" in fam.specials else None
    tok = Tokenizer(models.BPE(unk_token=unk))
    if fam.metaspace:
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    else:
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=[t for t in fam.specials if t not in fixed], show_progress=False,
        initial_alphabet=[] if fam.metaspace else pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    spec = json.loads(tok.to_str())
    for token, i in fixed.items():  # e.g. Llama-3's specials at 128000+, far above this small vocabulary
        spec["model"]["vocab"][token] = i
        spec["added_tokens"].append({"id": i, "content": token, "single_word": False, "lstrip": False,
                                     "rstrip": False, "normalized": False, "special": True})
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token=fam.bos,
                                   eos_token=fam.eos, pad_token=fam.pad, unk_token=unk)


def write_family_llm(folder: Path, fam: Family) -> Path:
    """A random-init causal LM of the family (hidden 16, so even a 128k embedding stays small) + its tokenizer,
    saved as a local HF folder as the real checkpoints are (config.json, generation_config.json, tokenizer)."""
    tokenizer = family_tokenizer(fam)
    ids = tokenizer.convert_tokens_to_ids
    config = fam.config(
        vocab_size=fam.vocab_size or len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=LAYERS,
        num_attention_heads=4, max_position_embeddings=256, initializer_range=0.3, tie_word_embeddings=False,
        bos_token_id=ids(fam.bos) if fam.bos else None, eos_token_id=ids(fam.eos),
        pad_token_id=ids(fam.pad) if fam.pad else None, **fam.config_kwargs,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=[ids(t) for t in fam.model_eos], pad_token_id=config.pad_token_id
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def family_llm(tmp_path_factory):
    """name -> (folder, frozen LLM, tokenizer), each family written and loaded once per module."""
    built = {}

    def get(name: str):
        if name not in built:
            folder = write_family_llm(tmp_path_factory.mktemp(name) / "llm", FAMILIES[name])
            built[name] = (folder, *load_llm(folder))
        return built[name]

    return get


# ----------------------------------------------------------------------------------------- token ids


@pytest.mark.parametrize("name", FAMILIES)
def test_prompt_labels_and_eos_are_the_familys_own_token_ids(family_llm, name):
    fam = FAMILIES[name]
    _, llm, tok = family_llm(name)
    ids = tok.convert_tokens_to_ids
    assert tok.bos_token_id == (ids(fam.bos) if fam.bos else None) and tok.eos_token_id == ids(fam.eos)
    if name.startswith("llama3"):  # Llama-3's own ids, inside its 128,256-row embedding
        assert (tok.bos_token_id, tok.eos_token_id) == (128000, 128009 if name.endswith("instruct") else 128001)
        assert llm.get_input_embeddings().num_embeddings == 128256
        assert llm.config.num_key_value_heads < llm.config.num_attention_heads  # grouped-query attention
    pad = ids(fam.pad) if fam.pad else tok.eos_token_id  # no pad token: eos pads, masked out
    assert pad_id(tok) == pad

    cfg = micro_cfg()
    short, long = REPORTS
    batch = build_batch(tok, [short, long], n_visual=3, cfg=cfg)
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    bos = [tok.bos_token_id] if fam.bos else []  # Qwen2 has none: the prompt starts with "Human"
    prompt = bos + enc(IMAGE_OPEN) + [pad] * 3 + enc(text_after_image(cfg.prompt))
    short_ids = enc(short) + [tok.eos_token_id]
    long_ids = enc(long)[: cfg.max_report_tokens - 1] + [tok.eos_token_id]  # cut, eos kept, within budget
    assert len(short_ids) < len(long_ids) == cfg.max_report_tokens < len(enc(long)) + 1
    n_pad, P = len(long_ids) - len(short_ids), len(prompt)
    assert batch["input_ids"].tolist() == [prompt + short_ids + [pad] * n_pad, prompt + long_ids]
    assert batch["labels"].tolist() == [[IGNORE_INDEX] * P + short_ids + [IGNORE_INDEX] * n_pad,
                                        [IGNORE_INDEX] * P + long_ids]
    assert batch["attention_mask"].tolist() == [[1] * (P + len(short_ids)) + [0] * n_pad, [1] * (P + len(long_ids))]
    specials = set(ids(list(fam.specials)))
    text_ids = enc(IMAGE_OPEN) + enc(text_after_image(cfg.prompt)) + enc(short)
    assert not specials & set(text_ids)  # the only special ids are bos, the eos and the pads / placeholders
    assert tok.decode(short_ids, skip_special_tokens=True).strip() == short  # the report round-trips
    assert int(batch["input_ids"].max()) < llm.get_input_embeddings().num_embeddings


@pytest.mark.parametrize("name", FAMILIES)
def test_generation_ends_at_each_of_the_models_end_tokens(family_llm, name):
    """A report ends at the tokenizer's eos and at the model's own end ids (generation_config.json): an
    instruction-tuned Llama-3 ends its turns with <|eot_id|> or <|end_of_text|>, Qwen2 with <|im_end|> or
    <|endoftext|>. The LLM is rigged so its first new token is a chosen one, then visible text: the report is
    empty exactly when that token ends generation."""
    fam = FAMILIES[name]
    _, llm, tok = family_llm(name)
    ends = [tok.convert_tokens_to_ids(t) for t in dict.fromkeys((fam.eos, *fam.model_eos))]
    others = [i for i in tok.convert_tokens_to_ids(list(fam.specials)) if i not in ends]
    model = build_model(micro_cfg(), llm=llm, tokenizer=tok).eval()
    gen = GenerateConfig(num_beams=1, min_new_tokens=0, max_new_tokens=4, repetition_penalty=1.0)
    x, mask = images(B=1, V=1)
    last_prompt_id = tok(text_after_image(PROMPT), add_special_tokens=False)["input_ids"][-1]
    visible = tok("heart", add_special_tokens=False)["input_ids"][0]
    for first in [*ends, *others]:
        with rigged_to_emit(llm, first, last_prompt_id, visible):
            report = model.generate(x, mask, gen)[0]
        assert (report == "") == (first in ends), (tok.convert_ids_to_tokens(first), report)


class rigged_to_emit:
    """Within the block, the LLM's residual stream is its input embedding (attention and MLP outputs zeroed)
    and the final norm keeps only dimension 0, whose sign the embeddings set: after the last prompt token
    (+1) the top logit is `first`, after `first` (-1) it is `visible`. The weights are restored afterwards."""

    def __init__(self, llm, first: int, last_prompt_id: int, visible: int):
        self.llm, self.first, self.last_prompt_id, self.visible = llm, first, last_prompt_id, visible

    def __enter__(self):
        self.saved = {k: v.clone() for k, v in self.llm.state_dict().items()}
        base = self.llm.model
        with torch.no_grad():
            for layer in base.layers:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
            base.norm.weight.zero_()
            base.norm.weight[0] = 1.0
            emb, head = base.embed_tokens.weight, self.llm.lm_head.weight
            emb[self.last_prompt_id, 0], emb[self.first, 0] = 1.0, -1.0
            head.zero_()
            head[self.first, 0], head[self.visible, 0] = 10.0, -5.0

    def __exit__(self, *exc):
        self.llm.load_state_dict(self.saved)


@pytest.mark.parametrize("name", ["llama3-instruct", "qwen2-instruct", "mistral"])
def test_llm_lora_adapts_the_familys_query_and_value_projections(family_llm, name):
    llm, tok = load_llm(family_llm(name)[0])  # a fresh copy: peft adapts the model it wraps in place
    assert lora_targets(llm) == ["q_proj", "v_proj"]
    model = build_model(micro_cfg(mode="shallow", llm_lora=True), llm=llm, tokenizer=tok)
    adapted = sorted(n.removesuffix(".lora_A.default.weight") for n, _ in model.named_parameters()
                     if n.endswith("lora_A.default.weight"))
    assert adapted == [f"llm.base_model.model.model.layers.{i}.self_attn.{p}" for i in range(LAYERS)
                       for p in ("q_proj", "v_proj")]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith("mapper.") or ".lora_" in n}
    if name.startswith("qwen2"):  # the adapted projections keep their bias, frozen
        q_bias = dict(model.named_parameters())["llm.base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias"]
        assert not q_bias.requires_grad
    x, mask = images(V=1)
    model(x, mask, **build_batch(tok, REPORTS, model.num_visual_tokens(1), model.cfg)).loss.backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == trainable


def test_llm_lora_names_a_family_peft_has_no_targets_for():
    unknown = SimpleNamespace(config=SimpleNamespace(model_type="r2g-test-lm"))
    with pytest.raises(R2GError, match="no LoRA target modules for model_type 'r2g-test-lm'.*without --llm-lora"):
        lora_targets(unknown)


# --------------------------------------------------------------------------------- train -> eval -> generate

# Each family once under ZeRO-2 and Llama-3 (its 128k embedding partitioned) under ZeRO-3, spread over the modes,
# LLM LoRA and activation checkpointing; Qwen2 trains under ZeRO-3 on 2 ranks in the --grad-ckpt test below.
E2E = [
    pytest.param("llama3-instruct", "zero2", ("--mode", "shallow", "--llm-lora"), id="llama3-instruct-zero2"),
    pytest.param("qwen2-instruct", "zero2", ("--mode", "delta", "--grad-ckpt"), id="qwen2-instruct-zero2"),
    pytest.param("mistral", "zero2", ("--mode", "deep", "--llm-lora", "--grad-ckpt"), id="mistral-zero2"),
    pytest.param("llama3", "zero3", ("--mode", "delta", "--llm-lora"), id="llama3-zero3"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, stage, flags", E2E)
def test_train_checkpoint_eval_generate(assets, family_llm, tmp_path, name, stage, flags):
    fam, folder = FAMILIES[name], family_llm(name)[0]
    out = tmp_path / "run"
    train(assets, out, "--llm", str(folder), "--ds", f"ds_configs/{stage}.json", "--max-steps", "2",
          "--val-samples", "-1", "--micro-batch", "2", *flags)
    llm_weights = {n for n in load_file(out / "trainable.safetensors") if n.startswith("llm.")}
    expected = {f"llm.base_model.model.model.layers.{i}.self_attn.{p}.lora_{ab}.default.weight"
                for i in range(LAYERS) for p in ("q_proj", "v_proj") for ab in "AB"}
    assert llm_weights == (expected if "--llm-lora" in flags else set())

    # ZeRO-3 runs are read back from their partitioned checkpoint, ZeRO-2 runs from the exported weights.
    checkpoint = ("--checkpoint", "latest") if stage == "zero3" else ()
    r = r2g("eval", "--ckpt", str(out), "--shards", str(assets / "shards"), "--split", "test", "--out",
            str(tmp_path / "eval"), "--no-meteor", "--workers", "1", "--num-beams", "2", "--min-new-tokens", "1",
            "--max-new-tokens", "6", *checkpoint)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == ["s0030", "s0031", "s0032", "s0033"]
    assert not [row for row in rows for token in fam.specials if token in row["prediction"]]

    image = assets / "raw" / "images" / "s0001" / "0.png"
    r = r2g("generate", "--ckpt", str(out), str(image), "--out", str(tmp_path / "reports.jsonl"),
            "--num-beams", "2", "--min-new-tokens", "1", "--max-new-tokens", "5")
    assert r.returncode == 0, r.stdout + r.stderr
    [row] = [json.loads(line) for line in (tmp_path / "reports.jsonl").read_text().splitlines()]
    assert row["images"] == [str(image)] and isinstance(row["report"], str)


@pytest.mark.slow
def test_grad_ckpt_under_zero3_on_two_ranks_trains_as_without(assets, family_llm, tmp_path):
    """Activation checkpointing recomputes through ZeRO-3's partitioned weights on 2 ranks: Swin LoRA, LLM LoRA
    on Qwen2's biased projections and the mapper get the same gradients, so every later loss is the same."""
    common = ("--llm", str(family_llm("qwen2")[0]), "--ds", "ds_configs/zero3.json", "--mode", "delta",
              "--llm-lora", "--lr", "1e-2", "--max-steps", "3", "--val-samples", "-1", "--micro-batch", "2")
    train(assets, tmp_path / "plain", *common, procs=2)
    train(assets, tmp_path / "ckpt", *common, "--grad-ckpt", procs=2)
    plain, ckpt = losses(tmp_path / "plain"), losses(tmp_path / "ckpt")
    assert sorted(plain) == sorted(ckpt) == [1, 2, 3] and plain[3] != plain[1]
    for step in plain:
        assert ckpt[step] == pytest.approx(plain[step], rel=1e-5), step

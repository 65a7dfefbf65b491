"""Model package tests: tiny random models built from configs (nothing downloaded), real shapes on meta."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    SwinConfig,
    SwinModel,
)

from bench.memory import saved_tensor_bytes
from r2g.config import PROMPT, GenerateConfig, ModelConfig
from r2g.demo.tiny_lm import train_tokenizer
from r2g.demo.toys import TINY_VISION_KWARGS
from r2g.errors import R2GError
from r2g.model.flops import FlopCounts, mfu, peak_flops, train_flops_per_sample, vision_forward_flops
from r2g.model.llm import config_hash, load_llm
from r2g.model.prompt import IGNORE_INDEX, build_batch, prompt_pieces
from r2g.model.r2gen import build_model, merge_visual
from r2g.model.vision import QVLoRA, build_vision_encoder, encode


REPORTS = [
    "the heart is normal in size . the lungs are clear .",
    "no pleural effusion or pneumothorax . no acute cardiopulmonary process .",
    "mild cardiomegaly . small left pleural effusion .",
    "the lungs are hyperexpanded . no focal consolidation .",
]
SWIN = "swin_tiny_patch4_window7_224"
GEN = GenerateConfig(num_beams=2, min_new_tokens=2, max_new_tokens=6)


@pytest.fixture(scope="module")
def tokenizer():
    # The prompt is in the corpus so that it takes few tokens and the sequences stay short.
    return train_tokenizer(REPORTS + [PROMPT, "Human: <Img></Img> \nAssistant:"], vocab_size=1000)


def tiny_llama(tokenizer, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, initializer_range=0.2,  # larger than usual so a frozen random LM reacts to its inputs
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def micro_cfg(**changes):
    return ModelConfig(vision_arch=SWIN, vision_kwargs=TINY_VISION_KWARGS, max_report_tokens=12, **changes)


def images(B=2, V=2):
    torch.manual_seed(1)
    return torch.randn(B, V, 3, 64, 64), torch.tensor([[True, True], [True, False]])[:B, :V]


# ------------------------------------------------------------------------------------------ vision


def test_qvlora_starts_as_identity_and_adapts_only_q_and_v():
    torch.manual_seed(0)
    base = nn.Linear(8, 24)
    lora = QVLoRA(base, r=4, alpha=8, dropout=0.0)
    x = torch.randn(5, 8)
    assert torch.equal(lora(x), base(x))
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable == {"lora_q_A", "lora_q_B", "lora_v_A", "lora_v_B"}
    with torch.no_grad():
        lora.lora_q_B.fill_(1.0)
        lora.lora_v_B.fill_(1.0)
    out, ref = lora(x), base(x)
    assert torch.equal(out[:, 8:16], ref[:, 8:16])  # k untouched
    assert not torch.allclose(out[:, :8], ref[:, :8]) and not torch.allclose(out[:, 16:], ref[:, 16:])


def swin_b_model(mode, **changes):
    """R2GenGPT with Swin-B and a Llama-2-7B-shaped LLM on the meta device (no memory)."""
    with torch.device("meta"):
        llm = LlamaForCausalLM(LlamaConfig(
            hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32000
        ))
        return build_model(ModelConfig(mode=mode, **changes), llm=llm, tokenizer=object())


def test_trainable_parameter_counts_match_the_paper():
    modes = ("shallow", "delta", "deep")
    n = {mode: sum(p.numel() for p in swin_b_model(mode).trainable_parameters()) for mode in modes}
    assert n["shallow"] == 4_206_592  # 4.2M: Linear(1024 -> 4096) + LayerNorm(4096)
    assert n["delta"] == 4_976_640  # 5.0M: + 770,048 q/v LoRA (r = 16)
    assert round(n["deep"] / 1e6, 1) == 90.9
    table = dict((g, (t, total)) for g, t, total in swin_b_model("delta").param_table())
    assert table["vision LoRA"] == (770_048, 770_048) and table["llm"][0] == 0


def save_hf_swin(tmp_path, old_names: bool):
    """A random HF SwinModel with the micro dims (and shifted windows) saved as SwinForImageClassification would
    be: hub layout (attention.self.query, ...) when old_names, else transformers 5's names."""
    torch.manual_seed(0)
    config = SwinConfig(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], image_size=64, window_size=2)
    hf = SwinModel(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)  # norms and biases too, so a misplaced tensor shows
    renames = [("attention.q_proj", "attention.self.query"), ("attention.k_proj", "attention.self.key"),
               ("attention.v_proj", "attention.self.value"), ("attention.o_proj", "attention.output.dense"),
               ("attention.relative_position_bias.", "attention.self."), ("mlp.fc1", "intermediate.dense"),
               ("mlp.fc2", "output.dense")]
    sd = {}
    for key, value in hf.state_dict().items():
        for new, old in renames if old_names else []:
            key = key.replace(new, old)
        sd[f"swin.{key}"] = value.contiguous()
        if old_names and key.endswith("relative_position_bias_table"):  # a persistent buffer in old checkpoints
            sd[f"swin.{key.replace('bias_table', 'index')}"] = torch.zeros(4, 4, dtype=torch.long)
    sd["classifier.weight"] = torch.zeros(3, 256)
    save_file(sd, tmp_path / "model.safetensors")
    return hf


@pytest.mark.parametrize("old_names", [True, False])
def test_hf_swin_weights_give_identical_features(tmp_path, old_names):
    hf = save_hf_swin(tmp_path, old_names)
    kwargs = {**TINY_VISION_KWARGS, "depths": (2, 2, 2, 2)}  # 2 blocks per stage: the second uses shifted windows
    cfg = ModelConfig(vision_arch=SWIN, vision_kwargs=kwargs, vision_weights=str(tmp_path))
    encoder = build_vision_encoder(cfg).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = hf(pixel_values=x).last_hidden_state
    torch.testing.assert_close(encoder.forward_features(x).flatten(1, 2), expected, atol=1e-5, rtol=1e-5)


def test_timm_weights_load_and_bad_weights_fail_clearly(tmp_path):
    torch.manual_seed(0)
    source = build_vision_encoder(micro_cfg(mode="deep"))
    torch.save({"state_dict": source.state_dict()}, tmp_path / "swin.pth")
    loaded = build_vision_encoder(micro_cfg(vision_weights=str(tmp_path / "swin.pth"), mode="deep"))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.state_dict().values()))

    partial = {k: v for k, v in source.state_dict().items() if k != "norm.weight"}
    save_file(partial, tmp_path / "partial.safetensors")
    save_file({"visual.conv1.weight": torch.zeros(1)}, tmp_path / "other.safetensors")
    for name, message in [("missing.pth", "not found"), ("partial.safetensors", "norm.weight"),
                          ("other.safetensors", "unrecognised layout")]:
        with pytest.raises(R2GError, match=message):
            build_vision_encoder(micro_cfg(vision_weights=str(tmp_path / name)))


def test_a_random_swin_is_the_same_whatever_the_rng_state():
    """--vision-weights none: the frozen random Swin is not saved with the run, so every rebuild (eval, generate,
    a ZeRO-3 load whose LLM init draws differently) must draw the same one, leaving the caller's RNG alone.
    (Shallow: delta's LoRA is initialised from the caller's RNG, and saved with the run.)"""
    torch.manual_seed(1)
    first = build_vision_encoder(micro_cfg(vision_weights="none", mode="shallow"))
    next_draw = torch.rand(3)
    torch.manual_seed(2)
    second = build_vision_encoder(micro_cfg(vision_weights="none", mode="shallow"))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), next_draw)  # building it drew nothing from the global generator


def test_encode_merges_views():
    encoder = build_vision_encoder(micro_cfg()).eval()
    x, mask = images()
    x[1, 1] = float("nan")  # a padded view must never be looked at
    single = encoder.forward_features(x[1, :1]).flatten(1, 2)  # (1, 4, 256)
    both = encoder.forward_features(x[0]).flatten(1, 2)  # (2, 4, 256)
    with torch.no_grad():
        mean = encode(encoder, x, mask, "mean")
        concat = encode(encoder, x, mask, "concat")
    assert mean.shape == (2, 4, 256) and concat.shape == (2, 8, 256)
    torch.testing.assert_close(mean[0], both.mean(0))
    torch.testing.assert_close(mean[1], single[0])
    torch.testing.assert_close(concat[0], both.flatten(0, 1))
    torch.testing.assert_close(concat[1], single[0].repeat(2, 1))  # a one-view study repeats its view


# ------------------------------------------------------------------------------------------ prompt


def test_batch_layout_truncation_and_padding(tokenizer):
    cfg = micro_cfg()
    short_report, long_report = "mild cardiomegaly .", " ".join(REPORTS)
    batch = build_batch(tokenizer, [short_report, long_report], n_visual=3, cfg=cfg)
    before, after = map(list, prompt_pieces(tokenizer, cfg.prompt))
    enc = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert before == [tokenizer.bos_token_id] + enc("Human: <Img>")
    assert after == enc(f"</Img> {cfg.prompt} \nAssistant:")
    pad, eos, P = tokenizer.pad_token_id, tokenizer.eos_token_id, len(before) + 3 + len(after)

    short = enc(short_report) + [eos]
    long = enc(long_report)[: cfg.max_report_tokens - 1] + [eos]  # cut, eos kept, within budget
    assert len(short) < len(long) == cfg.max_report_tokens
    n_pad = len(long) - len(short)
    assert batch["input_ids"].tolist() == [
        before + [pad] * 3 + after + short + [pad] * n_pad,
        before + [pad] * 3 + after + long,
    ]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX] * P + short + [IGNORE_INDEX] * n_pad,
        [IGNORE_INDEX] * P + long,
    ]
    assert batch["attention_mask"].tolist() == [[1] * (P + len(short)) + [0] * n_pad, [1] * (P + len(long))]
    image_row = [False] * len(before) + [True] * 3 + [False] * (len(after) + len(long))
    assert batch["image_positions"].tolist() == [image_row] * 2

    prompt_only = build_batch(tokenizer, None, n_visual=3, cfg=cfg, batch_size=2)
    assert prompt_only["labels"] is None
    assert prompt_only["input_ids"].tolist() == [before + [pad] * 3 + after] * 2
    assert prompt_only["attention_mask"].all()

def test_reference_truncation_cuts_report_and_eos_together(tokenizer):
    """--no-keep-eos (the recipes): an over-long report loses its eos, a short one keeps it."""
    cfg = micro_cfg(keep_eos=False)
    short_report, long_report = "mild cardiomegaly .", " ".join(REPORTS)
    batch = build_batch(tokenizer, [short_report, long_report], n_visual=3, cfg=cfg)
    enc = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos, budget = tokenizer.eos_token_id, cfg.max_report_tokens
    labels = [[t for t in row if t != IGNORE_INDEX] for row in batch["labels"].tolist()]
    assert labels == [enc(short_report) + [eos], enc(long_report)[:budget]]
    assert eos not in labels[1] and len(labels[1]) == budget


def test_batch_without_bos_and_pad_tokens(tokenizer):
    bare = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="</s>")
    batch = build_batch(bare, ["mild cardiomegaly .", REPORTS[1]], n_visual=2, cfg=micro_cfg())
    eos = bare.eos_token_id
    assert batch["input_ids"][0, 0] != tokenizer.bos_token_id  # no bos to add
    padded = batch["attention_mask"][0] == 0
    assert padded.any() and (batch["input_ids"][0][padded] == eos).all()  # eos stands in for pad ...
    assert (batch["labels"][0][padded] == IGNORE_INDEX).all()  # ... but is masked and never a target
    assert (batch["labels"] == eos).sum() == 2  # the real eos of each report is a target


# -------------------------------------------------------------------------------------- R2GenGPT


EXPECTED_TRAINABLE = {
    "shallow": lambda n: n.startswith("mapper."),
    "delta": lambda n: n.startswith("mapper.") or (n.startswith("vision.") and ".lora_" in n),
    "deep": lambda n: n.startswith(("mapper.", "vision.")),
}


@pytest.mark.parametrize("mode", ["shallow", "delta", "deep"])
def test_mode_trains_exactly_its_parameters_and_loss_falls(tokenizer, mode):
    model = build_model(micro_cfg(mode=mode), llm=tiny_llama(tokenizer), tokenizer=tokenizer)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {n for n, _ in model.named_parameters() if EXPECTED_TRAINABLE[mode](n)}
    assert set(model.trainable_state_dict()) == names

    x, mask = images(V=1)
    batch = build_batch(tokenizer, REPORTS[:2], model.num_visual_tokens(1), model.cfg)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        loss = model(x, mask, **batch).loss
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            assert {n for n, p in model.named_parameters() if p.grad is not None} == names
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0]


def test_generate_batched_on_cpu(tokenizer):
    model = build_model(micro_cfg(view_merge="concat"), llm=tiny_llama(tokenizer), tokenizer=tokenizer).eval()
    x, mask = images()
    reports = model.generate(x, mask, GEN)
    assert len(reports) == 2 and all(isinstance(r, str) for r in reports)


@pytest.mark.parametrize("view_merge", ["mean", "concat"])
def test_report_encoder_gives_the_batch_the_model_expects(tokenizer, view_merge):
    """What the training loader's workers build equals what the model would build, for each view count."""
    model = build_model(micro_cfg(view_merge=view_merge), llm=tiny_llama(tokenizer), tokenizer=tokenizer)
    encode = model.report_encoder(max_views=2)
    for n_views in (1, 2):
        got = encode(REPORTS[:2], n_views)
        want = build_batch(tokenizer, REPORTS[:2], model.num_visual_tokens(n_views), model.cfg)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    per_view = model.num_visual_tokens(1)
    assert int(encode(REPORTS[:1], 2)["image_positions"].sum()) == per_view * (2 if view_merge == "concat" else 1)


def test_visual_token_count_must_match_placeholders():
    with pytest.raises(ValueError, match="slots: 5, tokens: 6"):
        merge_visual(torch.zeros(1, 8, 4), torch.ones(2, 3, 4), torch.tensor([[True] * 5 + [False] * 3]))
    with pytest.raises(ValueError, match="slots: 6, tokens: 6"):  # the right total, but not 3 in each row
        merge_visual(torch.zeros(2, 8, 4), torch.ones(2, 3, 4), torch.tensor([[True] * 4 + [False] * 4, [True] * 2 + [False] * 6]))
    embeds = merge_visual(torch.zeros(2, 4, 1), torch.arange(4.0).view(2, 2, 1), torch.tensor([[1, 0, 1, 0], [0, 1, 1, 0]]).bool())
    assert embeds.flatten().tolist() == [0, 0, 1, 0, 0, 2, 3, 0]  # row-major, each row's tokens in its own slots


def test_the_masks_are_read_on_the_cpu_not_from_the_device(tokenizer):
    """view_mask and image_positions are checked and turned into indices where the loader and build_batch make
    them, on the CPU: with the model and its tensor inputs on the meta device (which holds no values, so reading
    one back fails as a GPU->CPU copy would stall) the visual tokens still go into their slots."""
    model = build_model(micro_cfg(), llm=tiny_llama(tokenizer), tokenizer=tokenizer).to("meta")
    x, mask = images()
    batch = build_batch(tokenizer, REPORTS[:2], model.num_visual_tokens(2), micro_cfg())
    embeds = model.input_embeds(x.to("meta"), mask, batch["input_ids"].to("meta"), batch["image_positions"])
    assert embeds.device.type == "meta" and embeds.shape == (*batch["input_ids"].shape, 64)


def test_trainable_state_round_trip_and_strictness(tokenizer):
    model = build_model(micro_cfg(mode="delta"), llm=tiny_llama(tokenizer), tokenizer=tokenizer)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(1.0)
    saved = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    fresh = build_model(micro_cfg(mode="delta"), llm=tiny_llama(tokenizer), tokenizer=tokenizer)
    fresh.load_trainable_state_dict(saved)
    assert all(torch.equal(fresh.trainable_state_dict()[k], v) for k, v in saved.items())

    shallow = build_model(micro_cfg(mode="shallow"), llm=tiny_llama(tokenizer), tokenizer=tokenizer)
    with pytest.raises(R2GError, match="unexpected 16: .'vision.layers.0.blocks.0.attn.qkv.lora_q_A'"):
        shallow.load_trainable_state_dict(saved)


def test_llm_lora_adapts_query_and_value(tokenizer):
    model = build_model(micro_cfg(mode="shallow", llm_lora=True), llm=tiny_llama(tokenizer), tokenizer=tokenizer)
    llm_names = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("llm.")]
    assert llm_names and all("lora_" in n and ("q_proj" in n or "v_proj" in n) for n in llm_names)
    x, mask = images()
    batch = build_batch(tokenizer, REPORTS[:2], model.num_visual_tokens(2), model.cfg)
    assert torch.isfinite(model(x, mask, **batch).loss)


def test_mistral_folder_without_bos_or_pad_loads_trains_and_generates(tmp_path, tokenizer):
    """Another architecture through the same path as Llama-2-7B: a local folder and load_llm."""
    bare = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="</s>")
    torch.manual_seed(0)
    MistralForCausalLM(MistralConfig(
        vocab_size=len(bare), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, eos_token_id=bare.eos_token_id, bos_token_id=None, pad_token_id=None,
    )).save_pretrained(tmp_path)
    bare.save_pretrained(tmp_path)

    llm, tok = load_llm(tmp_path)
    assert tok.bos_token_id is None and tok.pad_token_id is None
    assert not any(p.requires_grad for p in llm.parameters())
    model = build_model(micro_cfg(), llm=llm, tokenizer=tok)
    x, mask = images()
    batch = build_batch(tok, REPORTS[:2], model.num_visual_tokens(2), model.cfg)
    assert torch.isfinite(model(x, mask, **batch).loss)
    assert len(model.eval().generate(x, mask, GEN)) == 2

    assert config_hash(tmp_path) == config_hash(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "transformers_version": "0"}, indent=4))
    assert config_hash(tmp_path) == config_hash(str(tmp_path))  # version / formatting do not matter


def test_load_llm_needs_a_local_folder(tmp_path):
    for path in ["", "meta-llama/Llama-2-7b-chat-hf", str(tmp_path)]:
        with pytest.raises(R2GError, match="--llm must be a local Hugging Face folder"):
            load_llm(path)


# ------------------------------------------------------------------------------ activation checkpointing


@pytest.mark.parametrize("mode, llm_lora", [("shallow", False), ("delta", False), ("deep", False), ("delta", True)])
def test_grad_ckpt_gives_the_same_gradients_and_stores_less(tokenizer, mode, llm_lora):
    """fp32 on CPU, dropout and stochastic depth active: checkpointing recomputes with the same random draws."""
    x, mask = images()
    grads, stored = {}, {}
    for ckpt in (False, True):
        model = build_model(micro_cfg(mode=mode, llm_lora=llm_lora, grad_ckpt=ckpt, lora_dropout=0.3),
                            llm=tiny_llama(tokenizer), tokenizer=tokenizer).train()  # tiny_llama seeds: same init
        torch.manual_seed(2)
        with torch.no_grad():  # LoRA B starts at zero, which would leave LoRA A without a gradient
            for p in model.trainable_parameters():
                p.add_(0.1 * torch.randn_like(p))
        batch = build_batch(tokenizer, REPORTS[:2], model.num_visual_tokens(2), model.cfg)
        torch.manual_seed(1)
        model(x, mask, **batch).loss.backward()
        grads[ckpt] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        with saved_tensor_bytes(model.parameters()) as saved:
            model(x, mask, **batch)
        stored[ckpt] = saved()
    assert grads[True].keys() == grads[False].keys()
    assert any(n.startswith("vision.") for n in grads[True]) == (mode != "shallow")
    assert any(n.startswith("llm.") for n in grads[True]) == llm_lora
    for name, grad in grads[False].items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-5, atol=1e-5, msg=name)
    assert stored[True] < 0.6 * stored[False], stored

# ------------------------------------------------------------------------------------------- flops


def test_flops_formula_on_hand_numbers():
    counts = FlopCounts(llm_matmul_params=1000, llm_layers=2, llm_hidden=8, vision_forward=500,
                        vision_features=4, mode="delta")
    # LLM: 4 * P * T + 12 * L * T^2 * d; vision: 2 F per image; mapper: 6 * C * d per visual token
    expected = 4 * 1000 * 10 + 12 * 2 * 10 * 10 * 8 + 2 * 500 * 2 + 6 * 4 * 8 * 3
    assert train_flops_per_sample(counts, seq_len=10, n_visual=3, n_images=2) == expected
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H100 NVL") == peak_flops("NVIDIA H200 NVL") == 835e12  # not the SXM parts' 989
    assert peak_flops("NVIDIA B200") == 2250e12 and peak_flops("NVIDIA GB200") == 2500e12
    assert peak_flops("NVIDIA GH200 480GB") == 989e12 and peak_flops("NVIDIA L4") is None
    assert peak_flops("cpu") is None and mfu(1e12, None) is None
    assert mfu(494.5e12, peak_flops("NVIDIA H200")) == 0.5


def test_swin_b_forward_flops():
    assert round(vision_forward_flops(ModelConfig()) / 1e9, 1) == 30.9  # Swin-B: 15.4 GMACs per 224 px image
    counts = FlopCounts.from_model(swin_b_model("shallow"))
    # all LLM weights but the input embedding table and the 2 * 32 + 1 RMSNorm vectors
    assert counts.llm_matmul_params == 6_738_415_616 - 32000 * 4096 - 65 * 4096

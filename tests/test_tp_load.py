"""Tensor-parallel loading's pieces in one process: a rank's slice read from a safetensors file (rows, columns in
blocks, whole), and a model built with its parameters on meta but its buffers computed. The 2-rank decode against
one process is tests/test_eval.py's."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from r2g.model import tp_load
from r2g.model.zero3_load import stored_tensors


def test_read_slice_reads_rows_columns_and_whole_tensors(tmp_path, monkeypatch):
    w = torch.arange(7 * 10, dtype=torch.float32).view(7, 10)
    b = torch.arange(6, dtype=torch.bfloat16)
    save_file({"w": w.to(torch.bfloat16), "b": b}, tmp_path / "model.safetensors")
    stored = stored_tensors(tmp_path)
    monkeypatch.setattr(tp_load, "ROWS_PER_READ", 25)  # blocks of 2 rows: the last block is short
    rows, cols, whole, bias = torch.empty(3, 10), torch.empty(7, 4), torch.empty(7, 10), torch.empty(2)
    tp_load.read_slice(stored["w"], 0, 4, rows)
    tp_load.read_slice(stored["w"], 1, 6, cols)
    tp_load.read_slice(stored["w"], None, 0, whole)
    tp_load.read_slice(stored["b"], 0, 3, bias)
    assert torch.equal(rows, w[4:7]) and torch.equal(cols, w[:, 6:10]) and torch.equal(whole, w)
    assert torch.equal(bias, b[3:5].float())


def test_models_built_for_tensor_parallel_loading_hold_no_weights_but_their_buffers():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64)
    with tp_load._parameters_on_meta():
        model = LlamaForCausalLM(config)
    assert all(p.is_meta for p in model.parameters())
    inv_freq = model.model.rotary_emb.inv_freq
    head_dim = 16 // 2  # RoPE's default frequencies, base 10,000
    assert not inv_freq.is_meta and torch.allclose(inv_freq, 1 / 10_000 ** (torch.arange(0, head_dim, 2) / head_dim))
    assert not any(p.is_meta for p in torch.nn.Linear(2, 2).parameters())  # the patch is gone afterwards

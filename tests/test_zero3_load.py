"""ZeRO-3 loading of the LLM (r2g/model/zero3_load.py) in real multi-process worlds on CPU: each rank's
partitions hold exactly its share of the checkpoint, and the partitioned model computes the logits of a plain
load."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from r2g.demo.toys import write_tiny_llm
from r2g.dist import free_port
from r2g.errors import R2GError
from r2g.model.zero3_load import StoredTensor, read_elements, stored_tensors


CORPUS = ["The heart is normal in size. No pleural effusion.", "Mild cardiomegaly. Lungs are clear."] * 20


def _ds(bf16: bool) -> dict:
    return {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}, "bf16": {"enabled": bf16}}


def _same_logits(model, plain, ids) -> bool:
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters())), torch.no_grad():
        return torch.equal(model(ids).logits, plain(ids).logits)


def _worker(rank: int, world: int, port: int, folder: str, bad_folder: str, tied_folder: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    import deepspeed
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    from r2g.dist import close_distributed
    from r2g.model.llm import load_llm

    deepspeed.init_distributed(dist_backend="gloo")
    # The checkpoint is bf16; the fp32 run converts while reading, the bf16 one reads straight into ds_tensor.
    for dtype in (torch.float32, torch.bfloat16):
        plain = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
        hf_ds = HfDeepSpeedConfig(_ds(dtype == torch.bfloat16))  # noqa: F841  (what the training loop keeps alive)
        model, tokenizer = load_llm(folder, dtype)
        expected = dict(plain.named_parameters())
        assert sorted(n for n, _ in model.named_parameters()) == sorted(expected)
        for name, p in model.named_parameters():
            share = -(-p.ds_numel // world)  # DeepSpeed pads each flattened weight to a multiple of the world size
            assert p.numel() == 0 and p.ds_tensor.numel() == share and p.ds_tensor.dtype == dtype, name
            want = expected[name].detach().reshape(-1)[rank * share:(rank + 1) * share]
            assert torch.equal(p.ds_tensor[:want.numel()], want), name
        assert _same_logits(model, plain, torch.tensor([tokenizer.encode(CORPUS[1])]))
        del hf_ds
    # Tied input and output embeddings: the checkpoint holds one tensor for both.
    plain = AutoModelForCausalLM.from_pretrained(tied_folder).eval()
    hf_ds = HfDeepSpeedConfig(_ds(False))  # noqa: F841
    tied, _ = load_llm(tied_folder, torch.float32)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    assert _same_logits(tied, plain, torch.tensor([[1, 5, 7, 9]]))
    with pytest.raises(R2GError, match=r"model\.embed_tokens\.weight is stored with shape \[\d+, 32\].*wants \[\d+, 48\]"):
        load_llm(bad_folder, torch.float32)
    close_distributed()  # else gloo's threads can abort the worker at exit


@pytest.fixture(scope="module")
def llm_folders(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(a bf16 checkpoint in several shards with an index, one whose config wants another hidden size, one with
    tied embeddings), written once for every world size."""
    from transformers import AutoConfig, AutoModelForCausalLM

    root = tmp_path_factory.mktemp("zero3_load")
    folder = write_tiny_llm(root / "llm", CORPUS, hidden=32)
    # Re-saved in bf16 as several shards with an index: the layout of real checkpoints.
    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    plain.save_pretrained(folder, max_shard_size="20KB")
    bad = write_tiny_llm(root / "bad", CORPUS, hidden=32)
    config = (bad / "config.json").read_text().replace('"hidden_size": 32', '"hidden_size": 48')
    (bad / "config.json").write_text(config)
    tied = write_tiny_llm(root / "tied", CORPUS, hidden=32)
    config = AutoConfig.from_pretrained(tied)
    config.tie_word_embeddings = True
    AutoModelForCausalLM.from_config(config).save_pretrained(tied)
    return folder, bad, tied


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])  # 3: the vocabulary x hidden weights do not split evenly (padding)
def test_each_rank_loads_only_its_share_and_the_logits_match_a_plain_load(llm_folders, world: int):
    folder, bad, tied = llm_folders
    assert (folder / "model.safetensors.index.json").is_file() and len(list(folder.glob("*.safetensors"))) >= 3
    assert "lm_head.weight" not in stored_tensors(tied)  # one tensor for both embeddings
    mp.spawn(_worker, args=(world, free_port(), str(folder), str(bad), str(tied)), nprocs=world)


def test_a_folder_without_safetensors_weights_is_a_clear_error(tmp_path: Path):
    with pytest.raises(R2GError, match="no model.safetensors or model.safetensors.index.json"):
        stored_tensors(tmp_path)


def _stored(tmp_path: Path, values: torch.Tensor) -> StoredTensor:
    from safetensors.torch import save_file

    save_file({"w": values}, str(tmp_path / "model.safetensors"))
    return stored_tensors(tmp_path)["w"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])  # bf16: stored dtype = the run's, no conversion
def test_read_elements_reaches_a_partition_only_through_copy(tmp_path: Path, dtype: torch.dtype):
    """A partition on a GPU cannot be read into from the file nor viewed as host memory: a meta tensor, which
    has no storage at all, stands in for it; reading into it must go through a host buffer and `copy_`."""
    stored = _stored(tmp_path, torch.arange(10, dtype=torch.bfloat16))
    on_device = torch.empty(4, dtype=dtype, device="meta")
    with pytest.raises(Exception):
        on_device.view(torch.uint8).numpy()  # the host path the old code took when the dtypes matched
    read_elements(stored, 3, on_device)  # raises if read_elements touches the partition's memory itself

    host = torch.zeros(4, dtype=dtype)  # the same read into host memory gives elements 3..6
    read_elements(stored, 3, host)
    assert host.tolist() == [3.0, 4.0, 5.0, 6.0]


def test_a_truncated_file_is_named(tmp_path: Path):
    stored = _stored(tmp_path, torch.arange(10, dtype=torch.float32))
    with open(stored.file, "r+b") as f:
        f.truncate(stored.offset + 5 * 4)
    with pytest.raises(R2GError, match="truncated"):
        read_elements(stored, 3, torch.zeros(4))

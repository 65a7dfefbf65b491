"""Encoder pretraining, the demo's stand-in for pretrained Swin weights: the head, the class balance, and a
short run on generated shards whose output loads through `model.vision_weights`."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from r2g.config import DataConfig, ModelConfig
from r2g.data.shard import ShardOptions, shard_dataset
from r2g.demo.dataset import generate
from r2g.demo.pretrain_vision import TokenScoreHead, balanced_pos_weight, batch_targets, pretrain_vision
from r2g.demo.run import pinned_threads, present_findings
from r2g.demo.toys import TINY_VISION_KWARGS
from r2g.errors import R2GError
from r2g.model.vision import build_vision_encoder


def test_head_pools_an_even_score_to_itself_and_lets_one_token_dominate():
    torch.manual_seed(0)
    head = TokenScoreHead(8, 3).eval()  # eval: BatchNorm uses its running statistics, per token alike
    x = torch.randn(2, 8)
    even = head(x[:, None, :].expand(2, 5, 8))
    assert torch.allclose(even, head.score(head.norm(x)), atol=1e-6)

    # A fresh BatchNorm in eval mode is x / sqrt(1 + eps); score label 0 by channel 0 alone.
    with torch.no_grad():
        head.norm.reset_running_stats()
        head.score.weight.zero_()
        head.score.bias.zero_()
        head.score.weight[0, 0] = 1.0
    tokens = torch.zeros(1, 4, 8)
    tokens[0, 2, 0] = 10.0  # one of 4 tokens scores 10 for label 0, the others 0
    scale = 1 / math.sqrt(1 + head.norm.eps)
    pooled = head(tokens)[0, 0].item()
    assert pooled == pytest.approx(math.log(3 + math.exp(10 * scale)) - math.log(4), rel=1e-6)
    assert pooled > 8.6  # a mean over tokens would give 2.5


def test_balanced_pos_weight_by_hand():
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # label 0: 2 of 4 positive -> 2 / 2; label 1: 1 of 4 -> 3 / 1; label 2: none -> 4 / 1 (no division by 0)
    assert balanced_pos_weight(targets).tolist() == [1.0, 3.0, 4.0]
    assert balanced_pos_weight(targets, cap=2.0).tolist() == [1.0, 2.0, 2.0]


def test_a_study_without_a_target_is_named():
    targets = {"s1": torch.tensor([1.0, 0.0])}
    assert batch_targets(targets, ["s1", "s1"]).shape == (2, 2)
    with pytest.raises(R2GError, match="no target for train study 's9'"):
        batch_targets(targets, ["s1", "s9"])


@pytest.fixture(scope="module")
def toy_pretraining(tmp_path_factory) -> tuple[ModelConfig, DataConfig, dict[str, torch.Tensor]]:
    """A tiny Swin's config, generated 64 px shards of 40 studies, and their train studies' targets (read only)."""
    root = tmp_path_factory.mktemp("pretraining")
    generate(root / "data", studies=40, style="mimic_cxr", seed=0, image_size=64, workers=1)
    shard_dataset(root / "data" / "annotation.json", root / "data" / "images", root / "shards",
                  ShardOptions("mimic_cxr", shard_size=20))
    train = json.loads((root / "data" / "annotation.json").read_text())["train"]
    targets = {e["id"]: torch.tensor(present_findings(e["labels"])) for e in train}
    model_cfg = ModelConfig(vision_arch="swin_tiny_patch4_window7_224", vision_kwargs=TINY_VISION_KWARGS)
    return model_cfg, DataConfig(shards=str(root / "shards"), image_size=64, workers=0), targets


def test_pretraining_on_generated_shards_saves_weights_that_load(toy_pretraining, tmp_path):
    model_cfg, data_cfg, targets = toy_pretraining
    out = tmp_path / "swin.safetensors"
    logged = []
    result = pretrain_vision(model_cfg, data_cfg, targets, out, steps=4, lr=1e-3, batch_size=8, seed=0, log=logged.append)
    assert out.is_file() and result["out"] == str(out)
    assert len(result["losses"]) == 2 and all(math.isfinite(v) for v in result["losses"])  # steps 1 and 4
    assert logged[-1].startswith("encoder pretraining step 4/4")

    saved = load_file(out)
    torch.manual_seed(0)
    start = build_vision_encoder(dataclasses.replace(model_cfg, mode="deep")).state_dict()  # where training started
    assert set(saved) == set(start)  # plain timm names: no head, no LoRA
    assert any(not torch.equal(saved[k], start[k]) for k in saved)

    loaded = build_vision_encoder(ModelConfig(vision_arch=model_cfg.vision_arch, vision_kwargs=TINY_VISION_KWARGS,
                                              vision_weights=str(out), mode="delta"))
    name = next(k for k in saved if k.endswith("attn.proj.weight"))
    assert torch.equal(dict(loaded.named_parameters())[name], saved[name])

    with pytest.raises(R2GError, match="no targets given"):
        pretrain_vision(model_cfg, data_cfg, {}, tmp_path / "x.safetensors", steps=2)
    with pytest.raises(R2GError, match="no target for train study"):
        pretrain_vision(model_cfg, data_cfg, dict(list(targets.items())[:3]), tmp_path / "x.safetensors", steps=2)


def test_under_the_demos_pinned_threads_the_callers_thread_count_does_not_matter(toy_pretraining, tmp_path):
    """The cause of different demo figures from the same seed (issue 11): CPU kernels split float sums across
    threads, so pretraining gives other weights at 1 and at 2 torch threads (measured on 2 cores, even after
    one step at toy size), and every later stage inherits them. The demo pins the count (`pinned_threads`),
    so the caller's count no longer matters."""
    model_cfg, data_cfg, targets = toy_pretraining
    weights = []
    for callers in (2, 1):
        torch.set_num_threads(callers)
        out = tmp_path / f"swin-{callers}.safetensors"
        # The count pretrain_vision runs on, read from inside it (its log): equal weights alone may not tell,
        # e.g. on one core.
        seen = []
        with pinned_threads(1):  # 1, not the demo's 2: quick on a busy machine
            pretrain_vision(model_cfg, data_cfg, targets, out, steps=1, batch_size=8, seed=0,
                            log=lambda _: seen.append(torch.get_num_threads()))
        assert seen == [1]
        assert torch.get_num_threads() == callers  # given back
        weights.append(load_file(out))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


"""One typed config shared by every command and saved with every run as `r2g_config.json`.

Defaults are the paper's (R2GenGPT) and its reference implementation's. Dataset-dependent defaults
(token budget, epochs, generation lengths) come from `DATASET_PRESETS` and are resolved once, when the
config is built; afterwards the config is read-only (frozen dataclasses), so a saved config says exactly
what a run used.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from r2g.errors import R2GError

Dataset = Literal["iu_xray", "mimic_cxr"]
Mode = Literal["shallow", "delta", "deep"]
ViewMerge = Literal["mean", "concat"]

PROMPT = "Generate a comprehensive and detailed diagnosis report for this chest xray image."

# Values from the reference implementation's scripts (max_length, min/max_new_tokens) and the paper (epochs).
DATASET_PRESETS: dict[str, dict[str, int]] = {
    "mimic_cxr": {"max_report_tokens": 100, "epochs": 3, "min_new_tokens": 80, "max_new_tokens": 120},
    "iu_xray": {"max_report_tokens": 60, "epochs": 15, "min_new_tokens": 40, "max_new_tokens": 100},
}


@dataclass(frozen=True)
class DataConfig:
    shards: str = "shards/mimic_cxr"
    dataset: Dataset = "mimic_cxr"
    image_size: int = 224
    max_views: int = 2  # IU-Xray studies have a frontal and a lateral view
    shuffle_buffer: int = 1000
    workers: int = 2
    augment: bool = False  # light train-time augmentation (small affine + brightness/contrast)
    blank_images: bool = False  # ablation: every view becomes zeros, to measure what the images contribute
    group_by_length: bool = True  # train micro-batches of similar report length, seeded: less padding through the LLM
    skip_damaged_shards: bool = False  # read on past shards damaged after sharding, counting the samples lost


@dataclass(frozen=True)
class ModelConfig:
    llm: str = ""  # local Hugging Face folder of a causal LM
    vision_arch: str = "swin_base_patch4_window7_224"
    vision_weights: str | None = None  # local timm / HF safetensors file or folder; None = random init
    vision_kwargs: dict[str, Any] = field(default_factory=dict)  # timm.create_model overrides (tiny encoders)
    mode: Mode = "delta"
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    llm_lora: bool = False  # LoRA on the LLM's attention (beyond the paper; for larger LLMs)
    llm_lora_r: int = 8
    llm_lora_alpha: int = 16
    view_merge: ViewMerge = "mean"  # reference implementation averages the per-view token grids
    prompt: str = PROMPT
    max_report_tokens: int = 100  # report token budget, eos included
    grad_ckpt: bool = False  # activation checkpointing of the frozen LLM's layers (and Swin's blocks in delta/deep)


@dataclass(frozen=True)
class GenerateConfig:
    num_beams: int = 3
    repetition_penalty: float = 2.0
    length_penalty: float = 2.0
    min_new_tokens: int = 80
    max_new_tokens: int = 120
    batch_size: int = 8


@dataclass(frozen=True)
class TrainConfig:
    out: str = "runs/r2g"
    ds_config: str = "ds_configs/zero2.json"
    lr: float = 1e-4
    micro_batch: int = 6
    grad_accum: int = 1
    epochs: int = 3
    warmup_steps: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    seed: int = 42
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    save_every: int = 500  # optimizer steps between resumable checkpoints
    val_every: int = 0  # optimizer steps between validations; 0 = once per epoch
    val_samples: int = 200  # val studies decoded per validation (0 = all)
    select_metric: str = "bleu4_cider"  # bleu4_cider (reference: 0.5 BLEU-4 + 0.5 CIDEr), ce_f1, or a metric key
    max_steps: int = 0  # stop after this many optimizer steps (0 = run all epochs)
    resume: bool = False
    log_every: int = 10


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "RunConfig":
        sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "generate": GenerateConfig}
        unknown = set(d) - set(sections) - {"meta"}  # meta: facts recorded beside the config (e.g. LLM hash)
        if unknown:
            raise R2GError(f"{source}: unknown section(s) {sorted(unknown)}; expected {sorted(sections)}")
        built = {}
        for name, klass in sections.items():
            values = d.get(name, {})
            names = {f.name for f in dataclasses.fields(klass)}
            bad = set(values) - names
            if bad:
                raise R2GError(f"{source}: unknown field(s) {sorted(bad)} in '{name}'")
            built[name] = klass(**values)
        return cls(**built)

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise R2GError(f"{path}: not found") from None
        except json.JSONDecodeError as e:
            raise R2GError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, source=str(path))


def replace(obj, **changes):
    """`dataclasses.replace` that ignores None values, so CLI flags left unset keep the defaults."""
    return dataclasses.replace(obj, **{k: v for k, v in changes.items() if v is not None})


def preset(dataset: str) -> dict[str, int]:
    if dataset not in DATASET_PRESETS:
        raise R2GError(f"unknown dataset '{dataset}'; choose one of {sorted(DATASET_PRESETS)}")
    return DATASET_PRESETS[dataset]

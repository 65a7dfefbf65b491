"""One typed config shared by every command and saved with every run as `r2g_config.json`.

Every field is a setting, and every setting is written here once: its default, its help text and its choices.
`r2g train` (and `deepspeed cli/train.py`) derive their flags from these fields (`--micro-batch` sets
`train.micro_batch`), so a new setting is one edit here.

Defaults are r2g's own; where they differ from the reference implementation (wang-zhanyu/R2GenGPT), the
README's settings table says so and why, and `--recipe r2gengpt-…` (`RECIPES`, r2g/recipes.json) reproduces
the reference's released scripts instead. Dataset-dependent defaults (token budget, epochs, generation
lengths) come from `DATASET_PRESETS`. All of that is resolved once, by `resolve`, when the config is built;
afterwards the config is read-only (frozen dataclasses), so a saved config says exactly what a run used.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from r2g.errors import R2GError
from r2g.files import write_text

Dataset = Literal["iu_xray", "mimic_cxr"]
Mode = Literal["shallow", "delta", "deep"]
ViewMerge = Literal["mean", "concat"]
Precision = Literal["auto", "bf16", "bf16-mixed", "fp32"]
LrSchedule = Literal["warmup_cosine", "epoch_cosine"]
DATASETS: tuple[str, ...] = typing.get_args(Dataset)
MODES: tuple[str, ...] = typing.get_args(Mode)
# The one table of dataset names. A dataset is named as in `Dataset` everywhere (manifest.json, r2g_config.json,
# recipes, `r2g shard NAME`, `r2g plan --dataset`, messages); these older spellings, which documented commands
# took (`r2g shard iu-xray|mimic`, `r2g plan --dataset iu|mimic`, `r2g synth --style mimic|iu-xray`), keep working.
DATASET_ALIASES: dict[str, str] = {"iu-xray": "iu_xray", "iu": "iu_xray", "mimic": "mimic_cxr"}

RANDOM_WEIGHTS = "none"  # --vision-weights none: a random Swin, asked for on purpose

PROMPT = "Generate a comprehensive and detailed diagnosis report for this chest xray image."

# Values from the reference implementation's scripts (max_length, min/max_new_tokens) and the paper (epochs).
DATASET_PRESETS: dict[str, dict[str, int]] = {
    "mimic_cxr": {"max_report_tokens": 100, "epochs": 3, "min_new_tokens": 80, "max_new_tokens": 120},
    "iu_xray": {"max_report_tokens": 60, "epochs": 15, "min_new_tokens": 40, "max_new_tokens": 100},
}


def setting(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None, cli: bool = True,
            factory: Any = dataclasses.MISSING):
    """A config field with its help text. flag: the CLI spelling when not `--field-name`; cli=False: not a flag
    (derived by `resolve`)."""
    meta = {"help": help, "flag": flag, "cli": cli}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def choices(cls: type, name: str) -> tuple[Any, ...] | None:
    """The allowed values of a Literal-typed field, None for any other field."""
    return _literal_fields(cls).get(name)


@functools.cache
def _literal_fields(cls: type) -> dict[str, tuple[Any, ...]]:
    # Resolved once per class: every config construction checks its choices.
    return {name: typing.get_args(hint) for name, hint in typing.get_type_hints(cls).items()
            if typing.get_origin(hint) is Literal}


class _Checked:
    """Refuses values outside a Literal field's choices, however the config was built (flags, JSON, code)."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            allowed = choices(type(self), f.name)
            value = getattr(self, f.name)
            if allowed is not None and value not in allowed:
                raise R2GError(f"{section_of(type(self))}.{f.name} (--{flag_name(f)}): '{value}' is not one of "
                               f"{', '.join(map(str, allowed))}")


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or f.name.replace("_", "-")


@dataclass(frozen=True)
class DataConfig(_Checked):
    shards: str = setting("shards/mimic_cxr", "Shard folder written by `r2g shard`.")
    dataset: Dataset = setting("mimic_cxr", "Read from the shards' manifest.", cli=False)
    image_size: int = setting(224, "Input side in pixels; must match the vision encoder.")
    max_views: int = setting(2, "View slots per study (IU-Xray studies have a frontal and a lateral view).")
    shuffle_buffer: int = setting(1000, "Samples in the train shuffle buffer.")
    workers: int = setting(2, "Data-loader workers per rank.")
    augment: bool = setting(False, "Light train-time augmentation (small affine + brightness/contrast).")
    blank_images: bool = setting(False, "Ablation: every view becomes zeros, to measure what the images contribute.")
    group_by_length: bool = setting(
        True, "Train micro-batches of studies with similar report lengths, drawn from the shuffle buffer (seeded), "
              "so little padding goes through the frozen LLM; --no-group-by-length keeps the plain shuffled order.")
    skip_damaged_shards: bool = setting(
        False, "Read on past a shard damaged after sharding (fewer samples than manifest.json, or undecodable "
               "images), counting the samples lost in the log and metrics; by default it stops the run.")


@dataclass(frozen=True)
class ModelConfig(_Checked):
    llm: str = setting("", "Local Hugging Face causal-LM folder (e.g. /models/Llama-2-7b-chat-hf).")
    vision_arch: str = setting("swin_base_patch4_window7_224", "timm model name of the vision encoder.")
    vision_weights: str | None = setting(
        None, "Local Swin weights (timm or HF safetensors layout), or 'none' to train on a randomly initialised "
              "encoder on purpose.")
    vision_kwargs: dict[str, Any] = setting(
        help="JSON object of timm.create_model overrides (small encoders), e.g. '{\"embed_dim\": 32}'.", factory=dict)
    mode: Mode = setting("delta", "shallow (mapper), delta (mapper + Swin q/v LoRA) or deep (mapper + whole Swin).")
    lora_r: int = setting(16, "Rank of the Swin q/v LoRA (delta mode).")
    lora_alpha: int = setting(16, "Scaling of the Swin q/v LoRA.")
    lora_dropout: float = setting(0.1, "Dropout on the LoRA input (Swin and LLM LoRA).")
    llm_lora: bool = setting(False, "Also train LoRA on the LLM's attention (beyond the paper; for larger LLMs).")
    llm_lora_r: int = setting(8, "Rank of the LLM LoRA.")
    llm_lora_alpha: int = setting(16, "Scaling of the LLM LoRA.")
    view_merge: ViewMerge = setting("mean", "How a study's views combine: mean of the token grids (reference) or concat.")
    prompt: str = setting(PROMPT, "Instruction after the image tokens.")
    max_report_tokens: int = setting(100, "Report token budget, eos included [dataset: 100 MIMIC-CXR, 60 IU-Xray].")
    keep_eos: bool = setting(
        True, "An over-long report is cut to the budget with its eos kept (r2g); --no-keep-eos cuts report + eos "
              "together, as the reference does, so such a report trains without an end.")
    grad_ckpt: bool = setting(
        False, "Activation checkpointing: the frozen LLM's layers (and Swin's blocks in delta and deep mode) keep "
               "only their inputs and recompute the rest in the backward pass: 64-74 % less activation memory at "
               "micro-batch 6 for one more forward pass of those layers (bench/RESULTS.md).")

    @property
    def vision_weights_file(self) -> str | None:
        """The Swin weights to load; None for a random encoder (unset, or 'none' on purpose)."""
        return None if self.vision_weights in (None, RANDOM_WEIGHTS) else self.vision_weights


@dataclass(frozen=True)
class GenerateConfig(_Checked):
    num_beams: int = setting(3, "Beam width.")
    repetition_penalty: float = setting(2.0, "Repetition penalty over the generated tokens.")
    length_penalty: float = setting(2.0, "Beam-search length penalty.")
    min_new_tokens: int = setting(80, "Tokens generated before eos is allowed [dataset: 80 MIMIC-CXR, 40 IU-Xray].")
    max_new_tokens: int = setting(120, "Most tokens generated [dataset: 120 MIMIC-CXR, 100 IU-Xray].")
    batch_size: int = setting(8, "Studies decoded together at validation and evaluation.", flag="gen-batch-size")


@dataclass(frozen=True)
class TrainConfig(_Checked):
    out: str = setting("runs/r2g", "Run folder (checkpoints, trainable.safetensors, logs).")
    ds_config: str = setting("ds_configs/zero2.json", "DeepSpeed config; its \"auto\" values come from these settings.",
                             flag="ds")
    lr: float = setting(1e-4, "Peak learning rate.")
    micro_batch: int = setting(6, "Studies per rank per forward pass.")
    grad_accum: int = setting(1, "Micro-batches per optimizer step (derived when --global-batch is set).")
    global_batch: int = setting(
        0, "Studies per optimizer step over all ranks, kept on any world size: grad-accum = global-batch / "
           "(micro-batch × world), micro-batch lowered to global-batch / world when that is smaller; 0 = "
           "micro-batch × grad-accum × world.")
    epochs: int = setting(3, "Passes over the train split [dataset: 3 MIMIC-CXR, 15 IU-Xray].")
    lr_schedule: LrSchedule = setting(
        "warmup_cosine", "warmup_cosine: linear warmup over --warmup-steps, then cosine per step to 1 % of --lr "
                         "(DeepSpeed WarmupCosineLR); epoch_cosine: the reference's cosine annealing stepped once "
                         "per epoch down to --min-lr, no warmup.")
    warmup_steps: int = setting(100, "Warmup optimizer steps (warmup_cosine).")
    min_lr: float = setting(1e-6, "Final learning rate of epoch_cosine.")
    weight_decay: float = setting(0.01, "AdamW weight decay (the reference's: torch's AdamW default).")
    grad_clip: float = setting(1.0, "Gradient-norm clipping; 0 = none.")
    seed: int = setting(42, "Seed for initialisation, shuffling and dropout.")
    precision: Precision = setting(
        "auto", "auto (bf16 on CUDA, fp32 on CPU); bf16 (everything in bf16); bf16-mixed (trainable Swin and mapper "
                "in fp32 under bf16 autocast, frozen LLM in bf16: Lightning's bf16-mixed, as the reference); fp32.")
    save_every: int = setting(500, "Optimizer steps between resumable checkpoints.")
    val_every: int = setting(0, "Optimizer steps between validations; 0 = --val-per-epoch times per epoch.")
    val_per_epoch: int = setting(1, "Validations per epoch when --val-every is 0 (the reference validates MIMIC-CXR "
                                    "every half epoch: 2).")
    val_samples: int = setting(200, "Val studies decoded per validation; 0 = --val-fraction of them; -1 = no validation.")
    val_fraction: float = setting(1.0, "Share of the val split decoded per validation when --val-samples is 0.")
    select_metric: str = setting(
        "bleu4_cider", "Validation score that picks the exported weights: bleu4_cider (reference: 0.5 BLEU-4 + 0.5 "
                       "CIDEr), ce_f1 (CheXpert micro F1), or one of the validation score keys.")
    max_steps: int = setting(0, "Stop after this many optimizer steps; 0 = run all epochs.")
    resume: bool = setting(False, "Continue the run in --out from its latest checkpoint.")
    log_every: int = setting(10, "Optimizer steps between log lines.")
    recipe: str = setting("", "The recipe this run started from (set by --recipe).", cli=False)


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "generate": GenerateConfig}


def check_flag_names(sections: dict[str, type]) -> None:
    """Refuse two fields that the CLI cannot tell apart. A command's flags are parameters named by the bare field
    name (`micro_batch`, whatever its section: `r2g train` takes every section at once) and spelled
    `--flag-name` (`--no-flag-name` for a switch), so a second `batch_size` field would make one flag set both,
    or make Click refuse every command. Run at import, so such a field fails the first import, naming both."""
    owner: dict[str, str] = {}
    for section, klass in sections.items():
        for f in dataclasses.fields(klass):
            here, names = f"{section}.{f.name}", [f.name]  # every field: the CLI looks flags up by field name
            if f.metadata.get("cli", True):
                flag = flag_name(f)
                names += [f"--{flag}"] + ([f"--no-{flag}"] if typing.get_type_hints(klass)[f.name] is bool else [])
            for name in names:
                if name in owner:
                    raise TypeError(f"r2g.config: {owner[name]} and {here} would both be the CLI's '{name}'; rename "
                                    f"one field, or give it its own spelling with setting(..., flag=...)")
                owner[name] = here


check_flag_names(SECTIONS)


def section_of(cls: type) -> str:
    return next(name for name, klass in SECTIONS.items() if klass is cls)


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path, meta: dict[str, Any] | None = None) -> None:
        """Write the run record: the config and `meta` (facts recorded beside it, e.g. the LLM's config hash),
        atomically (a crash leaves the previous record or this one)."""
        write_text(Path(path), json.dumps({**self.to_dict(), "meta": meta or {}}, indent=2) + "\n")

    def with_absolute_paths(self) -> "RunConfig":
        """The base paths (LLM, vision weights, shards) made absolute, as a run records them, so that the run
        folder rebuilds its model from any working directory."""
        weights = self.model.vision_weights
        if self.model.vision_weights_file:  # else a random Swin: no path
            weights = os.path.abspath(weights)
        model = dataclasses.replace(self.model, llm=os.path.abspath(self.model.llm), vision_weights=weights)
        return dataclasses.replace(self, model=model, data=dataclasses.replace(self.data, shards=os.path.abspath(self.data.shards)))

    def differences(self, other: "RunConfig") -> dict[str, tuple[Any, Any]]:
        """'section.field' -> (this value, `other`'s) for every setting that differs."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {f"{section}.{name}": (value, theirs[section][name])
                for section, fields in mine.items() for name, value in fields.items() if value != theirs[section][name]}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "RunConfig":
        unknown = set(d) - set(SECTIONS) - {"meta"}  # meta: facts recorded beside the config (e.g. LLM hash)
        if unknown:
            raise R2GError(f"{source}: unknown section(s) {sorted(unknown)}; expected {sorted(SECTIONS)}")
        _check_fields(d, source)
        return cls(**{name: klass(**d.get(name, {})) for name, klass in SECTIONS.items()})

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        return cls.load_record(path)[0]

    @classmethod
    def load_record(cls, path: str | Path) -> tuple["RunConfig", dict[str, Any]]:
        """(the config, its meta) from a run record written by `save`."""
        data = read_json(Path(path))
        return cls.from_dict(data, source=str(path)), data.get("meta", {})


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise R2GError(f"{path}: not found") from None
    except json.JSONDecodeError as e:
        raise R2GError(f"{path}: not valid JSON ({e})") from None


def _check_fields(sections: dict[str, dict], source: str) -> None:
    for name, values in sections.items():
        if name in SECTIONS:
            bad = set(values) - {f.name for f in dataclasses.fields(SECTIONS[name])}
            if bad:
                raise R2GError(f"{source}: unknown field(s) {sorted(bad)} in '{name}'")


def replace_given(obj, **changes):
    """`obj` with the fields given a value replaced: None values are ignored, so flags left unset keep what
    `obj` says (unlike `dataclasses.replace`, which would set them to None)."""
    return dataclasses.replace(obj, **{k: v for k, v in changes.items() if v is not None})


def dataset_name(spelling: str, flag: str = "--dataset") -> str:
    """The dataset `spelling` names (one of DATASETS), an older spelling included (DATASET_ALIASES)."""
    name = DATASET_ALIASES.get(spelling, spelling)
    if name not in DATASETS:
        raise R2GError(f"{flag} '{spelling}': unknown dataset; choose one of {', '.join(DATASETS)}")
    return name


def preset(dataset: str) -> dict[str, int]:
    if dataset not in DATASET_PRESETS:
        raise R2GError(f"unknown dataset '{dataset}'; choose one of {', '.join(DATASETS)}")
    return DATASET_PRESETS[dataset]


# ------------------------------------------------------------------------------------------------ recipes
def recipes() -> dict[str, dict]:
    """The shipped recipes (r2g/recipes.json): name -> {dataset, source, notes, config sections}."""
    return json.loads(resources.files("r2g").joinpath("recipes.json").read_text())["recipes"]


def recipe(name: str) -> dict:
    known = recipes()
    if name not in known:
        raise R2GError(f"--recipe '{name}' is unknown; choose one of {', '.join(known)}")
    return known[name]


# ------------------------------------------------------------------------------------------------ resolve
def resolve(dataset: str, overrides: dict[str, dict[str, Any]], world: int, recipe_name: str = "") -> RunConfig:
    """The run config, in this order: defaults, then `dataset`'s presets, then the recipe, then `overrides`
    (section -> {field: value}, e.g. the CLI flags that were given), then the world size (global batch)."""
    _check_fields(overrides, "command line")
    p = preset(dataset)
    layers = [{
        "data": {"dataset": dataset},
        "model": {"max_report_tokens": p["max_report_tokens"]},
        "train": {"epochs": p["epochs"]},
        "generate": {"min_new_tokens": p["min_new_tokens"], "max_new_tokens": p["max_new_tokens"]},
    }]
    if recipe_name:
        r = recipe(recipe_name)
        if r["dataset"] != dataset:
            raise R2GError(f"--recipe {recipe_name} is for {r['dataset']}, but the shards hold {dataset}; "
                           f"choose a {dataset} recipe ({', '.join(n for n, v in recipes().items() if v['dataset'] == dataset)})")
        _check_fields(r["config"], f"recipe {recipe_name}")
        layers += [r["config"], {"train": {"recipe": recipe_name}}]
    layers.append(overrides)
    merged = {name: {k: v for layer in layers for k, v in layer.get(name, {}).items()} for name in SECTIONS}
    merged["train"] = _batch_for_world(merged["train"], world, given=overrides.get("train", {}))
    return RunConfig.from_dict(merged, source="run config")


def _batch_for_world(train: dict[str, Any], world: int, given: dict[str, Any]) -> dict[str, Any]:
    """Fill micro_batch / grad_accum from global_batch, so the global batch is the same on any world size."""
    glob = train.get("global_batch", 0)
    if not glob:
        return train
    if glob % world:
        raise R2GError(f"--global-batch {glob} does not split over {world} ranks; use a multiple of {world}")
    per_rank = glob // world
    micro = min(train.get("micro_batch", TrainConfig.micro_batch), per_rank)
    if per_rank % micro:
        raise R2GError(f"--global-batch {glob} over {world} rank(s) is {per_rank} studies per rank, which "
                       f"--micro-batch {micro} does not divide; choose a divisor of {per_rank}")
    accum = per_rank // micro
    if "grad_accum" in given and given["grad_accum"] != accum:
        raise R2GError(f"--grad-accum {given['grad_accum']} contradicts --global-batch {glob} (= {micro} × {accum} × "
                       f"{world} ranks); leave out one of them")
    return {**train, "micro_batch": micro, "grad_accum": accum}

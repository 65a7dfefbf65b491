"""One config, spelled once: flags derived from its fields, recipes, the world-size batch rule, --print-config,
and the rule that an error message names only flags that exist."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from r2g.cli import app
from r2g.config import SECTIONS, ModelConfig, RunConfig, choices, recipes, resolve
from r2g.data.shard import ShardOptions, shard_dataset
from r2g.demo.toys import write_raw_dataset
from r2g.errors import R2GError
from r2g.train.loop import check_vision_weights, val_study_count, validation_steps
from r2g.train.schedule import epoch_cosine_lr


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def iu_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cfg")
    raw = write_raw_dataset(root / "raw", per_split=(4, 2, 2), size=32)
    shard_dataset(raw, raw.parent / "images", root / "shards", ShardOptions("iu_xray", shard_size=8))
    return root / "shards"


def print_config(shards: Path, *flags: str, world: int = 1):
    result = CliRunner().invoke(app, ["train", "--llm", "/no/such/llm", "--shards", str(shards), "--print-config", *flags],
                                env={"WORLD_SIZE": str(world)})
    return result, (json.loads(result.stdout) if result.exit_code == 0 else None)


def all_cli_flags() -> set[str]:
    flags = set()
    group = typer.main.get_command(app)
    stack = [group]
    while stack:
        cmd = stack.pop()
        stack += list(getattr(cmd, "commands", {}).values())
        for p in cmd.params:
            flags |= {o for o in [*p.opts, *p.secondary_opts] if o.startswith("--")}
    return flags


def test_every_setting_is_a_train_flag_and_reaches_the_config(iu_shards):
    """Set every settable field through its flag to a non-default value; the printed config holds them all."""
    given, expected = [], {}
    for section, klass in SECTIONS.items():
        for f in dataclasses.fields(klass):
            if not f.metadata["cli"] or f.name in ("llm", "shards", "global_batch"):  # global_batch: tested below
                continue
            flag = "--" + (f.metadata["flag"] or f.name.replace("_", "-"))
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            allowed = choices(klass, f.name)
            if isinstance(default, bool):
                value, given_ = (not default), [flag if not default else "--no-" + flag[2:]]
            elif allowed:
                value = next(a for a in allowed if a != default)
                given_ = [flag, value]
            elif isinstance(default, dict):
                value, given_ = {"embed_dim": 32}, [flag, '{"embed_dim": 32}']
            elif isinstance(default, (int, float)) and not isinstance(default, bool):
                value = type(default)(default + 3)
                given_ = [flag, str(value)]
            else:
                value, given_ = "x-" + str(default), [flag, "x-" + str(default)]
            given += given_
            expected[(section, f.name)] = value
    result, cfg = print_config(iu_shards, *given)
    assert result.exit_code == 0, result.stdout
    for (section, name), value in expected.items():
        assert cfg[section][name] == value, (section, name)


def test_print_config_resolves_recipe_flags_and_world_without_loading_a_model(iu_shards):
    result, cfg = print_config(iu_shards, "--recipe", "r2gengpt-iu-delta", "--lr", "3e-4", world=2)
    assert result.exit_code == 0, result.stdout
    t = cfg["train"]
    assert (t["recipe"], t["lr"], t["global_batch"], t["micro_batch"], t["grad_accum"]) == ("r2gengpt-iu-delta", 3e-4, 16, 8, 1)
    assert (t["lr_schedule"], t["weight_decay"], t["grad_clip"], t["precision"], t["epochs"]) == ("epoch_cosine", 0.01, 0.0, "bf16-mixed", 15)
    assert cfg["model"]["mode"] == "delta" and cfg["model"]["keep_eos"] is False and cfg["model"]["max_report_tokens"] == 60
    assert cfg["generate"]["batch_size"] == 12 and cfg["data"]["dataset"] == "iu_xray"

    _, one_gpu = print_config(iu_shards, "--recipe", "r2gengpt-iu-delta")
    assert (one_gpu["train"]["micro_batch"], one_gpu["train"]["grad_accum"]) == (8, 2)  # still 16 studies a step
    _, no_recipe = print_config(iu_shards)
    assert no_recipe["train"]["lr_schedule"] == "warmup_cosine" and no_recipe["train"]["epochs"] == 15  # IU preset


@pytest.mark.parametrize("name", sorted(recipes()))
@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_every_recipe_keeps_its_global_batch_on_any_world_size(name, world):
    r = recipes()[name]
    cfg = resolve(r["dataset"], {}, world, name)
    t = cfg.train
    assert t.micro_batch * t.grad_accum * world == r["config"]["train"]["global_batch"]
    assert t.micro_batch <= r["config"]["train"]["micro_batch"]


def test_recipe_reference_values():
    r = recipes()
    assert {n: v["config"]["train"]["global_batch"] for n, v in r.items()} == {
        "r2gengpt-iu-shallow": 16, "r2gengpt-iu-delta": 16, "r2gengpt-iu-deep": 16,
        "r2gengpt-mimic-shallow": 32, "r2gengpt-mimic-delta": 32, "r2gengpt-mimic-deep": 24}
    mimic = resolve("mimic_cxr", {}, 4, "r2gengpt-mimic-deep").train
    assert (mimic.epochs, mimic.val_per_epoch, mimic.val_samples, mimic.val_fraction) == (5, 2, 0, 0.5)


def test_batch_and_recipe_errors_name_the_fix():
    with pytest.raises(R2GError, match="is for iu_xray, but the shards hold mimic_cxr"):
        resolve("mimic_cxr", {}, 1, "r2gengpt-iu-shallow")
    with pytest.raises(R2GError, match="does not split over 3 ranks"):
        resolve("iu_xray", {}, 3, "r2gengpt-iu-shallow")
    with pytest.raises(R2GError, match="--grad-accum 4 contradicts --global-batch 16"):
        resolve("iu_xray", {"train": {"grad_accum": 4}}, 1, "r2gengpt-iu-shallow")
    with pytest.raises(R2GError, match="--recipe 'nope' is unknown"):
        resolve("iu_xray", {}, 1, "nope")
    with pytest.raises(R2GError, match=r"model.mode \(--mode\): 'wide' is not one of shallow, delta, deep"):
        ModelConfig(mode="wide")
    with pytest.raises(R2GError, match="unknown field"):
        RunConfig.from_dict({"data": {"colour": 1}})


def test_a_random_swin_must_be_asked_for():
    with pytest.raises(R2GError, match="--vision-weights none"):
        check_vision_weights(RunConfig())
    check_vision_weights(RunConfig(model=ModelConfig(vision_weights="none")))
    assert ModelConfig(vision_weights="none").vision_weights_file is None
    assert ModelConfig(vision_weights="/w.safetensors").vision_weights_file == "/w.safetensors"


def test_epoch_cosine_matches_the_reference_schedule():
    # CosineAnnealingLR(T_max=3, eta_min=1e-6) stepped per epoch, 4 optimizer steps an epoch
    lrs = [epoch_cosine_lr(s, 1e-4, 1e-6, 4, 3) for s in range(12)]
    assert lrs[:4] == [1e-4] * 4
    assert lrs[4] == pytest.approx(1e-6 + 99e-6 * 0.75) and lrs[8] == pytest.approx(1e-6 + 99e-6 * 0.25)


def test_validation_schedule_and_size():
    half = validation_steps(10, 0, 2)
    assert [s for s in range(1, 31) if half(s)] == [5, 10, 15, 20, 25, 30]
    assert [s for s in range(1, 31) if validation_steps(10, 0, 1)(s)] == [10, 20, 30]
    assert [s for s in range(1, 10) if validation_steps(10, 4, 2)(s)] == [4, 8]
    assert val_study_count(200, 1.0, 1000) == 200 and val_study_count(0, 0.5, 1001) == 501


def _error_strings(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "R2GError":
            for sub in ast.walk(node):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    yield sub.value


def test_error_messages_name_only_flags_that_exist():
    flags = all_cli_flags()
    named = {}
    for path in (ROOT / "r2g").rglob("*.py"):
        for text in _error_strings(ast.parse(path.read_text())):
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]", text):
                named.setdefault(flag, path.name)
    assert named, "the scan found no flags at all"
    missing = {f: where for f, where in named.items() if f not in flags}
    assert not missing, f"error messages name flags the CLI lacks: {missing}"


def test_eval_and_generate_take_every_generation_setting_as_a_flag():
    from r2g.config import GenerateConfig, flag_name

    group = typer.main.get_command(app)
    expected = {"--" + flag_name(f) for f in dataclasses.fields(GenerateConfig)}
    for name in ("eval", "generate", "train"):
        opts = {o for p in group.commands[name].params for o in p.opts}
        assert expected <= opts, (name, expected - opts)


def test_two_fields_the_cli_cannot_tell_apart_are_refused_naming_both():
    from r2g.config import check_flag_names, setting

    @dataclasses.dataclass(frozen=True)
    class SameName:  # the CLI names a flag's parameter by the bare field name
        batch_size: int = setting(1, "Another batch size.", flag="other-batch-size")

    @dataclasses.dataclass(frozen=True)
    class SameSpelling:  # a different field, spelled like generate.batch_size's --gen-batch-size
        gen_batch_size: int = setting(1, "Clashes with --gen-batch-size.")

    @dataclasses.dataclass(frozen=True)
    class SwitchNegation:  # --no-augment is data.augment's negation
        no_augment: bool = setting(False, "Clashes with --no-augment.")

    check_flag_names(SECTIONS)  # the real config passes (it does at import, too)
    with pytest.raises(TypeError, match=r"generate\.batch_size and extra\.batch_size would both be the CLI's 'batch_size'"):
        check_flag_names({**SECTIONS, "extra": SameName})
    with pytest.raises(TypeError, match=r"generate\.batch_size and extra\.gen_batch_size .* '--gen-batch-size'"):
        check_flag_names({**SECTIONS, "extra": SameSpelling})
    with pytest.raises(TypeError, match=r"data\.augment and extra\.no_augment .* '--no-augment'"):
        check_flag_names({**SECTIONS, "extra": SwitchNegation})


def test_a_command_that_takes_some_settings_names_only_existing_ones():
    from r2g.cli import PLAN_SETTINGS, config_flags

    assert [p.name for p in config_flags(("model", "train"), only=PLAN_SETTINGS)] == [
        "mode", "grad_ckpt", "ds_config", "micro_batch", "precision"]
    with pytest.raises(TypeError, match=r"no settable field \['micro_batch'\] in the sections \('model',\)"):
        config_flags(("model",), only=("mode", "micro_batch"))

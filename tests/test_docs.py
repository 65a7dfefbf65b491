"""Every command and flag the README and docs/ show exists: `r2g` subcommands and their --flags (read from the
CLI itself), cli/train.py's flags (those of `r2g train`), and `make` targets. A renamed flag fails here, not in a
reader's terminal."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from r2g import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
REFERENCE_CITED = re.compile(r"`(configs|scripts|models)/")


def root_command():
    return typer.main.get_command(cli.app)


def options(command) -> set[str]:
    return {o for p in command.params for o in (*p.opts, *getattr(p, "secondary_opts", ()))}


def code_lines(text: str) -> list[str]:
    """Command lines of fenced blocks (continuations joined, prompts and comments dropped), and inline spans."""
    lines = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"^\s*\$ ", "", line).split(" #", 1)[0].strip()
            if line:
                lines.append(line)
    for line in FENCE.sub("", text).splitlines():
        # Lines that cite the reference implementation's files (`configs/config.py`, `scripts/*.sh`) quote its
        # flags, not r2g's (r2g has no such folders).
        if not REFERENCE_CITED.search(line):
            lines += SPAN.findall(line)
    return lines


def words(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError:  # an unbalanced quote in prose: plain split is enough to find commands and flags
        return line.split()


def flags(tokens: list[str]) -> list[str]:
    return [t.split("=", 1)[0] for t in tokens if t.startswith("--") and len(t) > 2]


def check_line(line: str, root, all_flags: set[str], make_targets: set[str]) -> list[str]:
    """What in one command line does not exist."""
    tokens = words(line)
    problems = []
    if "cli/train.py" in tokens:  # the launcher script: r2g train's flags after it
        train = root.commands["train"]
        after = tokens[tokens.index("cli/train.py") + 1:]
        problems += [f"{f} (cli/train.py)" for f in flags(after) if f not in options(train)]
        return problems
    tokens = ["r2g" if t.endswith("/r2g") else t for t in tokens]  # .venv/bin/r2g
    if "r2g.cli" in tokens:
        tokens = ["r2g", *tokens[tokens.index("r2g.cli") + 1:]]
    while tokens and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):  # WORLD_SIZE=4 r2g train …
        tokens = tokens[1:]
    if tokens[:1] == ["make"]:
        return [f"make {t}" for t in tokens[1:2] if t not in make_targets and not t.startswith("-")]
    if tokens[:1] != ["r2g"]:
        # A bare flag in prose (`--skip-damaged-shards`) must be some command's. Snake-case ones (`--max_length`)
        # are the reference implementation's or a launcher's, which the settings table cites: r2g spells kebab-case.
        return [f for f in flags(tokens) if tokens[0].startswith("--") and "_" not in f and f not in all_flags]
    command, path = root, ["r2g"]
    for token in tokens[1:]:
        if not hasattr(command, "commands") or token.startswith("-") or token in ("…", "..."):
            break
        if token not in command.commands:
            return [f"{' '.join(path)} {token} (no such command)"]
        command, path = command.commands[token], [*path, token]
    known = options(command) | {"--help"}
    return [f"{' '.join(path)} {f}" for f in flags(tokens) if f not in known]


def walk(command):
    yield command
    for sub in getattr(command, "commands", {}).values():
        yield from walk(sub)


def test_every_command_and_flag_the_docs_show_exists():
    root = root_command()
    all_flags = {o for c in walk(root) for o in options(c)} | {"--help"}
    make_targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    problems, checked = [], 0
    for doc in DOCS:
        for line in code_lines(doc.read_text()):
            found = check_line(line, root, all_flags, make_targets)
            checked += bool(re.search(r"\br2g\b|cli/train\.py|^--|^make ", line))
            problems += [f"{doc.relative_to(ROOT)}: `{line[:80]}`: {p}" for p in found]
    assert checked > 20  # the docs do show commands: the parser found them
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("line, problem", [
    ("r2g evaluate --ckpt x", "r2g evaluate (no such command)"),
    ("r2g eval --ckpt x --beams 3", "r2g eval --beams"),
    ("deepspeed --num_gpus 8 cli/train.py --llm x --batch 4", "--batch (cli/train.py)"),
    ("r2g shard mimc --annotation a", "r2g shard mimc (no such command)"),
    ("make tests", "make tests"),
])
def test_the_check_catches_what_does_not_exist(line, problem):
    root = root_command()
    all_flags = {o for c in walk(root) for o in options(c)} | {"--help"}
    assert check_line(line, root, all_flags, {"install", "test", "demo"}) == [problem]
    assert check_line("r2g eval --ckpt x --num-beams 3 --no-meteor", root, all_flags, set()) == []

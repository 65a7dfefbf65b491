"""Model-based metrics read their weights from local folders only: the checks, the offline switch, and the
fingerprint that metrics.json records for every key those weights make.

Nothing is ever downloaded: `offline()` sets the Hugging Face offline switches for as long as a scorer loads,
and every path handed to a package is a local folder, checked here first so that a missing or incomplete one
is one R2GError naming the flag and what the folder must hold.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from r2g.errors import R2GError

# Weight files, by suffix: what `fingerprint` hashes (tokenizer and config files are not weights).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".th")
_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def require_folder(flag: str, path: str | Path, holds: str, files: tuple[str, ...] = ()) -> Path:
    """`path` as a Path when it is a folder holding every one of `files`; else one R2GError naming `flag` and
    `holds` (what the folder must hold, in words)."""
    folder = Path(path)
    if not folder.is_dir():
        raise R2GError(f"{flag} {folder}: no such folder; it must hold {holds}")
    missing = [name for name in files if not (folder / name).exists()]
    if missing:
        raise R2GError(f"{flag} {folder}: {', '.join(missing)} not found; the folder must hold {holds}")
    return folder


def require_hf_model(flag: str, path: str | Path, holds: str) -> Path:
    """A save_pretrained folder: config.json, weights (safetensors or bin) and a tokenizer."""
    folder = require_folder(flag, path, holds, ("config.json",))
    if not any(p.suffix in (".safetensors", ".bin") for p in folder.iterdir()):
        raise R2GError(f"{flag} {folder}: no weights (*.safetensors or *.bin) in it; the folder must hold {holds}")
    if not any((folder / name).exists() for name in ("tokenizer.json", "vocab.txt", "vocab.json", "spm.model",
                                                     "tokenizer.model")):
        raise R2GError(f"{flag} {folder}: no tokenizer files in it; the folder must hold {holds}")
    return folder


def fingerprint(folder: Path) -> dict[str, str]:
    """{"folder": its name, "sha256": one hash over its weight files (relative name + bytes, sorted)}: which
    weights made a number, recorded in metrics.json next to it."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    for path in files:
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return {"folder": folder.resolve().name, "sha256": digest.hexdigest()}


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Hugging Face libraries neither download nor ask the hub anything while this is open. huggingface_hub reads
    its switch once, at import, so its constant is set too (r2g imported transformers long before)."""
    from huggingface_hub import constants

    saved = {key: os.environ.get(key) for key in _OFFLINE}
    saved_constant = constants.HF_HUB_OFFLINE
    os.environ.update(_OFFLINE)
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_constant
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def tokenizer_v4_methods() -> None:
    """Give transformers 5 tokenizers back the two transformers 4 methods that radgraph 0.1.18's vendored
    allennlp (and bert-score 0.3.13, for an empty report) call: r2g pins transformers 5, they were written for 4. Both are the 4.x behaviour:
    `encode_plus(text, pair, **kw)` was `__call__` on one input (a list of tokens: their ids), and `build_inputs_with_special_tokens(ids)`
    wraps one sequence in the special tokens the tokenizer itself adds (for BERT: [CLS] ids [SEP])."""
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase as Base

    if not hasattr(Base, "encode_plus"):
        Base.encode_plus = _encode_one
    if not hasattr(Base, "build_inputs_with_special_tokens"):
        Base.build_inputs_with_special_tokens = _wrap_in_special_tokens


def _encode_one(self, text, text_pair=None, add_special_tokens: bool = True, **kwargs):
    if isinstance(text, (list, tuple)) and text_pair is None:
        # A list of tokens (as f1chexbert passes): transformers 4 converted them to ids one by one.
        ids = self.convert_tokens_to_ids(list(text))
        return {"input_ids": self.build_inputs_with_special_tokens(ids) if add_special_tokens else ids}
    return self(text, text_pair, add_special_tokens=add_special_tokens, **kwargs)


def _wrap_in_special_tokens(self, ids: list[int], pair: list[int] | None = None) -> list[int]:
    if pair is not None:
        raise NotImplementedError("only single sequences (all radgraph uses)")
    bare = self("a", add_special_tokens=False)["input_ids"]
    wrapped = self("a", add_special_tokens=True)["input_ids"]
    start = next(i for i in range(len(wrapped)) if wrapped[i:i + len(bare)] == bare)
    return wrapped[:start] + list(ids) + wrapped[start + len(bare):]

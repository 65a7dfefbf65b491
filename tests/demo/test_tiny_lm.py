"""The demo's small LM: trains on report text in seconds and loads through load_llm like any HF folder."""

from __future__ import annotations

import random

import pytest
import torch

from r2g.demo.tiny_lm import train_tiny_lm
from r2g.errors import R2GError
from r2g.model.llm import load_llm

TINY = dict(vocab_size=400, hidden=32, layers=1, heads=2, steps=40, seq_len=32, batch_size=8, lr=3e-3)


def reports(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    parts = [
        ["the heart is normal in size .", "mild cardiomegaly .", "the cardiomediastinal silhouette is normal ."],
        ["the lungs are clear .", "no focal consolidation .", "mild bibasilar atelectasis ."],
        ["no pleural effusion or pneumothorax .", "small left pleural effusion ."],
        ["no acute cardiopulmonary process .", "findings concerning for pneumonia ."],
    ]
    return [" ".join(rng.choice(p) for p in parts) for _ in range(n)]


def test_tiny_lm_trains_saves_and_loads(tmp_path):
    corpus = reports(200)
    result = train_tiny_lm(corpus, tmp_path / "lm", seed=0, **TINY)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in (tmp_path / "lm").iterdir()
    }
    assert result["loss_final"] < result["loss_init"] - 1.0
    assert result["ppl_final"] < result["ppl_init"]

    model, tokenizer = load_llm(tmp_path / "lm")
    specials = (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token)
    assert specials == ("<s>", "</s>", "<pad>", "<unk>")
    assert model.config.eos_token_id == tokenizer.eos_token_id and model.config.pad_token_id == tokenizer.pad_token_id
    ids = tokenizer(corpus[0])["input_ids"]
    assert ids[0] == tokenizer.bos_token_id  # like Llama's tokenizer
    assert tokenizer.decode(ids, skip_special_tokens=True) == corpus[0]

    # The saved weights are the trained ones: the held-out loss is reproduced after reloading.
    x = torch.tensor([[tokenizer.bos_token_id, *tokenizer(corpus[1], add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        assert model(input_ids=x, labels=x).loss.item() < result["loss_init"] - 1.0

    again = train_tiny_lm(corpus, tmp_path / "again", seed=0, **TINY)
    assert again["losses"] == result["losses"]  # deterministic for a seed


def test_finding_note_puts_every_finding_in_a_slot():
    from r2g.labels import CHEXPERT_LABELS
    from r2g.demo.tiny_lm import NORMAL_WORD, NOTE_WORDS, finding_note

    rng = random.Random(0)
    blank = {name: None for name in CHEXPERT_LABELS}
    assert finding_note(blank | {"No Finding": 1}, 16, rng) == " ".join([NORMAL_WORD] * 16)

    labels = blank | {"Cardiomegaly": 1, "Pleural Effusion": -1, "Edema": 0}  # uncertain counts, negative not
    for _ in range(20):
        words = finding_note(labels, 16, rng).split()
        assert len(words) == 16
        assert {"cardiomegaly", "effusion"} <= set(words) <= {"cardiomegaly", "effusion", NORMAL_WORD}
    assert len({finding_note(labels, 16, rng) for _ in range(10)}) > 1  # placement varies

    many = blank | {name: 1 for name in NOTE_WORDS}
    assert sorted(finding_note(many, 13, rng).split()) == sorted(NOTE_WORDS.values())
    with pytest.raises(R2GError, match="13 findings do not fit 12 slots"):
        finding_note(many, 12, rng)


def test_prompt_document_tokenizes_like_the_training_batch(tmp_path):
    """The LM is trained on documents; alignment feeds it build_batch's pieces. Their prompt tokens must match,
    or the frozen LM meets a prompt it has never read."""
    from r2g.config import PROMPT, ModelConfig
    from r2g.model.prompt import build_batch
    from r2g.demo.tiny_lm import prompt_document

    note = "normal cardiomegaly normal normal"
    docs = [prompt_document(note, report, PROMPT) for report in reports(100)]
    assert docs[0].startswith("Human: <Img>normal cardiomegaly") and "</Img> Generate" in docs[0]
    train_tiny_lm(docs, tmp_path / "lm", seed=0, **(TINY | {"steps": 1}))
    _, tokenizer = load_llm(tmp_path / "lm")
    doc_ids = tokenizer(docs[0])["input_ids"]
    note_ids = tokenizer(note, add_special_tokens=False)["input_ids"]
    batch = build_batch(tokenizer, [reports(100)[0]], len(note_ids), ModelConfig(max_report_tokens=200))
    batch_ids = batch["input_ids"][0].clone()
    batch_ids[batch["image_positions"][0]] = torch.tensor(note_ids)  # the note where the visual tokens go
    assert batch_ids[:-1].tolist() == doc_ids  # all but build_batch's trailing eos


def test_prompt_corpus_notes_what_the_labeler_reads():
    from r2g.config import PROMPT
    from r2g.demo.run import prompt_corpus

    texts = ["mild cardiomegaly . no pleural effusion .", "the lungs are clear . no acute cardiopulmonary process ."]
    docs, labels = prompt_corpus(texts, 6, PROMPT, seed=0)
    assert labels[0]["Cardiomegaly"] == 1 and labels[0]["Pleural Effusion"] == 0 and labels[1]["No Finding"] == 1
    notes = [d.split("<Img>")[1].split("</Img>")[0].split() for d in docs]
    assert set(notes[0]) <= {"cardiomegaly", "normal"} and "cardiomegaly" in notes[0] and len(notes[0]) == 6
    assert notes[1] == ["normal"] * 6
    assert docs[1].endswith("\nAssistant:" + texts[1])


def test_tiny_lm_command_trains_in_the_prompt_layout(tmp_path):
    import subprocess
    import sys

    (tmp_path / "reports.txt").write_text("\n".join(reports(80)))
    small = ["--steps", "2", "--hidden", "32", "--layers", "1", "--heads", "2", "--vocab-size", "1000"]
    for name, extra in (("plain", []), ("notes", ["--finding-notes", "4"])):
        done = subprocess.run([sys.executable, "-m", "r2g.cli", "tiny-lm", "--corpus", str(tmp_path / "reports.txt"),
                               "--out", str(tmp_path / name), *small, *extra], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    # The prompt's words occur in every document only with notes, so only then are they whole BPE tokens.
    pieces = {name: len(load_llm(tmp_path / name)[1](" comprehensive", add_special_tokens=False)["input_ids"])
              for name in ("plain", "notes")}
    assert pieces["notes"] == 1 < pieces["plain"]

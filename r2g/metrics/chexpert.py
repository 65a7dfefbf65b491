"""An offline, rule-based CheXpert-style labeler: 14 observations, each 1 / 0 / -1 / None per report.

Stages, as the CheXpert labeler (Irvin et al., 2019; stanfordmlgroup/chexpert-labeler, whose phrase and pattern
lists each phrase file here is checked against, differences noted in the file) but with sentence-scope rules
instead of dependency parses:

1. Mentions. `phrases/mention_<label>.txt` lists findings ("cardiomegaly", "effusion"), positive unless a
   trigger says otherwise; `phrases/uncertain_<label>.txt` lists findings that are at most uncertain
   (CheXpert: "pulmonary vascular congestion" -> Edema -1, a positive "chf" -> Cardiomegaly -1).
   `phrases/mention_other_findings.txt` is CheXpert's "other findings" list (its `no_finding.txt`: granuloma,
   calcification, degenerative changes, emphysema, ...): such a mention sets no label, but a positive or
   uncertain one stops No Finding. `phrases/anatomy_<label>.txt` lists structures ("heart size", "mediastinum")
   that only count through a qualifier in their clause (see `assign_qualifiers`): `qualifier_normal.txt`
   -> 0 ("heart size is normal", "upper limits of normal"), `qualifier_borderline.txt` -> -1 ("borderline"),
   `qualifier_enlarged.txt` -> a finding at the qualifier ("heart is not enlarged" -> 0), and, only when none of
   those applies, `qualifier_unchanged.txt` -> -1 ("the mediastinum is stable": CheXpert's rule that a stable
   silhouette may still be an enlarged one). A structure with no qualifier ("the mediastinum is seen") is no
   mention. `phrases/unmention_<label>.txt` drops mentions it overlaps ("pericardial effusion" is not
   Pleural Effusion).
2. Status. Triggers act within a clause: the sentence, cut at a scope breaker ("but", "which", ...).
   Pre-triggers (negation_pre, uncertainty_pre, uncertainty_evidence) reach forward to the clause end;
   post-triggers (negation_post, uncertainty_post) reach back at most POST_SCOPE_WORDS words. The
   trigger nearest the mention decides, so "possible effusion without pneumothorax" gives effusion -1 and
   pneumothorax 0. Evidential triggers ("suggest", "concerning for") inside a negation's scope carry the
   negation on: "no focal opacity to suggest pneumonia" -> Pneumonia 0. Words inside a pseudo-trigger
   ("no interval change in cardiomegaly") trigger nothing. Of overlapping phrases the longest wins
   ("not excluded" over "not", "cannot exclude" over "exclude"). `uncertainty_after_negation.txt` ("or",
   "and/or") hedges the mentions up to CONJUNCT_WORDS words either side of it unless a negation reaches them ("atelectasis or
   pneumonia" -> both -1, "no effusion or pneumothorax" -> both 0), as CheXpert checks those patterns only after
   its negation patterns.
3. Aggregation per report, as CheXpert's: 1 if any mention is positive, else -1 if any is uncertain, else 0
   if any is negated, else None. No Finding is 1 when no observation other than Support Devices, and no
   "other finding", is 1 or -1 (including when nothing is mentioned), else None (blank, as CheXpert writes it;
   the CE metrics count blank and 0 alike).

Phrase syntax (all files): one lowercase phrase per line, `#` comments; `word*` matches any word starting
with `word`; `...` matches up to 3 words within the sentence; hyphens and slashes count as spaces; matches
are whole words only.

Decisions (see the phrase files for the full lists):
- Phrases match whole words (`word*` for a prefix), where CheXpert matches raw substrings ("tube" inside
  "tuberculosis", "plate" inside "endplate", "mass" inside "massive"); CheXpert's stems become `stem*`.
- "The lungs are clear" mentions nothing (no Lung Opacity 0): it names no observation. CE metrics count
  only 1 as positive, so 0 versus blank never changes them; only 1 and -1 matter (the latter via No Finding).
- Lung Lesion is CheXpert's list (mass, nodule, nodular density/opacity, lump, cavitary lesion, carcinoma,
  neoplasm, tumor); a (calcified) granuloma or a calcified nodule is an "other finding": no label, no No Finding.
- Cardiomediastinal/mediastinal silhouettes label Enlarged Cardiomediastinum; heart/cardiac ones label
  Cardiomegaly. Aortic tortuosity labels nothing (nor does it in CheXpert); calcification is an other finding.
- Support Devices: lines, tubes, catheters, drains, pacemakers, leads, devices and orthopedic hardware (as
  CheXpert); sternotomy wires, surgical clips and stents are not (nor are they in CheXpert's list).
- "xxxx" (IU-Xray de-identification) is an ordinary word to the rules.
- Punctuation never breaks a scope: R2Gen cleaning deletes commas and semicolons, and the labels of a
  cleaned report should equal those of its raw text.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from r2g.errors import R2GError
from r2g.labels import CHEXPERT_LABELS, NEGATIVE, POSITIVE, UNCERTAIN

PHRASES_DIR = Path(__file__).parent / "phrases"
OBSERVATIONS = tuple(label for label in CHEXPERT_LABELS if label != "No Finding")
# CheXpert's label-less 15th observation: its positive or uncertain mentions only stop No Finding.
OTHER_FINDINGS = "Other Findings"
MENTIONED = (*OBSERVATIONS, OTHER_FINDINGS)
# Labels that do not stop No Finding from being 1.
NOT_A_FINDING = ("Support Devices",)
# How far back a post-trigger ("... is not seen") reaches, in words.
POST_SCOPE_WORDS = 6
# How far "or" / "and/or" reach either way, in words: its conjuncts ("pneumothorax or large pleural effusion").
CONJUNCT_WORDS = 3
# How far a qualifier before a structure reaches ("normal heart size and mediastinal contours": 3 words),
# and up to where it counts as adjacent, winning over one after ("normal heart size with increased markings").
PRE_QUALIFIER_WORDS = 3
ADJACENT_WORDS = 2

_WORD = "[a-z0-9]"
_SENTENCE_END = re.compile(r"[.?!]+(?=\s|$)|\n\s*\n")
_WORD_RE = re.compile(_WORD + "+")

# Trigger kinds: (status a trigger gives, direction).
_TRIGGER_FILES = {
    "negation_pre": (NEGATIVE, "pre"),
    "negation_post": (NEGATIVE, "post"),
    "uncertainty_pre": (UNCERTAIN, "pre"),
    "uncertainty_post": (UNCERTAIN, "post"),
    "uncertainty_evidence": (UNCERTAIN, "pre"),
    "uncertainty_after_negation": (UNCERTAIN, "both"),
    "pseudo_triggers": (None, None),
}
_QUALIFIER_FILES = {"qualifier_normal": NEGATIVE, "qualifier_borderline": UNCERTAIN, "qualifier_enlarged": POSITIVE,
                    "qualifier_unchanged": UNCERTAIN}
# Applies to a structure only when no other qualifier does (CheXpert: negation patterns before uncertainty).
_FALLBACK_QUALIFIER = "qualifier_unchanged"


def slug(label: str) -> str:
    """File-name form of a label: "Pleural Effusion" -> "pleural_effusion"."""
    return label.lower().replace(" ", "_")


@dataclass(frozen=True)
class Mention:
    """One matched phrase. Offsets index the normalized text (lowercase, hyphens and slashes as spaces)."""

    label: str  # one of OBSERVATIONS, or OTHER_FINDINGS (sets no label, only stops No Finding)
    text: str
    start: int
    end: int
    sentence: int
    status: int  # 1, 0 or -1
    cue: str | None  # the trigger or qualifier that set the status; None for a finding without trigger


@dataclass(frozen=True)
class _Match:
    start: int
    end: int
    text: str
    kind: str


def _read_phrases(name: str) -> list[str]:
    path = PHRASES_DIR / f"{name}.txt"
    if not path.exists():
        return []
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [normalize(line) for line in lines if line]


def _phrase_pattern(phrase: str) -> str:
    """`word*` -> any word starting with word; `...` -> up to 3 words; spaces -> any whitespace."""
    pattern, gap = "", False
    for token in phrase.split():
        if token == "...":
            gap = True
            continue
        word = re.escape(token.rstrip("*")) + (f"{_WORD}*" if token.endswith("*") else "")
        if pattern:
            pattern += rf"\s+(?:[^\s.?!]+\s+){{0,3}}" if gap else r"\s+"
        pattern, gap = pattern + word, False
    return pattern


def _compile(phrases: list[str]) -> re.Pattern | None:
    """One regex for a phrase list, whole words only; longer phrases first so they win at a position."""
    if not phrases:
        return None
    alternatives = sorted({_phrase_pattern(p) for p in phrases}, key=len, reverse=True)
    return re.compile(rf"(?<!{_WORD})(?:{'|'.join(alternatives)})(?!{_WORD})")


def _find(pattern: re.Pattern | None, text: str, kind: str) -> list[_Match]:
    if pattern is None:
        return []
    return [_Match(m.start(), m.end(), m.group(), kind) for m in pattern.finditer(text)]


def _drop_contained(matches: list[_Match]) -> list[_Match]:
    """Keep the longest of overlapping phrases: drop a match lying inside a strictly longer one."""
    kept = []
    for m in sorted(matches, key=lambda m: m.end - m.start, reverse=True):
        if not any(k.start <= m.start and m.end <= k.end and (k.end - k.start) > (m.end - m.start) for k in kept):
            kept.append(m)
    return sorted(kept, key=lambda m: m.start)


def normalize(text: str) -> str:
    """Lowercase; hyphens and slashes become spaces ("air-space"); apostrophes go ("can't" -> "cant")."""
    return re.sub(r"['\u2019]", "", text.lower()).replace("-", " ").replace("/", " ")


class _Rules:
    """All phrase lists, compiled once."""

    def __init__(self) -> None:
        self.findings = {label: _compile(_read_phrases(f"mention_{slug(label)}")) for label in MENTIONED}
        self.hedged = {label: _compile(_read_phrases(f"uncertain_{slug(label)}")) for label in MENTIONED}
        self.anatomy = {label: _compile(_read_phrases(f"anatomy_{slug(label)}")) for label in OBSERVATIONS}
        self.unmentions = {label: _compile(_read_phrases(f"unmention_{slug(label)}")) for label in MENTIONED}
        self.triggers = {name: _compile(_read_phrases(name)) for name in _TRIGGER_FILES}
        self.qualifiers = {name: _compile(_read_phrases(name)) for name in _QUALIFIER_FILES}
        self.breakers = _compile(_read_phrases("scope_breakers"))
        if any(p is None for p in self.findings.values()) or self.breakers is None:
            raise R2GError(f"phrase files missing in {PHRASES_DIR}: reinstall r2g (package data phrases/*.txt)")


@lru_cache(maxsize=1)
def _rules() -> _Rules:
    return _Rules()


class _Report:
    """One normalized report with its sentences, clauses and triggers, ready to classify mentions."""

    def __init__(self, text: str, rules: _Rules) -> None:
        self.text = normalize(text)
        self.sentence_ends = [m.end() for m in _SENTENCE_END.finditer(self.text)] + [len(self.text) + 1]
        self.breaks = [m.start() for m in rules.breakers.finditer(self.text)]
        found = [m for name, p in rules.triggers.items() for m in _find(p, self.text, name)]
        self.triggers = [m for m in _drop_contained(found) if m.kind != "pseudo_triggers"]
        self.negations = [m for m in self.triggers if m.kind == "negation_pre"]
        found = _drop_contained([m for name, p in rules.qualifiers.items() for m in _find(p, self.text, name)])
        self.qualifiers = [q for q in found if q.kind != _FALLBACK_QUALIFIER]
        self.fallback_qualifiers = [q for q in found if q.kind == _FALLBACK_QUALIFIER]
        self.word_starts = [m.start() for m in _WORD_RE.finditer(self.text)]

    def sentence(self, pos: int) -> int:
        return bisect.bisect_right(self.sentence_ends, pos)

    def same_clause(self, a: int, b: int) -> bool:
        """True when positions a <= b share a sentence and no scope breaker starts between them."""
        if self.sentence(a) != self.sentence(b):
            return False
        i = bisect.bisect_left(self.breaks, a)
        return i == len(self.breaks) or self.breaks[i] >= b

    def words_between(self, a: int, b: int) -> int:
        return bisect.bisect_left(self.word_starts, b) - bisect.bisect_left(self.word_starts, a)

    def covers(self, trigger: _Match, start: int, end: int) -> bool:
        """Whether a trigger's scope reaches the span [start, end): a pre-trigger's to the clause end, a
        post-trigger's back POST_SCOPE_WORDS words, a conjunction's ("both") only its neighbours either side."""
        direction = _TRIGGER_FILES[trigger.kind][1]
        if direction in ("pre", "both") and trigger.end <= start:
            limit = CONJUNCT_WORDS if direction == "both" else math.inf
            return self.same_clause(trigger.end, start) and self.words_between(trigger.end, start) <= limit
        limit = CONJUNCT_WORDS if direction == "both" else POST_SCOPE_WORDS
        return (direction != "pre" and end <= trigger.start and self.same_clause(start, trigger.start)
                and self.words_between(end, trigger.start) <= limit)

    def status(self, start: int, end: int) -> tuple[int, str | None]:
        """Status of a finding at [start, end): the nearest covering trigger decides; none -> positive."""
        covering = [t for t in self.triggers if self.covers(t, start, end)]
        negated = any(_TRIGGER_FILES[t.kind][0] == NEGATIVE for t in covering)
        best, best_gap = None, None
        for t in covering:
            if t.kind == "uncertainty_after_negation" and negated:
                continue  # "no effusion or pneumothorax": the negation wins
            if t.kind == "uncertainty_evidence" and any(self.covers(n, t.start, t.end) for n in self.negations):
                continue  # "no opacity to suggest pneumonia": the negation reaches through
            gap = start - t.end if t.start < start else t.start - end
            # Ties go to uncertainty ("versus" is both a pre- and a post-trigger).
            if best_gap is None or gap < best_gap or (gap == best_gap and _TRIGGER_FILES[t.kind][0] == UNCERTAIN):
                best, best_gap = t, gap
        if best is None:
            return POSITIVE, None
        return _TRIGGER_FILES[best.kind][0], best.text

    def following_qualifier(self, qualifiers: list[_Match], start: int, end: int) -> _Match | None:
        """The first qualifier after [start, end) in its clause: "heart size is mildly enlarged"."""
        for q in qualifiers:
            if q.start >= end:
                return q if self.same_clause(end, q.start) else None
        return None

    def preceding_qualifier(self, qualifiers: list[_Match], start: int) -> _Match | None:
        """The last qualifier before `start` in its clause, at most PRE_QUALIFIER_WORDS words away."""
        before = [q for q in qualifiers if q.end <= start]
        if before and self.same_clause(before[-1].end, start):
            if self.words_between(before[-1].end, start) <= PRE_QUALIFIER_WORDS:
                return before[-1]
        return None

    def assign_qualifiers(self, spans: list[tuple[int, int]]) -> list[_Match | None]:
        """The qualifier of each anatomy span: a normal/borderline/enlarged one if its clause has one, else a
        stable/unchanged one ("heart size is normal and stable" is normal), else None."""
        chosen = self._assign(self.qualifiers, spans)
        rest = [i for i, q in enumerate(chosen) if q is None]
        for i, q in zip(rest, self._assign(self.fallback_qualifiers, [spans[i] for i in rest])):
            chosen[i] = q
        return chosen

    def _assign(self, qualifiers: list[_Match], spans: list[tuple[int, int]]) -> list[_Match | None]:
        """The qualifier of each anatomy span, or None when its clause gives no size or normality.

        A structure takes the qualifier right before it ("normal heart size", "enlargement of the heart"),
        else the next one after it ("heart and mediastinum normal"), else one a few words before it
        ("normal heart size and mediastinal contours"). A qualifier that follows another structure belongs to
        that one: in "heart size mildly enlarged stable mediastinal contours" (cleaned text has no commas)
        the mediastinum is not enlarged; but one that touches a structure with no qualifier after it belongs
        to that one: in "stable cardiomediastinal silhouette with normal heart size" the silhouette is not normal.
        """
        preceding = [self.preceding_qualifier(qualifiers, s) for s, _ in spans]
        following = [self.following_qualifier(qualifiers, s, e) for s, e in spans]
        touching = {before for before, after, (s, _) in zip(preceding, following, spans)
                    if before is not None and after is None and self.words_between(before.end, s) == 0}
        following = [None if after in touching else after for after in following]
        claimed = {q for q in following if q is not None}
        chosen = []
        for before, after, (start, _) in zip(preceding, following, spans):
            if before in claimed:
                before = None
            adjacent = before is not None and self.words_between(before.end, start) <= ADJACENT_WORDS
            chosen.append(before if adjacent else after or before)
        return chosen


def _spans(pattern: re.Pattern | None, unmention: re.Pattern | None, text: str) -> list[re.Match]:
    """Matches of `pattern` that no unmention phrase overlaps."""
    if pattern is None:
        return []
    blocked = [(m.start(), m.end()) for m in unmention.finditer(text)] if unmention else []
    return [m for m in pattern.finditer(text) if not any(s < m.end() and m.start() < e for s, e in blocked)]


def mentions(text: str) -> list[Mention]:
    """Every mention in a report with its status and the cue that decided it (for debugging rules)."""
    rules = _rules()
    report = _Report(text, rules)
    found = []
    for label in MENTIONED:
        unmention = rules.unmentions[label]
        for hedged, pattern in ((False, rules.findings[label]), (True, rules.hedged[label])):
            for m in _spans(pattern, unmention, report.text):
                status, cue = report.status(m.start(), m.end())
                if hedged and status == POSITIVE:  # uncertain_<label>.txt: at most -1 ("chf" -> Cardiomegaly)
                    status, cue = UNCERTAIN, f"uncertain_{slug(label)}.txt"
                found.append(Mention(label, m.group(), m.start(), m.end(), report.sentence(m.start()), status, cue))
    # Structures of all labels at once: a qualifier claimed by one structure is not another's.
    anatomy = [(label, m) for label in OBSERVATIONS
               for m in _spans(rules.anatomy[label], rules.unmentions[label], report.text)]
    qualifiers = report.assign_qualifiers([(m.start(), m.end()) for _, m in anatomy])
    for (label, m), q in zip(anatomy, qualifiers):
        if q is None:
            continue  # "the mediastinum is stable": says nothing about size
        if q.kind == "qualifier_enlarged":
            status, cue = report.status(q.start, q.end)  # "heart is not enlarged": triggers act on the qualifier
            cue = cue or q.text
        else:
            status, cue = _QUALIFIER_FILES[q.kind], q.text
        found.append(Mention(label, m.group(), m.start(), m.end(), report.sentence(m.start()), status, cue))
    return sorted(found, key=lambda m: (m.start, m.label))


def aggregate(found: list[Mention]) -> dict[str, int | None]:
    """Per-report labels from mentions: 1 > -1 > 0 > None per observation, then the No Finding rule."""
    labels: dict[str, int | None] = {}
    for label in MENTIONED:
        statuses = {m.status for m in found if m.label == label}
        labels[label] = next((s for s in (POSITIVE, UNCERTAIN, NEGATIVE) if s in statuses), None)
    abnormal = any(labels[label] in (POSITIVE, UNCERTAIN) for label in MENTIONED if label not in NOT_A_FINDING)
    labels["No Finding"] = None if abnormal else POSITIVE
    return {label: labels[label] for label in CHEXPERT_LABELS}


def label_report(text: str) -> dict[str, int | None]:
    """The 14 CheXpert labels (1 / 0 / -1 / None) of one report, raw or R2Gen-cleaned."""
    return aggregate(mentions(text))


def label_reports(texts: list[str]) -> list[dict[str, int | None]]:
    return [label_report(t) for t in texts]


LABELERS = ("rules", "chexbert")


def load_labeler(name: str = "rules", weights: str | None = None) -> Callable[[list[str]], list[dict]]:
    """A function list[str] -> list[label dict]. "rules": this module. "chexbert": a local CheXbert model.

    CheXbert weights cannot be downloaded here, so `weights` must be a folder holding `chexbert.pth` (the
    CheXbert repo's checkpoint) and `bert-base-uncased/` (its tokenizer and config files).
    """
    if name == "rules":
        return label_reports
    if name == "chexbert":
        return _load_chexbert(weights)
    raise R2GError(f"unknown labeler '{name}': choose one of {', '.join(LABELERS)}")


def _chexbert_paths(weights: str | None) -> tuple[Path, Path]:
    how = ("CheXbert needs a local checkpoint: pass --labeler-weights PATH, a folder with chexbert.pth "
           "and a bert-base-uncased/ tokenizer+config folder, or use the built-in labeler (--labeler rules)")
    if not weights:
        raise R2GError(how)
    folder = Path(weights)
    checkpoint, bert = folder / "chexbert.pth", folder / "bert-base-uncased"
    if not folder.is_dir():
        raise R2GError(f"--labeler-weights {folder}: no such folder. {how}")
    if not checkpoint.is_file():
        raise R2GError(f"--labeler-weights {folder}: chexbert.pth not found in it. {how}")
    if not (bert / "config.json").is_file() or not (bert / "vocab.txt").is_file():
        raise R2GError(f"--labeler-weights {folder}: bert-base-uncased/config.json and vocab.txt not found. {how}")
    return checkpoint, bert


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _load_weights(checkpoint: Path) -> dict:
    """The state dict of a CheXbert .pth, unpickled with weights_only=True: tensors and plain containers
    only, so a downloaded file cannot run code while it loads."""
    import pickle

    import torch

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = re.search(r"GLOBAL (\S+) was not an allowed global", str(e))
        if unsafe:
            raise R2GError(f"{checkpoint}: refused to load: it refers to {unsafe.group(1)}, not only to weights, and "
                           "unpickling it could run code. Use the CheXbert repo's own checkpoint, or one re-saved "
                           "as a plain state dict (torch.save(model.state_dict(), path))") from None
        raise R2GError(f"{checkpoint}: not a readable torch checkpoint") from None
    except (RuntimeError, EOFError) as e:
        raise R2GError(f"{checkpoint}: not a readable torch checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict):
        raise R2GError(f"{checkpoint}: not a CheXbert checkpoint (holds a {type(state).__name__}, not a state dict)")
    return state.get("model_state_dict", state)


def _load_chexbert(weights: str | None) -> "CheXbert":
    """Load CheXbert lazily (torch and transformers are imported only here).

    CheXbert: BERT-base, 13 heads of 4 classes (blank, positive, negative, uncertain) and a 14th head of 2
    (blank, positive) for No Finding, in CHEXPERT_LABELS order; the state dict keys are `module.bert.*`
    and `module.linear_heads.{0..13}.*`.
    """
    checkpoint, bert_dir = _chexbert_paths(weights)
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    state = _load_weights(checkpoint)
    tokenizer = BertTokenizer.from_pretrained(bert_dir)
    bert = BertModel(BertConfig.from_pretrained(bert_dir))
    heads = torch.nn.ModuleList(torch.nn.Linear(bert.config.hidden_size, 4) for _ in range(13))
    heads.append(torch.nn.Linear(bert.config.hidden_size, 2))
    try:
        # strict=False only for the position_ids buffer, which some transformers versions keep in state dicts.
        result = bert.load_state_dict(_strip(state, "module.bert."), strict=False)
        missing = [k for k in result.missing_keys if "position_ids" not in k]
        if missing:
            raise RuntimeError(f"missing {missing[0]} and {len(missing) - 1} more BERT weights")
        heads.load_state_dict(_strip(state, "module.linear_heads."))
    except RuntimeError as e:
        raise R2GError(f"{checkpoint}: not a CheXbert checkpoint ({str(e).splitlines()[0]})") from None
    return CheXbert(tokenizer, bert.eval(), heads.eval())


class CheXbert:
    """A loaded CheXbert: called on texts, their 14 labels; `encode` also gives each text's [CLS] vector (the
    embedding RadCliQ's SembScore compares)."""

    # Class index -> label value: 0 blank, 1 positive, 2 negative, 3 uncertain.
    VALUES = (None, POSITIVE, NEGATIVE, UNCERTAIN)

    def __init__(self, tokenizer, bert, heads):
        self.tokenizer, self.bert, self.heads = tokenizer, bert, heads

    def __call__(self, texts: list[str]) -> list[dict]:
        return self.encode(texts)[0]

    def encode(self, texts: list[str]) -> tuple[list[dict], "torch.Tensor"]:
        import torch

        labels, vectors = [], []
        with torch.no_grad():
            for start in range(0, len(texts), 16):
                batch = self.tokenizer(texts[start:start + 16], padding=True, truncation=True, max_length=512,
                                       return_tensors="pt")
                cls = self.bert(**batch).last_hidden_state[:, 0]
                classes = torch.stack([head(cls).argmax(-1) for head in self.heads], dim=1).tolist()
                labels += [{lab: self.VALUES[c] for lab, c in zip(CHEXPERT_LABELS, row)} for row in classes]
                vectors.append(cls)
        return labels, torch.cat(vectors) if vectors else torch.zeros(0)

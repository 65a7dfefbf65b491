"""GREEN (Ostmeier et al., 2024): a causal LM judge counts a candidate report's clinically significant errors
and the findings it matches; GREEN = matched / (matched + significant errors), 0 when nothing matches.

There is no GREEN package on PyPI (the authors' `green_score` lives on GitHub only), so r2g carries the
published parts: the prompt (`make_prompt`, reports cut to their first 1,024 words), the chat template the
judge was trained with (`<|user|>` / `<|assistant|>` turns), greedy decoding to 2,048 tokens in all with left
padding, batches of 8, the response cleaning and the parser of the counts (`parse_counts`). The judge is
`--green DIR`, a local causal LM folder (the published one: StanfordAIMI/GREEN-radllama2-7b).

Cost (not measured here: no GPU and no judge weights on r2g's machines): the judge reads a ~600-token prompt
plus both reports and decodes greedily until it stops or the sequence reaches 2,048 tokens, i.e. up to ~1,400 new
tokens per report. With a 7B judge that is a GPU job of hours for MIMIC-CXR's 3,858 test reports, and
impractical on a CPU. `green` is the mean over reports.
"""

from __future__ import annotations

import re
from pathlib import Path

from r2g.metrics.local_weights import fingerprint, offline, require_hf_model

HOLDS = "a causal LM judge saved with save_pretrained (config.json, weights, tokenizer), e.g. GREEN-radllama2-7b"
MAX_LENGTH = 2048
BATCH_SIZE = 8
MAX_WORDS = 1024
SIGNIFICANT, MATCHED = "Clinically Significant Errors", "Matched Findings"
SUBCATEGORIES = "abcdef"
CHAT_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if message['from'] == 'human' %}\n"
    "{{ '<|user|>\\n' + message['value'] + eos_token }}\n"
    "{% elif message['from'] == 'system' %}\n"
    "{{ '<|system|>\\n' + message['value'] + eos_token }}\n"
    "{% elif message['from'] == 'gpt' %}\n"
    "{{ '<|assistant|>\\n'  + message['value'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}"
)
_FORMAT = """    [Explanation]:
    <Explanation>

    [Clinically Significant Errors]:
    (a) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>
    ....
    (f) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>

    [Clinically Insignificant Errors]:
    (a) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>
    ....
    (f) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>

    [Matched Findings]:
    <The number of matched findings>. <Finding 1>; <Finding 2>; ...; <Finding n>"""
_PROMPT = """Objective: Evaluate the accuracy of a candidate radiology report in comparison to a reference radiology report composed by expert radiologists.

    Process Overview: You will be presented with:

    1. The criteria for making a judgment.
    2. The reference radiology report.
    3. The candidate radiology report.
    4. The desired format for your assessment.

    1. Criteria for Judgment:

    For each candidate report, determine:

    The count of clinically significant errors.
    The count of clinically insignificant errors.

    Errors can fall into one of these categories:

    a) False report of a finding in the candidate.
    b) Missing a finding present in the reference.
    c) Misidentification of a finding's anatomic location/position.
    d) Misassessment of the severity of a finding.
    e) Mentioning a comparison that isn't in the reference.
    f) Omitting a comparison detailing a change from a prior study.
    Note: Concentrate on the clinical findings rather than the report's writing style. Evaluate only the findings that appear in both reports.

    2. Reference Report:
    {reference}

    3. Candidate Report:
    {candidate}

    4. Reporting Your Assessment:

    Follow this specific format for your output, even if no errors are found:
    ```
{format}
    ```
"""


def make_prompt(reference: str, candidate: str) -> str:
    """The published GREEN prompt, each report cut to its first MAX_WORDS words."""
    cut = lambda text: " ".join(text.split()[:MAX_WORDS])  # noqa: E731
    return _PROMPT.format(reference=cut(reference), candidate=cut(candidate), format=_FORMAT)


def clean_response(response: str) -> str:
    """The judge's answer alone: after the last <|assistant|> turn (and the explanation header), special
    tokens dropped, as green_score's clean_responses."""
    if "[Explanation]:" in response:
        response = response.split("<|assistant|>")[-1]
        # The package tests `("[Explanation]:\n    <Explanation>\n" or ...) in response`: only the first string.
        part = 1 if "[Explanation]:\n    <Explanation>\n" in response else -1
        response = response.split("[Explanation]:")[part]
    return response.split("<|assistant|>")[-1].replace("</s>", "").replace("<unk>", "")


def _section(text: str, category: str) -> str | None:
    """A section's body: from its `[Category]:` header to the first blank line (or the end)."""
    found = re.search(rf"\[{category}\]:\s*(.*?)(?:\n\s*\n|\Z)", text, re.DOTALL)
    return found.group(1) if found else None


def parse_counts(response: str) -> tuple[list[int], int]:
    """(significant errors in each of (a)-(f), matched findings) from a cleaned response. A missing section, or
    one starting "No", counts 0; a sub-category line is `(x) <type>: <n>. ...` (or numbered (1)-(6))."""
    errors = [0] * len(SUBCATEGORIES)
    body = _section(response, SIGNIFICANT)
    if body is not None and not body.startswith("No"):
        lines = sorted(re.findall(r"\([a-f]\) .*", body))
        markers = [f"({c}) " for c in SUBCATEGORIES]
        if not lines:
            lines = sorted(re.findall(r"\([1-6]\) .*", body))
            markers = [f"({i}) " for i in range(1, 7)]
        for k, marker in enumerate(markers):
            for line in lines:
                count = re.search(r"(?<=: )\b\d+\b(?=\.)", line) if line.startswith(marker) else None
                if count:
                    errors[k] = int(count.group(0))
    matched = 0
    body = _section(response, MATCHED)
    if body is not None and not body.startswith("No"):
        counts = re.findall(r"^\b\d+\b(?=\.)", body, re.MULTILINE)
        matched = int(counts[0]) if counts else 0
    return errors, matched


def green_score(response: str) -> float:
    errors, matched = parse_counts(response)
    return matched / (matched + sum(errors)) if matched else 0.0


class GreenScorer:
    def __init__(self, path: str | Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.folder = require_hf_model("--green", path, HOLDS)
        self.weights = fingerprint(self.folder)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        with offline():
            self.model = AutoModelForCausalLM.from_pretrained(
                self.folder, dtype=torch.float16 if self.device == "cuda" else torch.float32).to(self.device).eval()
            # As green_score loads it: an EOS appended to every encoded prompt, padding on the left.
            self.tokenizer = AutoTokenizer.from_pretrained(self.folder, padding_side="left", add_eos_token=True)
        self.tokenizer.chat_template = CHAT_TEMPLATE
        self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.clean_up_tokenization_spaces = True

    def responses(self, refs: list[str], preds: list[str]) -> list[str]:
        import torch

        prompts = [make_prompt(r, p) for r, p in zip(refs, preds)]
        out = []
        for start in range(0, len(prompts), BATCH_SIZE):
            chats = [[{"from": "human", "value": p}, {"from": "gpt", "value": ""}]
                     for p in prompts[start:start + BATCH_SIZE]]
            texts = [self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                   max_length=MAX_LENGTH).to(self.device)
            with torch.no_grad():
                generated = self.model.generate(**batch, eos_token_id=self.tokenizer.eos_token_id,
                                                pad_token_id=self.tokenizer.pad_token_id, max_length=MAX_LENGTH,
                                                do_sample=False)
            out += [clean_response(r) for r in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]
        return out

    def score(self, refs: list[str], preds: list[str]) -> list[float]:
        return [green_score(r) for r in self.responses(refs, preds)]

"""Language metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr) as the R2Gen family computes them.

R2Gen convention: the already-cleaned strings go straight to pycocoevalcap's scorers as `{id: [text]}`,
with no PTB tokenizer; this reproduces the published R2Gen/R2GenGPT figures.

METEOR does not use pycocoevalcap's wrapper. That wrapper never reads the JVM's stderr pipe, passes
newlines (and `|||` in references) through, which desynchronises the line protocol, blocks on `readline`
with no timeout, and keeps its lock held when a read fails, so its `__del__` then waits forever. `Meteor`
below runs the same jar with the same command and protocol, so scores are equal, but with sanitised
input, a reader thread, a deadline on every reply, and a clear `R2GError` instead of a hang.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import shutil
import subprocess
import tempfile
import threading
from importlib.util import find_spec

from pycocoevalcap.bleu.bleu_scorer import BleuScorer
from pycocoevalcap.cider.cider_scorer import CiderScorer
from pycocoevalcap.rouge.rouge import Rouge

from r2g.errors import R2GError
from r2g.metrics.bootstrap import StudyStats
from r2g.metrics.nlg_stats import CiderStats, bleu_stats, meteor_stats, rouge_stats

_NO_JAVA = "METEOR needs Java 17+: apt-get install openjdk-17-jre-headless, or pass meteor=False / --no-meteor"


def check_pairs(refs: dict[str, str], preds: dict[str, str]) -> None:
    """Raise R2GError unless refs and preds have the same ids and every value is a string."""
    missing_preds = [k for k in refs if k not in preds]
    missing_refs = [k for k in preds if k not in refs]
    if missing_preds or missing_refs:
        raise R2GError(
            "references and predictions must have the same ids: "
            f"{len(missing_preds)} id(s) without a prediction (first: {missing_preds[:5]}), "
            f"{len(missing_refs)} id(s) without a reference (first: {missing_refs[:5]}); "
            "score the same test split that was generated"
        )
    if not refs:
        raise R2GError("no reports to score: references and predictions are empty")
    for name, texts in (("reference", refs), ("prediction", preds)):
        bad = [k for k, v in texts.items() if not isinstance(v, str)]
        if bad:
            raise R2GError(f"{name} for id {bad[0]!r} is {type(texts[bad[0]]).__name__}, expected a string")


def compute_nlg(refs: dict[str, str], preds: dict[str, str], meteor: bool = True) -> dict[str, float]:
    """BLEU_1..4, METEOR, ROUGE_L and CIDEr of `preds` against `refs` (id -> cleaned report).

    Empty predictions are allowed and score 0. With `meteor=False` the METEOR key is absent. METEOR
    uses one JVM per process, started on first use and reused (its startup takes 6-11 s on 2 cores).
    """
    return compute_nlg_with_stats(refs, preds, meteor)[0]


def compute_nlg_with_stats(refs: dict[str, str], preds: dict[str, str],
                           meteor: bool = True) -> tuple[dict[str, float], list[StudyStats]]:
    """`compute_nlg`'s scores, and each metric's per-study statistics in `refs` order (r2g.metrics.bootstrap),
    taken from the same scorer runs: the scores are the scorers' own, the statistics only re-weight them."""
    check_pairs(refs, preds)
    gts = {k: [refs[k]] for k in refs}
    res = {k: [preds[k]] for k in refs}
    bleu_scorer = BleuScorer(n=4)  # what Bleu(4).compute_score runs, kept to read its per-study counts
    for k in refs:
        bleu_scorer += (res[k][0], gts[k])
    bleu, _ = bleu_scorer.compute_score(option="closest", verbose=0)
    scores = {f"BLEU_{n + 1}": float(b) for n, b in enumerate(bleu)}
    stats: list[StudyStats] = [bleu_stats(bleu_scorer)]
    if meteor:
        corpus, _, lines = shared_meteor().score_with_stats(refs, preds)
        scores["METEOR"] = corpus
        stats.append(meteor_stats(lines))
    rouge, per_study = Rouge().compute_score(gts, res)
    scores["ROUGE_L"] = float(rouge)
    stats.append(rouge_stats(per_study))
    cider_scorer = CiderScorer(n=4, sigma=6.0)  # what Cider().compute_score runs
    for k in refs:
        cider_scorer += (res[k][0], gts[k])
    scores["CIDEr"] = float(cider_scorer.compute_score()[0])
    stats.append(CiderStats(cider_scorer))
    return scores, stats


def meteor_jar() -> str:
    """Path of the meteor-1.5.jar bundled with pycocoevalcap (its paraphrase table sits next to it)."""
    spec = find_spec("pycocoevalcap.meteor")
    jar = os.path.join(list(spec.submodule_search_locations)[0], "meteor-1.5.jar") if spec else ""
    if not os.path.isfile(jar):
        raise R2GError("METEOR jar not found in the pycocoevalcap package: pip install 'pycocoevalcap==1.2'")
    return jar


def _sanitize(text: str) -> str:
    """One protocol field: no `|||` (the field separator) and no newline (the record separator)."""
    return " ".join(text.replace("|||", " ").split())


class Meteor:
    """METEOR 1.5 in a long-lived JVM, spoken to over stdio with a deadline on every reply.

    Protocol (as pycocoevalcap): `SCORE ||| ref ||| hyp` answers one line of statistics per pair; then
    `EVAL ||| stats_1 ||| ... ||| stats_n` answers n segment scores and a final line with the corpus
    score (METEOR over the pooled statistics, not the mean of segment scores).
    """

    def __init__(self, startup_timeout: float = 180.0, reply_timeout: float = 60.0):
        # The first reply waits for the JVM to start and load the 62 MB paraphrase table.
        self.startup_timeout = startup_timeout
        self.reply_timeout = reply_timeout
        java = shutil.which("java")
        if java is None:
            raise R2GError(_NO_JAVA)
        jar = meteor_jar()
        # stderr goes to a file: a pipe nobody reads can fill up and stall the JVM.
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            [java, "-jar", "-Xmx2G", os.path.basename(jar), "-", "-", "-stdio", "-l", "en", "-norm"],
            cwd=os.path.dirname(jar), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
        )
        self._replied = False
        self._lock = threading.Lock()
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        try:
            for line in self._proc.stdout:
                self._lines.put(line)
        finally:
            self._lines.put(None)  # EOF: the JVM exited

    def alive(self) -> bool:
        return self._proc.poll() is None

    def score(self, refs: dict[str, str], preds: dict[str, str]) -> tuple[float, list[float]]:
        """(corpus METEOR, per-report METEOR in `refs` order). Kills the JVM and raises R2GError on failure."""
        return self.score_with_stats(refs, preds)[:2]

    def score_with_stats(self, refs: dict[str, str], preds: dict[str, str]) -> tuple[float, list[float], list[str]]:
        """`score`, and the jar's statistics line for each pair (r2g.metrics.nlg_stats.meteor_stats)."""
        check_pairs(refs, preds)
        ids = list(refs)
        with self._lock:
            if not self.alive():
                raise self._exited()
            try:
                self._send(f"SCORE ||| {_sanitize(refs[k])} ||| {_sanitize(preds[k])}" for k in ids)
                stats = [self._reply() for _ in ids]
                for line in stats:
                    self._numbers(line)
                self._send(["EVAL ||| " + " ||| ".join(stats)])
                per_report = [self._numbers(self._reply())[0] for _ in ids]
                corpus = self._numbers(self._reply())[0]
            except BaseException:
                self.close()  # a half-read reply would desynchronise the next call
                raise
        return corpus, per_report, stats

    def _send(self, lines) -> None:
        """Write from a thread: a JVM that stops reading must not block us past the reply deadline."""
        data = "".join(line + "\n" for line in lines).encode()

        def write() -> None:
            try:
                self._proc.stdin.write(data)
                self._proc.stdin.flush()
            except (OSError, ValueError):
                pass  # the JVM died or was closed; the reader reports it as EOF

        threading.Thread(target=write, daemon=True).start()

    def _reply(self) -> str:
        timeout = self.reply_timeout if self._replied else self.startup_timeout
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise R2GError(
                f"METEOR (java) gave no answer within {timeout:g} s and was stopped; rerun, "
                "or pass meteor=False / --no-meteor to skip it"
            ) from None
        if line is None:
            raise self._exited()
        self._replied = True
        return line.decode(errors="replace").strip()

    def _numbers(self, line: str) -> list[float]:
        """Parse a reply; anything else means the protocol went out of step."""
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            values = []
        if not values:
            raise R2GError(f"METEOR (java) answered {line[:200]!r} where numbers were expected; "
                           f"its error output: {self._stderr_tail()!r}")
        return values

    def _exited(self) -> R2GError:
        return R2GError(f"METEOR (java) exited unexpectedly; its last error output: {self._stderr_tail()!r}")

    def _stderr_tail(self) -> str:
        if self._stderr.closed:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-500:]

    def close(self) -> None:
        """Stop the JVM (idempotent)."""
        if self.alive():
            self._proc.kill()
        self._proc.wait()
        self._reader.join(timeout=5)  # it ends at EOF; closing stdout under it could lose the EOF mark
        for stream in (self._proc.stdin, self._proc.stdout, self._stderr):
            with contextlib.suppress(OSError):  # stdin may hold unsent bytes for a dead JVM
                stream.close()

    def __enter__(self) -> Meteor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_shared: Meteor | None = None
_shared_lock = threading.Lock()


def shared_meteor() -> Meteor:
    """The process-wide METEOR JVM, (re)started when needed; closed at interpreter exit."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.alive():
            _shared = Meteor()
        return _shared


@atexit.register
def close_shared_meteor() -> None:
    global _shared
    if _shared is not None:
        _shared.close()
        _shared = None

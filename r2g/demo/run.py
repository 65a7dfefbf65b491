"""The end-to-end demo on a laptop CPU, through the same code a real run uses:

    synthetic MIMIC-style studies → shards → tiny pretrained LM → pretrained Swin → delta alignment
      (DeepSpeed ZeRO-2) → evaluation on the test split, and the same model trained and evaluated with
      blanked images.

The blank-image twin keeps the demo honest: report text alone gets the common sentences right, so only the
clinical-efficacy gap between the two says whether the model reads the images.

No pretrained weights can be downloaded here, so the demo makes small stand-ins for both (bench/RESULTS.md
has the measurements behind each choice):
- the LLM is a 4-layer Llama trained on the train reports in the prompt's layout, with a note of the
  report's findings where the visual tokens go (`tiny_lm.finding_note`), so that, like a large LLM, it reads
  what sits between its `<Img>` tags;
- the Swin is narrow and shallow, 128 px, and pretrained on the train images against the findings the
  rules labeler reads in the train reports (`demo.pretrain_vision`), as chest X-ray encoders are.
Test reports and labels are never used before evaluation. Alignment then runs as the paper's recommended
`delta` mode: a mapper and LoRA on the Swin, against the frozen LLM.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from r2g.config import DataConfig, GenerateConfig, ModelConfig, RunConfig, TrainConfig
from r2g.labels import CHEXPERT_LABELS

# A Swin with the base model's layout (4 stages, patch 4) but narrow, shallow and at 128 px with window 4
# (4 x 4 = 16 visual tokens): about 23 studies/s for a delta training step on 2 CPU cores.
DEMO_IMAGE_SIZE = 128
DEMO_VISION = {"img_size": DEMO_IMAGE_SIZE, "window_size": 4, "embed_dim": 48, "depths": [1, 1, 2, 1], "num_heads": [2, 4, 8, 16]}
DEMO_VISUAL_TOKENS = 16  # the last stage's 4 x 4 grid: the finding note has one word per visual token


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    out: Path = Path("demo")
    studies: int = 1500
    seed: int = 0
    steps: int = 300
    lm_steps: int = 300
    vision_steps: int = 800
    test_studies: int = 150
    # Torch intra-op threads for every stage. CPU kernels split float sums across threads, so the count changes
    # the last bits of each stage's weights, and training carries that through to the figures; left alone it
    # follows the machine (its cores, OMP_NUM_THREADS). Pinned, the same seed gives the same numbers under
    # any load and in any shell. 2: the 2-core CPU the README's figures come from.
    threads: int = 2


def demo_config(opts: DemoOptions, run: str, blank: bool) -> RunConfig:
    return RunConfig(
        data=demo_data_config(opts, blank),
        model=demo_model_config(opts),
        train=TrainConfig(out=str(opts.out / "runs" / run), ds_config="ds_configs/zero2.json", lr=3e-3, micro_batch=12,
                          warmup_steps=20, max_steps=opts.steps, epochs=100, save_every=150, val_every=150,
                          val_samples=48, select_metric="ce_f1", seed=opts.seed, log_every=25),
        # Repetition penalty 1.0: the reference's 2.0 suits Llama-2's 32k vocabulary; on this 2k-token LM it
        # penalises "." and "no" after their first use and garbles the reports (bench/RESULTS.md).
        generate=GenerateConfig(num_beams=3, repetition_penalty=1.0, min_new_tokens=10, max_new_tokens=90,
                                batch_size=24),
    )


def demo_data_config(opts: DemoOptions, blank: bool) -> DataConfig:
    return DataConfig(shards=str(opts.out / "shards"), dataset="mimic_cxr", workers=1, blank_images=blank,
                      image_size=DEMO_IMAGE_SIZE)


def demo_model_config(opts: DemoOptions) -> ModelConfig:
    return ModelConfig(llm=str(opts.out / "tiny-lm"), vision_arch="swin_tiny_patch4_window7_224",
                       vision_kwargs=DEMO_VISION, vision_weights=str(opts.out / "swin-pretrained.safetensors"),
                       mode="delta", max_report_tokens=100)


def present_findings(labels: dict) -> list[float]:
    """1.0 per CheXpert label the labeler reads as positive or uncertain: the encoder's pretraining target."""
    return [float(labels[name] in (1, -1)) for name in CHEXPERT_LABELS]


def prompt_corpus(reports: list[str], n_slots: int, prompt: str, seed: int) -> tuple[list[str], list[dict]]:
    """The tiny LM's training documents: each report in the prompt layout, its finding note (from what the
    rules labeler reads in it, as it would in real train reports) in the `n_slots` visual slots.
    Returns (documents, the reports' labels)."""
    from r2g.demo.tiny_lm import finding_note, prompt_document
    from r2g.metrics.chexpert import label_reports

    labels = label_reports(reports)
    rng = random.Random(seed)
    return [prompt_document(finding_note(lab, n_slots, rng), report, prompt) for lab, report in zip(labels, reports)], labels


@contextlib.contextmanager
def pinned_threads(n: int) -> Iterator[None]:
    """Torch's intra-op thread count fixed at `n` inside the block; the caller's count is restored after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_demo(opts: DemoOptions, log: Callable[[str], None]) -> dict:
    """Every stage, on `opts.threads` torch threads whatever the machine; returns (and writes to
    demo_results.json) both twins' metrics, the image gain and the stage timings."""
    with pinned_threads(opts.threads):
        return _run_stages(opts, log)


def _run_stages(opts: DemoOptions, log: Callable[[str], None]) -> dict:
    import torch

    from r2g.data.reports import clean_report
    from r2g.data.shard import ShardOptions, shard_dataset
    from r2g.demo.dataset import generate
    from r2g.demo.pretrain_vision import pretrain_vision
    from r2g.demo.tiny_lm import train_tiny_lm
    from r2g.eval.run import EvalOptions, evaluate, prepare
    from r2g.train.loop import run

    t0 = time.time()
    timings = {}

    log("1/6 generate a synthetic MIMIC-style dataset")
    data = opts.out / "data"
    generate(data, studies=opts.studies, style="mimic_cxr", seed=opts.seed, image_size=256, workers=2)
    timings["synth"] = time.time() - t0

    log("2/6 shard it")
    shard_dataset(data / "annotation.json", data / "images", opts.out / "shards",
                  ShardOptions("mimic_cxr", shard_size=250), workers=2)
    timings["shard"] = time.time() - t0

    log("3/6 train the tiny language model on the train reports")
    train = json.loads((data / "annotation.json").read_text())["train"]
    reports = [clean_report(e["report"], "mimic_cxr") for e in train]
    model_cfg = demo_model_config(opts)
    corpus, labels = prompt_corpus(reports, DEMO_VISUAL_TOKENS, model_cfg.prompt, opts.seed)
    lm = train_tiny_lm(corpus, opts.out / "tiny-lm", steps=opts.lm_steps, seed=opts.seed)
    log(f"   tiny LM: held-out perplexity {lm['ppl_init']:.0f} → {lm['ppl_final']:.1f}")
    timings["tiny_lm"] = time.time() - t0

    log("4/6 pretrain the Swin on the train images")
    targets = {e["id"]: torch.tensor(present_findings(lab)) for e, lab in zip(train, labels)}
    vision = pretrain_vision(dataclasses.replace(model_cfg, vision_weights=None), demo_data_config(opts, blank=False),
                             targets, model_cfg.vision_weights, steps=opts.vision_steps, seed=opts.seed)
    log(f"   Swin: pretraining loss {vision['losses'][0]:.3f} → {vision['losses'][-1]:.3f}")
    timings["vision"] = time.time() - t0

    results = {}
    for name, blank in (("with-images", False), ("blank-images", True)):
        log(f"5/6 train delta alignment ({name}, DeepSpeed ZeRO-2)")
        cfg = demo_config(opts, name, blank)
        run(cfg)
        timings[f"train_{name}"] = time.time() - t0
        log(f"6/6 evaluate on the test split ({name})")
        results[name] = evaluate(prepare(cfg.train.out, EvalOptions(split="test", max_samples=opts.test_studies, workers=1)))
        timings[f"eval_{name}"] = time.time() - t0
    results["compare"] = image_gain(results["with-images"]["files"]["predictions"],
                                    results["blank-images"]["files"]["predictions"])
    gain = next(row for row in results["compare"]["rows"] if row["metric"] == "ce_micro_f1")
    results["ce_micro_f1_gain"] = {"gain": gain["delta"], "low": gain["low"], "high": gain["high"], "p": gain["p"],
                                   "p_holm": gain["p_holm"]}
    results["threads"] = opts.threads
    results["timings"] = timings
    results["seconds"] = time.time() - t0
    (opts.out / "demo_results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def image_gain(with_images: str | Path, blank_images: str | Path, meteor: bool = True) -> dict:
    """What seeing the images gains: `r2g compare` of the blank-image twin (A) and the model that sees the images
    (B) on the same test studies, from the two runs' predictions.jsonl (r2g.eval.compare)."""
    from r2g.eval.compare import compare, load_system

    return compare([load_system(blank_images), load_system(with_images)], meteor=meteor)

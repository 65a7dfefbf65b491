"""Does a vision encoder see the findings? Linear probes on its frozen visual tokens, per CheXpert label.

    python bench/encoder_probe.py --shards demo/shards --image-size 128 \\
        --vision-arch swin_tiny_patch4_window7_224 --vision-kwargs '{"img_size": 128, "window_size": 4, ...}'
    python bench/encoder_probe.py --shards shards/mimic_cxr --vision-weights models/swin-b   # a real encoder

Before spending GPU hours on alignment, check what the encoder's tokens carry. Two probes are trained on the
train split and scored (ROC AUC per label) on the test split:

- `grid`: one weight per (token position, channel), i.e. a classifier that knows where each token is;
- `per_token`: one weight per channel, shared by every token, averaged over tokens. This is what R2GenGPT's
  mapper can express on its own (one Linear for all tokens, no position), so findings that only the `grid`
  probe finds must be located by the frozen LLM's attention, which is slow to learn through.

Labels come from the rules labeler run on the reports (positive = 1), so real data needs no label files.
The probes are fitted with minibatch AdamW for `--steps` steps, so the figures also say how fast a readout
learns, not only whether one exists.

Output: a provenance header first (bench/provenance.py), the JSON and table, and the same JSON with the header in
--json. Nothing else is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.provenance import start, write_json  # noqa: E402
from r2g.config import DataConfig, ModelConfig  # noqa: E402
from r2g.labels import CHEXPERT_LABELS  # noqa: E402


@torch.no_grad()
def visual_tokens(encoder, shards: str, split: str, cfg: DataConfig, max_studies: int) -> tuple[torch.Tensor, list[str]]:
    """(frozen visual tokens (n, N, C) of up to `max_studies` studies, their reports)."""
    from r2g.data.loader import make_loader, split_shards
    from r2g.model.vision import encode

    loader, _ = make_loader(split_shards(shards, split), cfg, batch_size=50, train=False)
    feats, reports = [], []
    for batch in loader:
        feats.append(encode(encoder, batch["images"], batch["view_mask"], "mean"))
        reports += batch["reports"]
        if len(reports) >= max_studies:
            break
    return torch.cat(feats)[:max_studies], reports[:max_studies]


def positive_labels(reports: list[str]) -> torch.Tensor:
    """(n, 14) 1.0 where the rules labeler reads the label as positive."""
    from r2g.metrics.chexpert import label_reports

    return torch.tensor([[float(lab[name] == 1) for name in CHEXPERT_LABELS] for lab in label_reports(reports)])


def roc_auc(y: torch.Tensor, score: torch.Tensor) -> float | None:
    """Area under the ROC curve by ranks (ties averaged); None when y has one class only."""
    n_pos = int(y.sum())
    if n_pos in (0, len(y)):
        return None
    order = score.argsort()
    ranks = torch.empty(len(y), dtype=torch.float64)
    ranks[order] = torch.arange(1, len(y) + 1, dtype=torch.float64)
    for value in score.unique():  # average ranks over ties
        tie = score == value
        ranks[tie] = ranks[tie].mean()
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(y) - n_pos)))


def fit_probe(x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, lr: float, seed: int) -> torch.nn.Linear:
    """Logistic regression x (n, d) -> y (n, k) by minibatch AdamW on standardised features."""
    generator = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], y.shape[1])
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.1)
    for _ in range(steps):
        idx = torch.randint(len(x), (batch,), generator=generator)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head


def probe(train: torch.Tensor, test: torch.Tensor, y_train: torch.Tensor, y_test: torch.Tensor, **fit) -> dict:
    """AUC per label of a probe fitted on train features (n, d), scored on test features."""
    mean, std = train.mean(0), train.std(0) + 1e-5
    head = fit_probe((train - mean) / std, y_train, **fit)
    with torch.no_grad():
        scores = head((test - mean) / std)
    return {name: roc_auc(y_test[:, j], scores[:, j]) for j, name in enumerate(CHEXPERT_LABELS)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", required=True)
    ap.add_argument("--vision-arch", default="swin_base_patch4_window7_224")
    ap.add_argument("--vision-kwargs", default="{}", help="timm overrides as JSON")
    ap.add_argument("--vision-weights", help="local timm / HF safetensors file or folder (default: random init)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--max-studies", type=int, default=2000, help="per split")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the result, with the provenance header, to this file")
    args = ap.parse_args()
    provenance = start()

    from r2g.model.vision import build_vision_encoder

    torch.manual_seed(args.seed)
    model_cfg = ModelConfig(vision_arch=args.vision_arch, vision_kwargs=json.loads(args.vision_kwargs),
                            vision_weights=args.vision_weights, mode="shallow")
    encoder = build_vision_encoder(model_cfg).eval()
    data_cfg = DataConfig(shards=args.shards, image_size=args.image_size, workers=1)
    (f_train, r_train), (f_test, r_test) = (visual_tokens(encoder, args.shards, split, data_cfg, args.max_studies)
                                            for split in ("train", "test"))
    y_train, y_test = positive_labels(r_train), positive_labels(r_test)
    fit = {"steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed}
    result = {
        "encoder": args.vision_weights or f"{args.vision_arch} (random init)",
        "studies": {"train": len(r_train), "test": len(r_test)},
        "visual_tokens": list(f_train.shape[1:]),
        "positives_test": {name: int(y_test[:, j].sum()) for j, name in enumerate(CHEXPERT_LABELS)},
        "fit": fit,
        "auc": {
            "grid": probe(f_train.flatten(1), f_test.flatten(1), y_train, y_test, **fit),
            "per_token": probe(f_train.mean(1), f_test.mean(1), y_train, y_test, **fit),
        },
    }
    print(json.dumps(result, indent=2))
    fmt = lambda v: " n/a" if v is None else f"{v:.2f}"  # noqa: E731
    print(f"{'label':28s} {'test +':>6s} {'grid':>5s} {'per-token':>9s}")
    for name in CHEXPERT_LABELS:
        print(f"{name:28s} {result['positives_test'][name]:6d} {fmt(result['auc']['grid'][name]):>5s} "
              f"{fmt(result['auc']['per_token'][name]):>9s}")
    if args.json:
        write_json(args.json, result, provenance)


if __name__ == "__main__":
    main()

"""The end-to-end demo and everything only it needs: synthetic studies, a tiny LM, encoder pretraining.

No pretrained weights or real data can be downloaded here, so the demo makes small stand-ins for all three
and runs them through the library's real path (shards → DeepSpeed alignment → evaluation):

    sample.py           what a synthetic study contains (findings, anatomy, geometry), sampled once
    render.py           its frontal and lateral images
    report_text.py      its report and CheXpert labels, from the sentence templates in sentences.json
    dataset.py          a synthetic dataset in the R2Gen layout (`r2g synth`)
    tiny_lm.py          a 4-layer Llama + BPE tokenizer trained on report text, saved as an HF folder
    pretrain_vision.py  a small Swin pretrained on CheXpert-style targets, saved in timm layout
    run.py              the demo pipeline behind `r2g demo`

Imports flow one way: this package uses data/model/train/eval/metrics; nothing there imports it.
"""

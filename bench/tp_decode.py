"""Decoding with the LLM split over 2 ranks, tensor-parallel (`--tp 2`) vs ZeRO-3 (`--ds zero3.json`) vs one process
holding it whole: tokens/s and peak memory per rank, on the same run and studies (not CI: ~4 GB, minutes).

    python bench/tp_decode.py                     # ~0.94B Llama (hidden 2048, 16 layers), fp32 on the CPU
    python bench/tp_decode.py --size tiny         # the tests' size: a quick check of the script itself
    python bench/tp_decode.py --dry-run           # say what would be written and where, then stop

Everything goes to --work (default runs/tp_decode, gitignored). The LLM (random bf16 weights, bench/llm7b_zero3.py's
writer) is trained one step through `cli/train.py` (shallow, Swin-B from random weights, fp32: the CPU's decode
precision, bf16 being ~10x slower here), then the run is decoded three times through `load_run` as `r2g eval`
does it: whole in one process, `--ds ds_configs/zero3.json` on 2 ranks (each decodes its half of the studies,
every layer gathered for every forward pass), `--tp 2` on 2 ranks (both decode every study together, each with
half of every decoder linear). Greedy decoding of exactly --new-tokens tokens per study (min = max new tokens:
a random LLM would stop anywhere), batch 1; tokens/s = studies x new tokens / decoding seconds (rank 0, to the
gathered result). Memory: each rank's peak resident (VmHWM) and sampled peak private memory (USS), as
bench/llm7b_zero3.py samples them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.llm7b_zero3 import SIZES, announce_llm_and_work, gb, launch, write_llm  # noqa: E402
from bench.provenance import start, work_dir, write_json  # noqa: E402

WORKER = "--decode-worker"
WAYS = {"whole": 1, "zero3": 2, "tp": 2}  # how the LLM is held: ranks


def write_shards(root: Path, studies: int) -> Path:
    """Tiny IU-Xray-style shards whose test split holds `studies` studies."""
    from r2g.data.shard import ShardOptions, shard_dataset
    from r2g.demo.toys import write_raw_dataset

    shards = root / f"shards-{studies}"
    if not shards.is_dir():
        raw = write_raw_dataset(root / f"raw-{studies}", per_split=(2, 2, studies), size=64)
        shard_dataset(raw, raw.parent / "images", shards, ShardOptions("iu_xray", shard_size=2))
    return shards


def decode_worker(run: str, way: str, new_tokens: int) -> None:
    """Under the launcher (or alone for "whole"): the run loaded as `r2g eval` loads it, its test split decoded."""
    import torch

    from r2g.data.loader import make_loader, split_shards
    from r2g.dist import close_distributed
    from r2g.eval.decode import decode
    from r2g.eval.reconstitute import load_run, open_run, partitioned_inference_config, tensor_parallel_inference_check

    folder = open_run(run)
    ds = partitioned_inference_config(folder, ROOT / "ds_configs" / "zero3.json") if way == "zero3" else None
    tp = tensor_parallel_inference_check(folder, WAYS[way] if way == "tp" else 1)
    gen = {"num_beams": 1, "min_new_tokens": new_tokens, "max_new_tokens": new_tokens, "batch_size": 1}
    loaded = load_run(folder, ds, gen, distributed=WAYS[way] > 1, tp=tp)
    held, total = loaded.llm_weights_held()
    print(f"loaded: rank {loaded.rank} of {loaded.world} holds {held} of {total} LLM weights", flush=True)
    rank, world = loaded.data_ranks
    loader, _ = make_loader(split_shards(folder.cfg.data.shards, "test"), dataclasses.replace(folder.cfg.data, workers=0),
                            batch_size=1, train=False, rank=rank, world=world)
    begin = time.perf_counter()
    with torch.no_grad():
        rows = decode(loaded.model, loader, loaded.generate, loaded.device, loaded.precision.input_dtype,
                      distributed=world > 1, synced=loaded.synced)
    seconds = time.perf_counter() - begin
    if loaded.rank == 0:
        print("decoded: " + json.dumps({"seconds": round(seconds, 2), "studies": len(rows), "held": held, "total": total,
                                        "reports": [r["prediction"] for r in rows]}), flush=True)
    close_distributed()


def ratios(results: dict) -> dict:
    """tokens/s and the largest rank's peak USS of each way, relative to one process holding the model whole."""
    base = results["whole"]
    return {way: {"tokens_per_s": round(r["tokens_per_s"] / base["tokens_per_s"], 2),
                  "peak_uss_per_rank": round(r["max_rank_peak_uss_gb"] / base["max_rank_peak_uss_gb"], 2)}
            for way, r in results.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="1b")
    ap.add_argument("--studies", type=int, default=4, help="test studies decoded by every way")
    ap.add_argument("--new-tokens", type=int, default=8, help="tokens generated per study")
    ap.add_argument("--work", type=Path, default=work_dir("tp_decode"), help="where everything goes (default: %(default)s)")
    ap.add_argument("--dry-run", action="store_true", help="say what would be written and where, then stop")
    ap.add_argument("--keep", action="store_true", help="keep the written LLM folder (reused by the next run)")
    ap.add_argument("--json", type=Path, default=None, help="results file (default: WORK/results-SIZE.json)")
    ap.add_argument(WORKER, nargs=2, metavar=("RUN", "WAY"), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.decode_worker:
        return decode_worker(*a.decode_worker, a.new_tokens)

    provenance = start()
    llm, run = a.work / f"llm-{a.size}", a.work / f"run-{a.size}"
    out_json = a.json or a.work / f"results-{a.size}.json"
    announce_llm_and_work(llm, a.size, a.work, out_json)
    if a.dry_run:
        return
    a.work.mkdir(parents=True, exist_ok=True)
    params = write_llm(llm, a.size)
    shards = write_shards(a.work, a.studies)
    port = 29300 + os.getpid() % 300
    if not (run / "trainable.safetensors").is_file():
        shutil.rmtree(run, ignore_errors=True)
        train = ["cli/train.py", "--llm", str(llm), "--shards", str(shards), "--out", str(run), "--ds",
                 "ds_configs/zero2.json", "--precision", "fp32", "--mode", "shallow", "--vision-arch",
                 "swin_base_patch4_window7_224", "--vision-weights", "none", "--image-size", "224", "--micro-batch", "1",
                 "--max-steps", "1", "--epochs", "1", "--val-samples", "-1", "--workers", "0", "--max-report-tokens", "24"]
        launch(train, 1, port, {}, a.work / "train.log")
    result = {"size": a.size, "llm_params": params, "precision": "fp32", "studies": a.studies,
              "new_tokens": a.new_tokens, "num_beams": 1, "batch_size": 1, "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "1")}
    for way, ranks in WAYS.items():
        log = a.work / f"decode-{way}.log"
        mem, times, seconds = launch([str(Path(__file__).relative_to(ROOT)), WORKER, str(run), way, "--new-tokens",
                                      str(a.new_tokens)], ranks, port + 1 + ranks, {}, log)
        out = json.loads(re.search(r"decoded: (.*)", log.read_text())[1])
        peaks = {str(r): {"peak_rss_gb": gb(p["hwm"]), "peak_uss_gb": gb(p["uss"])} for r, p in mem["peaks"].items()}
        result[way] = {"ranks": ranks, "wall_s": round(seconds, 1), "decode_s": out["seconds"], "studies": out["studies"],
                       "tokens_per_s": round(out["studies"] * a.new_tokens / out["seconds"], 3),
                       "llm_weights_held_share_rank0": round(out["held"] / out["total"], 3), "per_rank": peaks,
                       "max_rank_peak_uss_gb": max(p["peak_uss_gb"] for p in peaks.values()), "reports": out["reports"]}
        print(f"{way}: {result[way]['tokens_per_s']} tokens/s over {ranks} rank(s), peak USS per rank "
              f"{[p['peak_uss_gb'] for p in peaks.values()]} GB, rank 0 holds "
              f"{result[way]['llm_weights_held_share_rank0']:.1%} of the LLM", flush=True)
    result["same_reports"] = result["whole"]["reports"] == result["tp"]["reports"] == result["zero3"]["reports"]
    result["ratios_vs_whole"] = ratios({w: result[w] for w in WAYS})
    if not a.keep:
        shutil.rmtree(llm)
        result["llm_folder_deleted"] = True
    write_json(out_json, result, provenance)
    print(json.dumps(result["ratios_vs_whole"], indent=1))
    print(f"same reports all three ways: {result['same_reports']}; written: {out_json}")


if __name__ == "__main__":
    main()

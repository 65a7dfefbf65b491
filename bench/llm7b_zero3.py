"""A full-size Llama-2-7B, partitioned by ZeRO-3, trained and decoded on CPU (not CI: ~13.5 GB, many minutes).

    python bench/llm7b_zero3.py                        # 7B, 2 ranks, folder deleted afterwards
    python bench/llm7b_zero3.py --size 1b --ranks 1    # ~0.94B (hidden 2048, 16 layers), one process
    python bench/llm7b_zero3.py --keep                 # keep the written LLM folder for a rerun
    python bench/llm7b_zero3.py --dry-run              # say what would be written and where, then stop

Everything goes to --work (default: runs/llm7b_zero3 in this checkout, gitignored): the LLM folder (7b: 13.48 GB,
1b: 1.88 GB, tiny: 0.01 GB; the bench says the size and the free space before writing and stops if it does not
fit), tiny shards, the run (checkpoint 0.05 GB at 7b), logs and results-SIZE-RANKSr.json.

1. Writes a local HF folder with Llama-2-7B's config (hidden 4096, 32 layers, 32 heads, intermediate 11008,
   vocab 32000, rms eps 1e-5) and random bf16 weights as ~1 GB safetensors shards with an index, one shard
   at a time (the writer never holds more than one shard), plus a small BPE tokenizer trained locally and
   padded with placeholder tokens to 32000 entries.
2. Trains through the real entry point (`cli/train.py`, under the deepspeed launcher for 2 ranks): ZeRO-3,
   bf16, shallow mode, Swin-B at 224 px from random weights, micro-batch 1, one optimizer step, checkpoint.
3. Reconstitutes the run (r2g.eval.reconstitute: config, LLM hash, trained weights) with the LLM loaded
   partitioned again, wraps it in a ZeRO-3 engine and generates one report per rank with the ranks in step.
While 2 and 3 run, this process samples every rank's resident (RSS; the kernel's VmHWM for its peak) and
private memory (USS: Private_Clean + Private_Dirty of smaps_rollup, which mmap-ed file pages do not inflate),
and compares them with one full bf16 copy of the LLM. Times and peaks go to a JSON file and stdout.
Memory: the 7B needs about 17 GB free on 2 ranks (16 GB on 1); on a shared machine start it when that is free.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.memory import proc_status  # noqa: E402
from bench.provenance import announce_write, start, work_dir, write_json  # noqa: E402

# Llama-2-7B's config.json, a ~1B model of the same family (the size of shared/notes/zero3-loading.md), and a
# tiny one (the tests' size, with the 32000-row vocabulary) for a quick check of the script itself.
SIZES = {
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32},
    "1b": {"hidden_size": 2048, "intermediate_size": 5504, "num_hidden_layers": 16, "num_attention_heads": 16},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2},
}
SHARD_BYTES = 1 << 30
REPORT = "The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax."
GEN_MARK = "--generate-worker"


def llama_config(size: str, tokenizer=None):
    from transformers import LlamaConfig

    dims = SIZES[size]
    ids = {f"{k}_token_id": getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "pad")}
    return LlamaConfig(
        vocab_size=32000, num_key_value_heads=dims["num_attention_heads"], hidden_act="silu",
        max_position_embeddings=4096, initializer_range=0.02, rms_norm_eps=1e-5, tie_word_embeddings=False,
        attention_bias=False, dtype="bfloat16", **ids, **dims,
    )


def llm_shapes(size: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the LLM's parameters (from a meta-device model: nothing allocated)."""
    import torch  # only here: the sampling parent of a rerun stays small
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        return {n: tuple(p.shape) for n, p in LlamaForCausalLM(llama_config(size)).named_parameters()}


def llm_bytes(size: str) -> int:
    """Bytes of the LLM's bf16 weights, what `write_llm` writes (plus a few kB of config and tokenizer), from the
    dimensions alone, so that a dry run need not import torch: untied embedding and head (V x h each); per layer
    q, k, v, o (h x h: as many key/value heads as heads), gate, up, down (h x i) and two norms; the final norm.
    `write_llm` checks it against the model's own parameters."""
    d, vocab = SIZES[size], 32000
    h, i = d["hidden_size"], d["intermediate_size"]
    return 2 * (2 * vocab * h + d["num_hidden_layers"] * (4 * h * h + 3 * h * i + 2 * h) + h)


def llm_written(folder: Path, size: str) -> bool:
    done = folder / "complete.json"
    return done.is_file() and json.loads(done.read_text())["size"] == size


def announce_llm_and_work(llm: Path, size: str, work: Path, out_json: Path) -> None:
    """Say what the bench will write: the LLM folder (or that a complete one is reused), then the rest."""
    if llm_written(llm, size):
        print(f"[bench] reusing the {size} LLM in {llm}")
    else:
        announce_write(f"the {size} LLM (random bf16 weights)", llm_bytes(size), llm)
    print(f"[bench] shards, run, logs and results (under 0.1 GB) go to {work}; results to {out_json}", flush=True)


def write_llm(folder: Path, size: str) -> int:
    """Random bf16 Llama weights, ~1 GB per shard, written shard by shard; returns the parameter count.
    The caller announces the write (announce_llm_and_work); a complete folder of the same size is reused."""
    done = folder / "complete.json"
    if llm_written(folder, size):
        return json.loads(done.read_text())["params"]
    import torch
    from safetensors.torch import save_file

    from r2g.demo.tiny_lm import train_tokenizer

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tokenizer = train_tokenizer([REPORT.lower(), REPORT] * 50, vocab_size=300)
    # Padded with placeholder tokens to Llama-2's 32000, so whatever id the random model emits decodes to text.
    tokenizer.add_tokens([f"<unused_{i}>" for i in range(32000 - len(tokenizer))])
    config = llama_config(size, tokenizer)
    shapes = llm_shapes(size)
    if sum(2 * torch.Size(s).numel() for s in shapes.values()) != llm_bytes(size):  # what was announced
        raise RuntimeError(f"llm_bytes({size!r}) disagrees with the parameters of llama_config({size!r})")
    shards, current, used = [], [], 0
    for name, shape in shapes.items():
        nbytes = 2 * torch.Size(shape).numel()
        if current and used + nbytes > SHARD_BYTES:
            shards, current, used = shards + [current], [], 0
        current.append(name)
        used += nbytes
    shards.append(current)
    gen = torch.Generator().manual_seed(0)
    weight_map = {}
    for i, names in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {n: torch.ones(shapes[n], dtype=torch.bfloat16) if n.endswith("norm.weight")
                   else (torch.randn(shapes[n], generator=gen) * config.initializer_range).to(torch.bfloat16)
                   for n in names}
        save_file(tensors, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
        del tensors
    total = sum(2 * torch.Size(s).numel() for s in shapes.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    params = sum(torch.Size(s).numel() for s in shapes.values())
    done.write_text(json.dumps({"size": size, "params": params}))
    return params


def write_ds_config(path: Path) -> Path:
    """The shipped ZeRO-3 config, holding fewer gathered weights at a time: DeepSpeed's defaults keep up to 1e9
    gathered parameters live and any due for reuse within 1e9 (the last LLM layers, from forward to backward:
    ~2 GB of bf16 per rank at 7B), which this machine cannot spare. Only what is held changes, not the maths."""
    ds = json.loads((ROOT / "ds_configs" / "zero3.json").read_text())
    ds["zero_optimization"].update(stage3_max_live_parameters=200_000_000, stage3_max_reuse_distance=0,
                                   stage3_prefetch_bucket_size=20_000_000, reduce_bucket_size=20_000_000)
    path.write_text(json.dumps(ds, indent=1))
    return path


def write_shards(root: Path) -> Path:
    from r2g.data.shard import ShardOptions, shard_dataset
    from r2g.demo.toys import write_raw_dataset

    if (root / "shards").is_dir():
        return root / "shards"
    raw = write_raw_dataset(root / "raw", per_split=(4, 2, 2), size=64)
    shard_dataset(raw, raw.parent / "images", root / "shards", ShardOptions("iu_xray", shard_size=2))
    return root / "shards"


def _smaps(pid: int) -> tuple[int, int]:
    """(RSS, USS) in bytes from /proc/<pid>/smaps_rollup."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return fields["Rss"], fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)


class RankMemory:
    """Samples the rank processes of a launch (descendants of `root` running `marker`, launcher processes
    excluded) every `every` seconds: peak RSS (VmHWM), sampled peak USS; `mark(name)` snapshots the peaks."""

    def __init__(self, root: int, marker: str, every: float = 0.5):
        self.root, self.marker, self.every = root, marker, every
        self.peaks: dict[int, dict] = {}
        self.marks: dict[str, dict] = {}
        self.min_available = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _ranks(self) -> dict[int, int]:
        children: dict[int, list[int]] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError):
                    continue
                children.setdefault(ppid, []).append(int(d))
        found, stack = {}, [self.root]
        while stack:
            pid = stack.pop()
            try:
                cmd = open(f"/proc/{pid}/cmdline").read().split("\0")
            except OSError:
                continue
            if self.marker in " ".join(cmd) and "deepspeed.launcher" not in " ".join(cmd):
                rank = next((int(a.split("=")[1]) for a in cmd if a.startswith("--local_rank=")), 0)
                found[rank] = pid
                continue  # its own children (loader workers) are not ranks
            stack += children.get(pid, [])
        return found

    def _run(self) -> None:
        while not self._stop.is_set():
            for rank, pid in self._ranks().items():
                try:
                    rss, uss = _smaps(pid)
                    (hwm,) = proc_status("VmHWM", pid=pid)
                except (OSError, StopIteration, KeyError):
                    continue
                p = self.peaks.setdefault(rank, {"rss": 0, "uss": 0, "hwm": 0})
                p.update(rss=max(p["rss"], rss), uss=max(p["uss"], uss), hwm=max(p["hwm"], hwm))
            with open("/proc/meminfo") as f:
                avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
            self.min_available = avail if self.min_available is None else min(self.min_available, avail)
            self._stop.wait(self.every)

    def mark(self, name: str) -> None:
        self.marks[name] = {r: dict(p) for r, p in self.peaks.items()}

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {r: dict(p) for r, p in sorted(self.peaks.items())}


def cpu_rank_env() -> dict[str, str]:
    """This process's environment for DeepSpeed ranks on the CPU: no rank variables of an enclosing launch,
    unbuffered output, OMP_NUM_THREADS and TORCH_EXTENSIONS_DIR (the checkout's cache) unless already set."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    return env


def launch(args: list[str], ranks: int, port: int, lines: dict[str, str], log: Path) -> tuple[dict, dict, float]:
    """Run `args` (a script and its arguments) on `ranks` CPU processes; returns (per-rank peaks, peaks at
    each marked line, seconds). `lines` maps a name to a stdout pattern whose first appearance marks a phase."""
    env = cpu_rank_env()
    # glibc otherwise raises its mmap threshold after large frees and keeps freed blocks (gathered layers, the
    # fp32 Swin before DeepSpeed casts it) in the heap: 0.6 GB more per rank at ~1B (bench/RESULTS.md).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
    launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks), "--master_port", str(port)]
    cmd = (launcher if ranks > 1 else [sys.executable]) + args
    start = time.perf_counter()
    times = {}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        mem = RankMemory(proc.pid, args[0].split("/")[-1])
        for line in proc.stdout:
            out.write(line)
            out.flush()
            for name, pattern in lines.items():
                if name not in times and re.search(pattern, line):
                    times[name] = round(time.perf_counter() - start, 1)
                    mem.mark(name)
                    print(f"  {name}: {times[name]} s", flush=True)
        proc.wait()
    seconds = time.perf_counter() - start
    peaks = mem.stop()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed ({proc.returncode}); see {log}")
    return {"peaks": peaks, "marks": mem.marks, "min_available": mem.min_available}, times, seconds


def generate_worker(run: str, max_new_tokens: int) -> None:
    """Under the launcher: the run reconstituted with its LLM loaded partitioned (as `r2g eval --ds` and
    `r2g generate --ds` do it), one report per rank."""
    import torch

    from r2g.data.loader import make_loader, split_shards
    from r2g.dist import close_distributed
    from r2g.eval.decode import decode
    from r2g.eval.reconstitute import load_run, open_run, partitioned_inference_config

    folder = open_run(run)
    ds = partitioned_inference_config(folder, Path(run).parent / "zero3-lean.json")
    loaded = load_run(folder, ds, {"num_beams": 1, "min_new_tokens": 1, "max_new_tokens": max_new_tokens, "batch_size": 1})
    rank, world = loaded.rank, loaded.world
    print(f"reconstituted: rank {rank} of {world}", flush=True)
    loader, _ = make_loader(split_shards(folder.cfg.data.shards, "test"), dataclasses.replace(folder.cfg.data, workers=0),
                            batch_size=1, train=False, rank=rank, world=world)
    start = time.perf_counter()
    with torch.no_grad():
        rows = decode(loaded.model, loader, loaded.generate, loaded.device, loaded.precision.input_dtype, max_samples=1,
                      distributed=world > 1, synced=loaded.synced)
    if rank == 0:
        print("generated: " + json.dumps({"seconds": round(time.perf_counter() - start, 1), "rows": rows}), flush=True)
    close_distributed()


def gb(n: int) -> float:
    return round(n / 1e9, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="7b")
    ap.add_argument("--ranks", type=int, choices=(1, 2), default=2)
    ap.add_argument("--work", type=Path, default=work_dir("llm7b_zero3"),
                    help="where the LLM, data, run and results go (default: %(default)s)")
    ap.add_argument("--dry-run", action="store_true", help="say what would be written and where, then stop")
    ap.add_argument("--keep", action="store_true", help="keep the written LLM folder (reused by the next run)")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None, help="results file (default: WORK/results-SIZE-RANKSr.json)")
    ap.add_argument(GEN_MARK, dest="generate_worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.generate_worker:
        return generate_worker(a.generate_worker, a.max_new_tokens)

    provenance = start()
    tag = f"{a.size}-{a.ranks}r"
    llm, run = a.work / f"llm-{a.size}", a.work / f"run-{tag}"
    out_json = a.json or a.work / f"results-{tag}.json"
    announce_llm_and_work(llm, a.size, a.work, out_json)
    if a.dry_run:
        return
    shutil.rmtree(run, ignore_errors=True)
    a.work.mkdir(parents=True, exist_ok=True)
    result = {"size": a.size, "ranks": a.ranks, "work": str(a.work),
              "precision": "bf16", "zero": 3, "mode": "shallow", "vision": "swin_base_patch4_window7_224 @ 224 px (random)",
              "micro_batch": 1, "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", str(1 << 20))}
    t = time.perf_counter()
    params = write_llm(llm, a.size)
    result["write_s"] = round(time.perf_counter() - t, 1)
    full_copy = 2 * params
    result.update(llm_params=params, full_bf16_copy_gb=gb(full_copy),
                  llm_folder_gb=gb(sum(f.stat().st_size for f in llm.glob("*.safetensors"))))
    print(f"LLM {a.size}: {params / 1e9:.2f} B parameters, one bf16 copy {gb(full_copy)} GB, written in {result['write_s']} s")
    shards = write_shards(a.work)
    port = 29600 + os.getpid() % 300

    train_args = [
        "cli/train.py", "--llm", str(llm), "--shards", str(shards), "--out", str(run),
        "--ds", str(write_ds_config(a.work / "zero3-lean.json")), "--precision", "bf16", "--mode", "shallow",
        "--vision-arch", "swin_base_patch4_window7_224", "--vision-weights", "none", "--image-size", "224",
        "--micro-batch", "1", "--max-steps", "1", "--epochs", "1", "--lr-schedule", "epoch_cosine", "--save-every", "1",
        "--val-samples", "-1", "--workers", "0", "--log-every", "1", "--max-report-tokens", "24",
    ]
    mem, times, seconds = launch(train_args, a.ranks, port, {"loaded": r"frozen LLM: this rank holds",
                                                            "step": r"step 1\b|loss \d"}, a.work / f"train-{tag}.log")
    ckpt = run / "checkpoints"
    ckpt_bytes = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
    export = run / "trainable.safetensors"
    result["train"] = {"seconds": round(seconds, 1), "times": times, **_memory(mem, full_copy),
                       "checkpoint_gb": gb(ckpt_bytes), "checkpoint_share_of_llm": round(ckpt_bytes / full_copy, 4),
                       "trainable_export_mb": round(export.stat().st_size / 1e6, 1) if export.is_file() else None}
    log = (a.work / f"train-{tag}.log").read_text()
    held = re.search(r"frozen LLM: this rank holds ([\d,]+) of ([\d,]+)", log)
    loss = re.search(r"loss ([\d.]+)", log)
    result["train"]["loss"] = float(loss[1]) if loss else None
    if held:
        result["train"]["llm_weights_held_share"] = round(int(held[1].replace(",", "")) / int(held[2].replace(",", "")), 3)
    print(f"trained 1 step in {seconds:.0f} s; checkpoint {gb(ckpt_bytes)} GB ({ckpt_bytes / full_copy:.2%} of the LLM)")

    gen_args = [str(Path(__file__).relative_to(ROOT)), GEN_MARK, str(run), "--max-new-tokens", str(a.max_new_tokens)]
    mem, times, seconds = launch(gen_args, a.ranks, port + 1, {"loaded": r"reconstituted: rank"}, a.work / f"generate-{tag}.log")
    out = re.search(r"generated: (.*)", (a.work / f"generate-{tag}.log").read_text())
    generated = json.loads(out[1]) if out else {}
    result["generate"] = {"seconds": round(seconds, 1), "times": times, **_memory(mem, full_copy),
                          "decode_s": generated.get("seconds"), "reports": generated.get("rows")}
    if not a.keep:
        shutil.rmtree(llm)
        result["llm_folder_deleted"] = True
    write_json(out_json, result, provenance)
    print(json.dumps(result, indent=1))
    print(f"written: {out_json}")


def _memory(mem: dict, full_copy: int) -> dict:
    """Per-rank peaks in GB and as a share of one full bf16 copy of the LLM, at load end and overall."""
    def row(p: dict) -> dict:
        return {"peak_rss_gb": gb(p["hwm"]), "peak_uss_gb": gb(p["uss"]),
                "peak_rss_share": round(p["hwm"] / full_copy, 3), "peak_uss_share": round(p["uss"] / full_copy, 3)}

    return {"per_rank": {str(r): row(p) for r, p in mem["peaks"].items()},
            "at_load_end": {str(r): row(p) for r, p in mem["marks"].get("loaded", {}).items()},
            "min_mem_available_gb": gb(mem["min_available"] or 0)}


if __name__ == "__main__":
    main()

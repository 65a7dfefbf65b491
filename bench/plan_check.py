"""Is `r2g plan` right where we can measure it? Peak memory of real `r2g train` steps on CPU against the plan.

    python bench/plan_check.py                      # every case below (~25 min on 2 shared cores, <= ~8 GB at a time)
    python bench/plan_check.py --cases tiny-delta-z2-1,tiny-delta-z2-2
    python bench/plan_check.py --json out.json
    python bench/plan_check.py --dry-run            # say what would be written and where, then stop

Work folder (--work, default runs/plan_check in this checkout, gitignored; kept for reruns): the LLM folders
(tiny 0.01 GB, 05b 1.10 GB, 1b 1.88 GB of bf16 weights; each size said with the free space before it is written),
shards of 60 studies, and one run folder per case with its checkpoint.

Each case trains 2 steps through the real entry point (`r2g train`, fp32 as on any CPU, --workers 0,
no validation) on 1 rank (plain python) or 2 ranks (torchrun), Swin-B at 224 px from random weights, a Llama
folder written with random bf16 weights by bench/llm7b_zero3.py's writer (tiny: hidden 64; 05b: hidden 1536,
16 layers, 0.55B; 1b: hidden 2048, 16 layers, 0.94B; all with Llama-2's 32,000-token vocabulary), on synthetic
MIMIC-style studies (one view, reports longer than the 100-token budget).

Method. Each rank runs this file as a worker that installs probes around the real command and then calls
`r2g.cli.main`: a thread reading the process's own /proc/self/status every 10 ms, and marks at the end of the
imports, when the DeepSpeed engine is built, and after each engine.step. The figure is anonymous resident
memory (RssAnon: heap and tensors), not RSS: RSS also counts file-backed pages (shared libraries, the mmap-ed
safetensors while loading), which the kernel drops and reloads as other processes need memory, so RSS minus a
baseline wanders with the machine's load. Every allocation of 64 KiB or more gets its own mmap
(MALLOC_MMAP_THRESHOLD_=65536), so a freed tensor leaves at once and the figure follows live memory (glibc would
otherwise keep the first step's activations in its heap). No swap on this machine, so anonymous pages stay.
- baseline: anonymous memory once torch, deepspeed, transformers, timm and r2g's training modules are imported,
  before any model exists (what a process that only imports them holds); subtracted from every figure.
- measured total: the largest sample from the engine's construction to the end of step 2, minus the baseline
  (per rank; the table shows the larger rank). The RSS peak (VmHWM, reset at the engine) is recorded beside it.
- measured model states: the smallest sample between the end of step 1 and the end of step 2 minus the
  baseline: weights, fp32 masters and Adam's moments stay between steps; activations, gradients and the
  buckets they pass through do not. Compared with the plan's model states plus its CPU runtime constant
  (DeepSpeed engine, gloo, data pipeline, Python objects), which that trough also holds.
The plan is `r2g.plan.estimate` for the same LLM config.json, mode, ZeRO config, ranks, precision fp32 and
`device="cpu"`, at the sequence length and micro-batch the run really had (recorded from its inputs).
Targets (issue 10): model states within 20 %, total within 30 %.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.memory import proc_status, reset_peak  # noqa: E402
from bench.provenance import announce_write, start, work_dir, write_json  # noqa: E402

WORKER = "--worker"
# name: (LLM size of bench/llm7b_zero3.py, mode, DeepSpeed config, ranks, micro-batch, --grad-ckpt)
CASES = {
    "tiny-delta-z2-1": ("tiny", "delta", "zero2", 1, 4, False),
    "tiny-delta-z2-2": ("tiny", "delta", "zero2", 2, 4, False),
    "tiny-deep-z2-1": ("tiny", "deep", "zero2", 1, 4, False),
    "tiny-deep-ckpt-z2-1": ("tiny", "deep", "zero2", 1, 4, True),
    "tiny-deep-z3-2": ("tiny", "deep", "zero3", 2, 4, False),
    "1b-shallow-z2-1": ("1b", "shallow", "zero2", 1, 2, False),
    "1b-shallow-ckpt-z2-1": ("1b", "shallow", "zero2", 1, 2, True),
    "05b-shallow-z3-2": ("05b", "shallow", "zero3", 2, 2, False),
    "1b-deep-z2-1": ("1b", "deep", "zero2", 1, 1, False),
}
# A 0.5B Llama for 2 ranks under ZeRO-3: loading in fp32 peaks near two full copies on rank 0
# (shared/notes/zero3-loading.md), which for the 1B would pass this machine's share of memory.
HALF_B = {"hidden_size": 1536, "intermediate_size": 4096, "num_hidden_layers": 16, "num_attention_heads": 12}
GB = 1e9


# ----------------------------------------------------------------------------------------- the worker


class SelfMemory:
    """This process's RSS and anonymous RSS every `every` seconds, with named marks (see the module docstring)."""

    def __init__(self, every: float = 0.01):
        self.samples: list[tuple[float, int, int]] = []
        self.marks: list[tuple[str, float, int]] = []  # (name, time, VmHWM at that moment)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), *proc_status("VmRSS", "RssAnon")))
            self._stop.wait(every)

    def mark(self, name: str) -> None:
        (rss, anon, hwm), now = proc_status("VmRSS", "RssAnon", "VmHWM"), time.perf_counter()
        self.samples.append((now, rss, anon))
        self.marks.append((name, now, hwm))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def worker(out: Path, train_args: list[str]) -> None:
    """One rank: the real `r2g train` with the probes around it; writes out/rank{RANK}.json."""
    memory = SelfMemory()
    import deepspeed  # noqa: F401  (the libraries r2g train imports, before any model exists)
    import timm  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import r2g.cli
    import r2g.train.loop as loop

    memory.mark("imports")
    shapes: list[tuple[int, ...]] = []
    initialize, model_inputs = deepspeed.initialize, loop.model_inputs

    def probed_initialize(*args, **kwargs):
        result = initialize(*args, **kwargs)
        engine, step = result[0], result[0].step
        memory.mark("engine")
        reset_peak()

        def probed_step(*a, **k):
            done = step(*a, **k)
            memory.mark("step")
            return done

        engine.step = probed_step
        return result

    def probed_inputs(batch, *args, **kwargs):
        inputs = model_inputs(batch, *args, **kwargs)
        shapes.append((*inputs["input_ids"].shape, int(batch["view_mask"].sum())))
        return inputs

    deepspeed.initialize, loop.model_inputs = probed_initialize, probed_inputs
    sys.argv = ["r2g", "train", *train_args]
    try:
        r2g.cli.main()
    except SystemExit as e:
        if e.code:
            raise
    memory.stop()
    rank = int(os.environ.get("RANK", 0))
    (out / f"rank{rank}.json").write_text(json.dumps({"samples": memory.samples, "marks": memory.marks,
                                                      "inputs": shapes}))


def summarise(rank: dict) -> dict:
    """Baseline, measured total and measured model states (anonymous bytes above the baseline) of one rank."""
    marks = {name: t for name, t, _ in rank["marks"] if name != "step"}
    steps = [m for m in rank["marks"] if m[0] == "step"]
    anon = lambda lo, hi: [s[2] for s in rank["samples"] if lo <= s[0] <= hi]  # noqa: E731
    at_imports = max((s for s in rank["samples"] if s[0] <= marks["imports"]), key=lambda s: s[0])
    baseline = at_imports[2]
    return {
        "baseline": baseline, "baseline_rss": at_imports[1],
        "total": max(anon(marks["engine"], steps[-1][1])) - baseline,
        "states": min(anon(steps[0][1], steps[-1][1])) - baseline,
        "rss_peak_over_baseline": steps[-1][2] - at_imports[1],
        "seq_len": max(b[1] for b in rank["inputs"]), "micro_batch": rank["inputs"][0][0],
        "views": max(b[2] for b in rank["inputs"]) / rank["inputs"][0][0],
    }


# ----------------------------------------------------------------------------------------- the driver


def prepare(work: Path) -> Path:
    """Synthetic MIMIC-style shards (one view per study, 256 px, resized to 224 by the loader)."""
    shards = work / "shards"
    if not (shards / "manifest.json").is_file():
        run = lambda *a: subprocess.run([sys.executable, "-m", "r2g.cli", *a], check=True, cwd=ROOT,  # noqa: E731
                                        capture_output=True)
        run("synth", "--out", str(work / "data"), "--studies", "60", "--style", "mimic_cxr", "--image-size", "256")
        run("shard", "mimic_cxr", "--annotation", str(work / "data" / "annotation.json"), "--images",
            str(work / "data" / "images"), "--out", str(shards), "--shard-size", "20")
    return shards


def announce_llms(names: list[str], work: Path) -> None:
    """Say which LLM folders the cases will write (size and place) before anything is written."""
    from bench.llm7b_zero3 import SIZES, llm_bytes, llm_written

    SIZES.setdefault("05b", HALF_B)
    for size in dict.fromkeys(CASES[name][0] for name in names):
        if llm_written(work / f"llm-{size}", size):
            print(f"[bench] reusing the {size} LLM in {work / f'llm-{size}'}")
        else:
            announce_write(f"the {size} LLM (random bf16 weights)", llm_bytes(size), work / f"llm-{size}")


def run_case(name: str, work: Path, shards: Path, port: int, reuse: bool) -> dict:
    from bench.llm7b_zero3 import SIZES, cpu_rank_env, write_llm

    SIZES.setdefault("05b", HALF_B)
    size, mode, ds, ranks, micro_batch, grad_ckpt = CASES[name]
    llm = work / f"llm-{size}"
    write_llm(llm, size)
    out = work / "runs" / name
    t0 = time.perf_counter()
    if reuse and all((out / f"rank{r}.json").is_file() for r in range(ranks)):
        return measured(name, out, llm, time.perf_counter() - t0)
    subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir(parents=True)
    train_args = ["--llm", str(llm), "--shards", str(shards), "--out", str(out / "run"), "--ds", f"ds_configs/{ds}.json",
                  "--mode", mode, "--micro-batch", str(micro_batch), "--grad-accum", "1", "--max-steps", "2",
                  "--val-samples", "-1", "--workers", "0", "--vision-weights", "none", "--precision", "fp32",
                  "--log-every", "1", "--save-every", "1000", "--warmup-steps", "1"] + (["--grad-ckpt"] if grad_ckpt else [])
    me = [str(Path(__file__).resolve()), WORKER, str(out), "--"]
    env = cpu_rank_env()
    # See the module docstring: freed tensors go back to the OS at once.
    env.update(OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="65536")
    if ranks == 1:
        cmd = [sys.executable, *me, *train_args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
               "--master_port", str(port), *me, *train_args]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return measured(name, out, llm, time.perf_counter() - t0)


def measured(name: str, out: Path, llm: Path, seconds: float) -> dict:
    size, mode, ds, ranks, _, grad_ckpt = CASES[name]
    per_rank = [summarise(json.loads((out / f"rank{r}.json").read_text())) for r in range(ranks)]
    return {"case": name, "size": size, "mode": mode, "ds": ds, "ranks": ranks, "grad_ckpt": grad_ckpt, "seconds": seconds,
            "llm": str(llm), "ranks_measured": per_rank}


def with_plan(row: dict) -> dict:
    """The plan's estimate for the run as it really ran (its sequence length, micro-batch and views)."""
    from r2g.config import ModelConfig
    from r2g.plan import CPU_ASSUMPTIONS, GIB, Setup, estimate, load_llm_shape, read_ds, vision_shape

    r0 = row["ranks_measured"][0]
    setup = Setup(mode=row["mode"], gpus=row["ranks"], ds=read_ds(f"ds_configs/{row['ds']}.json"), device="cpu",
                  precision="fp32", micro_batch=r0["micro_batch"], seq_len=r0["seq_len"], views=round(r0["views"]),
                  grad_ckpt=row["grad_ckpt"], peak_tflops=None, mem_gib=1e6)
    plan = estimate(load_llm_shape(row["llm"]), vision_shape(ModelConfig(mode=row["mode"])), setup)
    worst = max(row["ranks_measured"], key=lambda r: r["total"])
    states = max(r["states"] for r in row["ranks_measured"])
    return {**row, "llm_params": plan.llm_params, "seq_len": r0["seq_len"], "micro_batch": r0["micro_batch"],
            "measured_total": worst["total"], "measured_states": states, "baseline": worst["baseline"],
            # the measured trough holds the runtime (engine, gloo, Python objects) beside the states
            "plan_total": plan.total, "plan_states": plan.model_states + CPU_ASSUMPTIONS["runtime_gib"] * GIB,
            "plan_rows": plan.memory,
            "total_error": plan.total / worst["total"] - 1, "states_error": (plan.model_states + CPU_ASSUMPTIONS["runtime_gib"] * GIB) / states - 1}


def print_table(rows: list[dict]) -> None:
    print("| case | LLM params | ranks | ZeRO | mode | B x T | measured states GB | plan states GB | error | "
          "measured total GB | plan total GB | error | baseline GB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['llm_params'] / 1e9:.3f}B | {r['ranks']} | {r['ds'][-1]} | {r['mode']} | "
              f"{r['micro_batch']} x {r['seq_len']} | {r['measured_states'] / GB:.2f} | {r['plan_states'] / GB:.2f} | "
              f"{r['states_error']:+.0%} | {r['measured_total'] / GB:.2f} | {r['plan_total'] / GB:.2f} | "
              f"{r['total_error']:+.0%} | {r['baseline'] / GB:.2f} |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == WORKER:
        split = sys.argv.index("--")
        return worker(Path(sys.argv[2]), sys.argv[split + 1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--work", default=str(work_dir("plan_check")),
                    help="LLM folders, shards and runs, kept for reruns (default: %(default)s)")
    ap.add_argument("--port", type=int, default=29533)
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--reuse", action="store_true", help="summarise a case's earlier records instead of rerunning it")
    ap.add_argument("--dry-run", action="store_true", help="say what would be written and where, then stop")
    args = ap.parse_args()
    names = args.cases.split(",")
    unknown = [n for n in names if n not in CASES]
    if unknown:
        ap.error(f"--cases: unknown {', '.join(unknown)}; choose from {', '.join(CASES)}")
    provenance = start()
    work = Path(args.work)
    announce_llms(names, work)
    print(f"[bench] shards and run folders go to {work}", flush=True)
    if args.dry_run:
        return
    shards = prepare(work)
    rows = []
    for name in names:
        rows.append(with_plan(run_case(name, work, shards, args.port, args.reuse)))
        r = rows[-1]
        print(f"{name}: {r['seconds']:.0f} s, measured total {r['measured_total'] / GB:.2f} GB vs plan "
              f"{r['plan_total'] / GB:.2f} GB ({r['total_error']:+.0%}); states {r['measured_states'] / GB:.2f} vs "
              f"{r['plan_states'] / GB:.2f} ({r['states_error']:+.0%})", flush=True)
        if args.json:
            write_json(args.json, rows, provenance)
    print_table(rows)


if __name__ == "__main__":
    main()

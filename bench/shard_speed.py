"""Sharding speed at MIMIC-CXR-JPG size: images/s per core of `r2g shard --max-side 512`'s image step
(r2g.data.shard.encode_image) with the reduced-scale JPEG decode against the full decode it replaced, in one
run on one machine, and how far apart their outputs are.

The images are synthetic 2,544 × 3,056 grayscale JPEGs at quality 95 (MIMIC-CXR-JPG's size and mode): smooth
anatomy-like shading, rib-like bands, a coarse texture and per-pixel grain. A JPEG's entropy decoding, which no
decode scale skips, grows with its compressed size, so the speed-up depends on how much grain the images carry:
`--grain` sets it and the file sizes are printed beside the figures. Each image is encoded both ways in turn,
so load on the machine hits both alike; speeds are CPU seconds of this one process (per core).

Then the reduced path's steps, timed one by one on the same files (the same calls as encode_image, checked to give
its bytes): read, decode at the chosen scale, the resize after it (bicubic, and the LANCZOS it replaced), the q95
encode; and the decode at 1/8, the smallest scale libjpeg has. That last one is the file's entropy decoding, which
every decode scale does in full, plus a 1 × 1 inverse DCT per block: no way of decoding the file is faster, so
full-path time / 1/8-decode time is the ceiling on the speed-up ("ceiling" in the table).

    python bench/shard_speed.py --images 24 --max-side 512 --grain 0.006 0.012
Prints the provenance header first (bench/provenance.py), then a JSON object per grain and two markdown tables;
--json also writes the rows with the provenance.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, features

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.provenance import start, write_json  # noqa: E402
from r2g.data.shard import RESIZE_AFTER_SCALED_DECODE, encode_image, shrunk_size  # noqa: E402
from r2g.demo.toys import xray_like  # noqa: E402

MIMIC_SIZE = (2544, 3056)  # width, height
MIMIC_IMAGES = 377_110


def measure(paths: list[Path], max_side: int, rounds: int) -> dict:
    cpu = {"full": 0.0, "reduced": 0.0}
    diffs = []
    for _ in range(rounds):
        for path in paths:
            out = {}
            for way, reduced in (("full", False), ("reduced", True)):
                t0 = time.process_time()
                out[way] = encode_image(path, max_side, reduced_decode=reduced)[1]
                cpu[way] += time.process_time() - t0
            a, b = (np.asarray(Image.open(io.BytesIO(out[k])), np.int16) for k in ("full", "reduced"))
            assert a.shape == b.shape, (a.shape, b.shape)
            diffs.append(np.abs(a - b).ravel())
    n = len(paths) * rounds
    d = np.concatenate(diffs)
    full, reduced = n / cpu["full"], n / cpu["reduced"]
    return {"images": n, "full_per_core": round(full, 2), "reduced_per_core": round(reduced, 2),
            "speedup": round(reduced / full, 2), "mean_abs_diff": round(float(d.mean()), 3),
            "p999_abs_diff": float(np.percentile(d, 99.9)), "max_abs_diff": int(d.max()),
            "mimic_minutes_32_cores_before": round(MIMIC_IMAGES / (32 * full) / 60, 1),
            "mimic_minutes_32_cores_after": round(MIMIC_IMAGES / (32 * reduced) / 60, 1)}


def steps(paths: list[Path], max_side: int, rounds: int) -> dict:
    """CPU ms per image of each step of the reduced path, and of a decode at 1/8 scale (see the docstring)."""
    ms = dict.fromkeys(("read", "decode", "resize", "resize_lanczos", "encode", "decode_1_8"), 0.0)

    def timed(step, fn):
        t0 = time.process_time()
        out = fn()
        ms[step] += 1000 * (time.process_time() - t0)
        return out

    for _ in range(rounds):
        for path in paths:
            data = timed("read", path.read_bytes)

            def decode(scale_to):
                img = Image.open(io.BytesIO(data))
                img.draft(img.mode, scale_to)
                img.load()
                return img

            size = shrunk_size(Image.open(path).size, max_side)
            img = timed("decode", lambda: decode(size))
            small = timed("resize", lambda: img.resize(size, RESIZE_AFTER_SCALED_DECODE))
            timed("resize_lanczos", lambda: img.resize(size, Image.Resampling.LANCZOS))
            buf = io.BytesIO()
            timed("encode", lambda: small.save(buf, format="JPEG", quality=95))
            assert buf.getvalue() == encode_image(path, max_side)[1], "the steps timed here are not encode_image's"
            timed("decode_1_8", lambda: decode((1, 1)))
    return {step: round(v / (len(paths) * rounds), 2) for step, v in ms.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--max-side", type=int, default=512)
    ap.add_argument("--grain", type=float, nargs="+", default=[0.006, 0.012])
    ap.add_argument("--json", help="also write the rows, with the provenance header, to this file")
    args = ap.parse_args()
    provenance = start()
    # The decoder is the figure's main cause: its library and version go with the rows.
    jpeg = f"libjpeg-turbo {features.version('jpg')}" if features.check_feature("libjpeg_turbo") else "libjpeg"
    decoder = f"Pillow {Image.__version__} ({jpeg})"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for grain in args.grain:
            paths = []
            for i in range(args.images):
                path = Path(tmp) / f"g{grain}-{i}.jpg"
                xray_like(MIMIC_SIZE, grain, seed=i).save(path, quality=95)
                paths.append(path)
            mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
            result = {"grain": grain, "mean_file_mb": round(mb, 2), "max_side": args.max_side,
                      "decoder": decoder, **measure(paths, args.max_side, args.rounds)}
            result["steps_ms"] = steps(paths, args.max_side, args.rounds)
            full_ms = 1000 / result["full_per_core"]
            result["ceiling_speedup"] = round(full_ms / result["steps_ms"]["decode_1_8"], 2)
            print(json.dumps(result))
            rows.append(result)
    print(f"\n{decoder}")
    print("| grain | mean file | full decode (img/s/core) | reduced decode (img/s/core) | speed-up | "
          "mean / p99.9 / max abs diff (grey levels) | MIMIC on 32 cores, before → after |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['grain']} | {r['mean_file_mb']} MB | {r['full_per_core']} | {r['reduced_per_core']} | "
              f"{r['speedup']}× | {r['mean_abs_diff']} / {r['p999_abs_diff']:g} / {r['max_abs_diff']} | "
              f"{r['mimic_minutes_32_cores_before']} → {r['mimic_minutes_32_cores_after']} min |")
    print("\nThe reduced path step by step, CPU ms per image (the 1/8 decode: no decode of the file is faster)")
    print("| mean file | full path | read | decode at scale | resize bicubic (LANCZOS before) | encode q95 | "
          "decode at 1/8 | 1/8 decode's share of the reduced path | ceiling: full path / 1/8 decode |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        st = r["steps_ms"]
        reduced_ms = 1000 / r["reduced_per_core"]
        print(f"| {r['mean_file_mb']} MB | {1000 / r['full_per_core']:.1f} | {st['read']} | {st['decode']} | "
              f"{st['resize']} ({st['resize_lanczos']}) | {st['encode']} | {st['decode_1_8']} | "
              f"{100 * st['decode_1_8'] / reduced_ms:.0f} % | {r['ceiling_speedup']}× |")
    if args.json:
        write_json(args.json, rows, provenance)


if __name__ == "__main__":
    main()

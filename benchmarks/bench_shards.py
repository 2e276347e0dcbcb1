"""Memory of streaming shards against loading them into memory: peak memory over 4 vs 32 shards.

    .venv/bin/python benchmarks/bench_shards.py [--per-shard 128] [--source-size 64] [--image-size 64]

Writes 32 shards of ``per-shard`` JPEG pairs, then measures, each in a fresh process: iterating a
:class:`clipguard.shards.ShardStream` over the first 4 and all 32 shards (in-process, shuffle buffer 256),
:func:`clipguard.shards.write_poisoned_shards` over them (1% poisons), and, for contrast,
:func:`clipguard.data.load_webdataset` (everything in memory). Reported: the rise of peak resident memory above
the process's resident memory after imports (``VmHWM`` - ``VmRSS`` from /proc, the peak reset first), the
``tracemalloc`` peak (Python and numpy allocations; torch tensors are not traced) and the 32/4 ratio. Bounded
memory means a ratio near 1 for the streaming rows; the in-memory loader grows with the data (ratio near 8).
"""

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np


def _status(field: str) -> float:
    """A /proc/self/status memory field in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def write_source(folder: Path, n_shards: int, per_shard: int, size: int) -> None:
    import webdataset as wds
    from PIL import Image

    rng = np.random.default_rng(0)
    for s in range(n_shards):
        with wds.TarWriter(str(folder / f"{s:05d}.tar")) as writer:
            for i in range(per_shard):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="JPEG")
                writer.write({"__key__": f"{s:05d}{i:05d}", "jpg": buffer.getvalue(),
                              "txt": f"a photo of a banana number {s}-{i}", "json": "{}"})


def child(mode: str, shards: list[str], image_size: int, out: str) -> dict:
    """Run one measurement in this (fresh) process."""
    from clipguard import data, shards as streaming

    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current resident size
    baseline = _status("VmRSS")
    tracemalloc.start()
    start = time.perf_counter()
    if mode == "stream":
        n = sum(1 for _ in streaming.ShardStream(shards, image_size=image_size, shuffle_buffer=256))
    elif mode == "poison":
        spec = {"kind": "backdoor", "trigger": {"name": "badnet_yellow"}, "target_class": "banana", "rate": 0.01}
        n = streaming.write_poisoned_shards(shards, spec, out, seed=0, image_size=image_size).n_samples
    else:
        n = len(data.load_webdataset(shards, image_size=image_size))
    seconds = time.perf_counter() - start
    traced = tracemalloc.get_traced_memory()[1] / 2**20
    return {"pairs": n, "rss_rise_mib": _status("VmHWM") - baseline, "traced_mib": traced,
            "pairs_per_second": n / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-shard", type=int, default=128)
    parser.add_argument("--source-size", type=int, default=64, help="side of the JPEGs in the shards")
    parser.add_argument("--image-size", type=int, default=64, help="side of the decoded images")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "SHARD_DIR", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, folder, n = args.child
        shard_list = sorted(str(p) for p in Path(folder).glob("*.tar"))[:int(n)]
        with tempfile.TemporaryDirectory() as out:
            print(json.dumps(child(mode, shard_list, args.image_size, out)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_source(folder, 32, args.per_shard, args.source_size)
        print(f"{args.per_shard} pairs per shard, {args.source_size} px JPEGs decoded to {args.image_size} px; "
              f"peak memory rise above the post-import resident size, fresh process per row\n")
        print(f"{'mode':<8} {'shards':>6} {'pairs':>6} {'RSS rise MiB':>13} {'traced MiB':>11} {'pairs/s':>8}")
        for mode in ("stream", "poison", "memory"):
            results = {}
            for n in (4, 32):
                command = [sys.executable, __file__, "--image-size", str(args.image_size), "--child", mode,
                           str(folder), str(n)]
                line = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
                results[n] = json.loads(line.splitlines()[-1])
                r = results[n]
                print(f"{mode:<8} {n:>6} {r['pairs']:>6} {r['rss_rise_mib']:>13.1f} {r['traced_mib']:>11.2f} "
                      f"{r['pairs_per_second']:>8.0f}")
            rss = results[32]["rss_rise_mib"] / max(results[4]["rss_rise_mib"], 1e-9)
            traced = results[32]["traced_mib"] / max(results[4]["traced_mib"], 1e-9)
            print(f"{mode:<8} {'32/4':>6} {'':>6} {rss:>12.2f}x {traced:>10.2f}x")


if __name__ == "__main__":
    main()

"""How data preparation and the start of training grow with the number of clips.

    python scripts/bench_scale.py --root /tmp/scale --sizes 500,2000,8000 --workers 2 --capped-gb 0.1 --scaling 2000

Uses (or renders once, with `vqtool data synth ROOT --videos MAX`) one synthetic shapes set of real
mp4 files; a set of N clips is its first N training rows. For each N, in fresh processes of the real
commands: `vqtool data prepare` into an empty frame cache (wall time, clips/s, cache size, peak RSS),
then `vqtool finetune` streaming from that cache (data.in_memory_gb 0) for one step (wall time to
the end of the run, the split's load time, peak RSS). Each metric's growth is compared with the
clips' (x N/N0): at most linear means per-clip cost does not rise. --capped-gb prepares the largest
set again under a cap smaller than its cache (eviction at scale); --scaling N times prepare with 1
and 2 workers, alternating, on one set. Prints markdown tables and writes scale.json next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RECIPE = REPO / "recipes" / "shapes-tiny.yaml"
VQTOOL = [sys.executable, "-c", "import sys; sys.argv[0] = 'vqtool'; from toolchain.cli import main; main()"]


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def ensure_set(data: Path, clips: int) -> Path:
    if not (data / "train.jsonl").is_file() or len((data / "train.jsonl").read_text().splitlines()) < clips:
        subprocess.run([*VQTOOL, "data", "synth", str(data), "--videos", str(clips)], check=True)
    return data


def subset(data: Path, n: int) -> Path:
    path = data / f"train_{n}.jsonl"
    path.write_text("".join((data / "train.jsonl").read_text().splitlines(keepends=True)[:n]))
    return path


def recipe_sets(data: Path, train: Path, cache: Path, extra: tuple[str, ...] = ()) -> list[str]:
    sets = [f"data.train={train}", f"data.eval={data / 'eval.jsonl'}", f"data.cache_dir={cache}", *extra]
    return [a for s in sets for a in ("--set", s)]


def prepare(data: Path, train: Path, cache: Path, workers: int, extra: tuple[str, ...] = ()) -> dict:
    shutil.rmtree(cache, ignore_errors=True)
    r = in_fresh_process([*VQTOOL, "data", "prepare", str(RECIPE), "--workers", str(workers),
                          *recipe_sets(data, train, cache, extra)])
    from toolchain.data.cache import folder_bytes, read_stats

    line = next(x for x in r["out"].splitlines() if x.startswith("prepared in"))
    steady = re.search(r"\(([\d.]+) clips/s once the pool ran", line)
    return {"seconds": round(r["seconds"], 2), "rss_mb": r["rss_mb"], "cache_gb": folder_bytes(cache) / 1e9,
            "steady_clips_per_s": float(steady.group(1)) if steady else None, "evicted": read_stats(cache)["evicted"],
            "line": line}


def in_fresh_process(args: list[str]) -> dict:
    """Run `args` under a small wrapper process, so its peak RSS (and its workers') is its own."""
    probe = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
             "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "s = time.perf_counter() - t; "
             "print(json.dumps({'rc': p.returncode, 'seconds': s, 'out': p.stdout, 'err': p.stderr, "
             "'rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")
    r = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"})
    result = json.loads(r.stdout)
    if result["rc"]:
        raise SystemExit(f"{' '.join(args[3:])} failed ({result['rc']}):\n{result['err'][-3000:]}")
    result["rss_mb"] = round(result["rss_mb"], 1)
    return result


def train_start(data: Path, train: Path, cache: Path, runs: Path) -> dict:
    extra = ("train.max_steps=1", "train.checkpoint_every=0", "train.log_every=1", "data.in_memory_gb=0",
             "export.variants=[fp32]")
    r = in_fresh_process([*VQTOOL, "finetune", str(RECIPE), "--force", "--output-dir", str(runs),
                          *recipe_sets(data, train, cache, extra)])
    load = re.search(r"data train: (\d+) clips .* loaded in ([\d.]+) s.*?(\d+) hits, (\d+) misses", r["err"])
    return {"seconds": round(r["seconds"], 2), "rss_mb": r["rss_mb"], "load_s": float(load.group(2)),
            "hits": int(load.group(3)), "misses": int(load.group(4))}


def growth(rows: list[dict], key: str) -> list[float]:
    """metric(N) / metric(N0) divided by N / N0: 1.0 is linear, below 1 sub-linear."""
    n0, m0 = rows[0]["clips"], rows[0][key]
    return [round((r[key] / m0) / (r["clips"] / n0), 3) for r in rows]


def table(rows: list[dict]) -> str:
    keys = [("prepare_s", "prepare s"), ("cache_gb", "cache GB"), ("start_s", "finetune (1 step) s"),
            ("load_s", "train split load s"), ("start_rss_mb", "finetune peak RSS MB"), ("prepare_rss_mb", "prepare peak RSS MB")]
    head = "| clips | " + " | ".join(name for _, name in keys) + " |\n|" + "---|" * (len(keys) + 1) + "\n"
    body = "".join(f"| {r['clips']} | " + " | ".join(f"{r[k]:.4g}" for k, _ in keys) + " |\n" for r in rows)
    ratios = {k: growth(rows, k) for k, _ in keys}
    body += "".join(f"| growth at {r['clips']} (1 = linear) | " + " | ".join(f"{ratios[k][i]:.3g}" for k, _ in keys) + " |\n"
                    for i, r in enumerate(rows) if i)
    return head + body


def scaling(data: Path, root: Path, n: int, repeats: int) -> dict:
    train, rates = subset(data, n), {1: [], 2: []}
    before = load_average()
    for _ in range(repeats):
        for workers in (1, 2):
            r = prepare(data, train, root / f"cache-scaling-w{workers}", workers, ("data.cache_max_gb=50",))
            rates[workers].append(r["steady_clips_per_s"])
    med = {w: statistics.median(v) for w, v in rates.items()}
    return {"clips": n, "runs": rates, "median": med, "ratio_2_vs_1": round(med[2] / med[1], 3),
            "load_before": before, "load_after": load_average()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="work folder: caches, runs, the tables")
    ap.add_argument("--data", type=Path, default=None, help="the synthetic set (default ROOT/set, rendered if missing)")
    ap.add_argument("--sizes", default="500,2000,8000", help='comma list of clip counts ("": skip the growth table)')
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--capped-gb", type=float, default=None)
    ap.add_argument("--scaling", type=int, default=None, help="clips for the 1 vs 2 worker comparison")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]  # --sizes "": only the capped/scaling parts
    data = ensure_set(args.data or args.root / "set", max(sizes + [args.scaling or 0]))
    rows = []
    for n in sizes:
        train, cache = subset(data, n), args.root / f"cache-{n}"
        load = load_average()
        p = prepare(data, train, cache, args.workers)
        t = train_start(data, train, cache, args.root / f"run-{n}")
        rows.append({"clips": n, "prepare_s": p["seconds"], "cache_gb": p["cache_gb"], "prepare_rss_mb": p["rss_mb"],
                     "steady_clips_per_s": p["steady_clips_per_s"], "start_s": t["seconds"], "load_s": t["load_s"],
                     "start_rss_mb": t["rss_mb"], "train_cache_misses": t["misses"], "load_average": load})
        print(json.dumps(rows[-1]), flush=True)
    result = {"rows": rows, "workers": args.workers}
    if args.capped_gb and sizes:
        n = max(sizes)
        p = prepare(data, subset(data, n), args.root / "cache-capped", args.workers, (f"data.cache_max_gb={args.capped_gb}",))
        result["capped"] = {"clips": n, "cap_gb": args.capped_gb, **p}
        print(json.dumps(result["capped"]), flush=True)
    if args.scaling:
        result["scaling"] = scaling(data, args.root, args.scaling, args.repeats)
        print(json.dumps(result["scaling"]), flush=True)
    md = table(rows) if rows else ""
    if "scaling" in result:
        sc = result["scaling"]
        md += (f"\nprepare of {sc['clips']} clips, steady clips/s (median of {args.repeats}, alternating): "
               f"1 worker {sc['median'][1]:.1f}, 2 workers {sc['median'][2]:.1f}, ratio {sc['ratio_2_vs_1']:.2f}; "
               f"load average {sc['load_before']} before, {sc['load_after']} after\n")
    (args.root / "scale.md").write_text(md)
    (args.root / "scale.json").write_text(json.dumps(result, indent=2))
    print(md)


if __name__ == "__main__":
    main()

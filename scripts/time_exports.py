"""Two export dirs of the same run (e.g. before / after a change), every variant's video encoder timed
interleaved in one process, so machine load hits both alike: p50 per file and the after/before ratio.

    python scripts/time_exports.py exports/before exports/after --clip data/shapes/videos/eval_0000.mp4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.parity import interleaved_ms  # noqa: E402
from toolchain.bench.latency import session  # noqa: E402
from toolchain.data.video import decode_video  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--clip", type=Path, required=True, help="a video file to encode")
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    clip = decode_video(args.clip, 64)[None]
    variants = json.loads((args.after / "manifest.json").read_text())["variants"]
    fns = {}
    for v, files in variants.items():
        for tag, folder in (("before", args.before), ("after", args.after)):
            sess = session(folder / files["video"], args.threads)
            fns[f"{v} {tag}"] = lambda s=sess: s.run(None, {"frames": clip})
    times = interleaved_ms(fns, args.runs, warmup=3)
    print("| variant | before p50 ms | after p50 ms | after / before |\n|---|---:|---:|---:|")
    for v in variants:
        b, a = np.median(times[f"{v} before"]), np.median(times[f"{v} after"])
        print(f"| {v} | {b:.2f} | {a:.2f} | {a / b:.3f} |")


if __name__ == "__main__":
    main()

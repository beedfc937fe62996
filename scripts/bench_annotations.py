"""Time reading MSR-VTT-sized annotations: 10,000 clips x 20 captions (200,000 caption rows).

    python scripts/bench_annotations.py --root /tmp/ann                      # this checkout
    python scripts/bench_annotations.py --root /tmp/ann --compare /work/main # before/after, alternating

Writes MSR-VTT's train_val_videodatainfo.json (200k sentences), a CLIP4Clip MSRVTT_train.9k.csv,
the same rows as one jsonl and one csv, and empty placeholder video files (reading annotations
never decodes). Each measurement runs in a fresh process with the code of a checkout: read_split
(every reader's validation, missing-file checks) + group_by_video, and tokenizing the captions with
the built-in tokenizer. With --compare, the two checkouts alternate --repeats times; medians printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VIDEOS, PER_VIDEO = 10000, 20

MEASURE = r"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from toolchain.recipe import DataSection
from toolchain.data.formats import read_split
from toolchain.data.clips import group_by_video
root, out = Path(sys.argv[2]), {}
ann, vids = root / "train_val_videodatainfo.json", root / "videos"
cases = {"msrvtt 9k csv (180k captions)": DataSection(format="msrvtt", train=str(root / "MSRVTT_train.9k.csv"),
                                                      annotations=str(ann), video_root=str(vids)),
         "jsonl (200k rows)": DataSection(format="jsonl", train=str(root / "all.jsonl"), video_root=str(root)),
         "csv (200k rows)": DataSection(format="csv", train=str(root / "all.csv"), video_root=str(root))}
for name, data in cases.items():
    t0 = time.perf_counter()
    split = read_split(data, "train")
    group_by_video(split)
    out[name] = time.perf_counter() - t0
from export.tokenize import encode_texts, load_tokenizer
from toolchain.models.build import base_info
info = base_info("tiny-video-clip", "clip")
captions = [p.caption for p in split.pairs]
t0 = time.perf_counter()
encode_texts(load_tokenizer(info.tokenizer, info.max_text_len), captions)
out["tokenize 200k captions"] = time.perf_counter() - t0
print(json.dumps(out))
"""


def write_set(root: Path) -> None:
    if (root / "all.csv").is_file():
        return
    (root / "videos").mkdir(parents=True, exist_ok=True)
    for i in range(VIDEOS):
        (root / "videos" / f"video{i}.mp4").touch()
    rows = [(f"video{i}", f"a person does thing {j} in clip {i}") for i in range(VIDEOS) for j in range(PER_VIDEO)]
    doc = {"videos": [{"video_id": f"video{i}", "split": "train" if i < 6513 else ("validate" if i < 7010 else "test")}
                      for i in range(VIDEOS)],
           "sentences": [{"video_id": v, "caption": c, "sen_id": n} for n, (v, c) in enumerate(rows)]}
    (root / "train_val_videodatainfo.json").write_text(json.dumps(doc))
    (root / "MSRVTT_train.9k.csv").write_text("key,vid_key,video_id\n" + "".join(
        f"ret{i},msr{i},video{i}\n" for i in range(9000)))
    (root / "all.jsonl").write_text("".join(json.dumps({"video": f"videos/{v}.mp4", "caption": c}) + "\n" for v, c in rows))
    with open(root / "all.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "caption"])
        w.writerows((f"videos/{v}.mp4", c) for v, c in rows)


def measure(code: Path, root: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(code), str(root)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--compare", type=Path, default=None, help="another checkout (e.g. main) to time alternately")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    write_set(args.root)
    trees = {"this checkout": REPO} | ({f"{args.compare}": args.compare} if args.compare else {})
    runs = {name: [] for name in trees}
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    for _ in range(args.repeats):
        for name, code in trees.items():
            runs[name].append(measure(code, args.root))
    cases = list(runs["this checkout"][0])
    print(f"load average before: {load}; after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| case | " + " | ".join(f"{n} (median s)" for n in trees) + " |\n|" + "---|" * (len(trees) + 1))
    for case in cases:
        meds = [statistics.median(r[case] for r in runs[n]) for n in trees]
        print(f"| {case} | " + " | ".join(f"{m:.2f}" for m in meds) + " |")
    print(json.dumps(runs))


if __name__ == "__main__":
    main()

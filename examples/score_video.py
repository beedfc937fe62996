"""Score a video file against captions with an exported vqtool model: ONNX Runtime, numpy, tokenizers and
PyAV only (`pip install vqtool`, no extras, no torch).

    python examples/score_video.py exports/shapes-tiny clip.mp4 "a red circle moves left" "a blue square moves up"
"""

from __future__ import annotations

import argparse
import sys

from export.runtime import VideoTextRuntime
from toolchain.errors import VqtoolError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Rank captions for one video with a vqtool export.")
    parser.add_argument("export_dir", help="an export dir from `vqtool export` (holds manifest.json)")
    parser.add_argument("video", help="a video file (any codec FFmpeg reads)")
    parser.add_argument("captions", nargs="+", help="captions to rank")
    parser.add_argument("--variant", default="fp32", help="graph variant, e.g. fp32 or int8")
    parser.add_argument("--providers", default="auto", help="auto, cuda, cpu, tensorrt")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rt = VideoTextRuntime(args.export_dir, variant=args.variant, providers=args.providers)
        # A path is decoded with PyAV; a uint8 array [N, H, W, 3] (e.g. from a camera) works the same way.
        # score_videos is the model's own score: a dot product, or for X-CLIP each caption conditioned on the video.
        scores, frame_indices = rt.score_videos([args.video], args.captions)
        scores = scores[0]
    except VqtoolError as exc:  # a bad path, export dir, variant or provider: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.video}: frames {frame_indices[0].tolist()} selected in the graph, ran on {rt.providers[0]}")
    for caption, score in sorted(zip(args.captions, scores.tolist()), key=lambda pair: -pair[1]):
        print(f"{score:+.4f}  {caption}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

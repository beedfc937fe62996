"""Which variant runs where: every variant of an export under OpenVINO CPU vs ONNX Runtime CPU, on the
run's eval clips, at each OpenVINO inference precision asked for (the table in README / docs/results.md).

    python scripts/runtime_matrix.py exports/shapes-tiny runs/shapes-tiny --precision f32 --precision default

`default` is OpenVINO's own choice for this CPU (bf16 where the CPU has it). Prints one markdown
table: per variant and precision, video / text min cosine, video max abs diff, frame-index agreement.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.check_runtime import compare_variants, retrieval_feeds  # noqa: E402


def eval_feeds(run_dir: Path) -> dict:
    from export.merge import load_run
    from export.pipeline import parity_inputs

    recipe, info = load_run(run_dir)
    inputs = parity_inputs(recipe, info)
    return retrieval_feeds(inputs.clips, inputs.ids, inputs.mask)


def rows(result: dict, label: str) -> list[str]:
    out = []
    for variant, v in result["variants"].items():
        video, text = v["video"]["outputs"], v["text"]["outputs"]
        out.append(f"| {variant} | {label} | {video['video_embeds']['min_cosine']:.6f} | "
                   f"{text['text_embeds']['min_cosine']:.6f} | {video['video_embeds']['max_abs_diff']:.2g} | "
                   f"{100 * video['frame_indices']['agreement']:.0f}% | {'pass' if v['passed'] else 'FAIL'} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--precision", action="append", help="f32 (default), bf16, f16 or default")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    variants = json.loads((args.export_dir / "manifest.json").read_text())["variants"]
    feeds = eval_feeds(args.run_dir)
    lines = ["| variant | OpenVINO precision | video min cos | text min cos | video max abs | frames agree | f32 gate |",
             "|---|---|---:|---:|---:|---:|---|"]
    for precision in args.precision or ["f32"]:
        result = compare_variants(args.export_dir, variants, feeds, "openvino", args.threads, precision=precision)
        label = result["inference_precision"] + (" (OpenVINO's default)" if precision == "default" else "")
        lines += rows(result, label)
        print(f"{precision}: OpenVINO {result['version']} on {result['device_name']} vs {result['reference']}, "
              f"{result['inputs']['video']} clips", file=sys.stderr)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Export targets of the video encoder: `portable` (standard ONNX ops) or `cpu` (ONNX Runtime CPU fusions).

A target rewrites the fp32 graph before quantization, so every variant (int8, int4, ...) is made from
the rewritten graph. `cpu` ties the file to ONNX Runtime (com.microsoft ops); `portable` is the graph
as exported, byte for byte.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import onnx

from export.fusions import fuse_attention, fuse_skip_layernorm, patch_conv_as_matmul
from export.quantize import atomic
from toolchain.errors import VqtoolError

TARGETS = ("portable", "cpu")

# The cpu target's rewrites, in the order they run; each returns how many places it rewrote.
CPU_FUSIONS: dict[str, Callable[[onnx.ModelProto, int], int]] = {
    "attention": lambda model, image_size: fuse_attention(model),
    "skip_layernorm": lambda model, image_size: fuse_skip_layernorm(model),
    "patch_matmul": patch_conv_as_matmul,
}
# What the cpu target applies unless told otherwise (CLIP ViT-B/32, 8 frames at 224, 2 threads,
# ORT 1.32, int8 p50 in one interleaved run): attention + patch_matmul 0.85x the portable int8,
# attention alone 0.91x, patch_matmul alone 0.94x; skip_layernorm is off, 1.03-1.12x: each
# SkipLayerNormalization took 1.7-7.9 ms against 0.17 ms for the LayerNormalization (+ Add) it replaced.
CPU_DEFAULT = ("attention", "patch_matmul")
ONLY_ENV = "VQTOOL_CPU_FUSIONS"  # experiments: a comma list of CPU_FUSIONS names to apply instead


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise VqtoolError(f"export target {target!r} is not known; choose one of {', '.join(TARGETS)} (--target)")
    return target


def cpu_fusions(only: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The rewrites to apply: `only`, else $VQTOOL_CPU_FUSIONS (comma list, may be empty), else CPU_DEFAULT."""
    if only is None and ONLY_ENV in os.environ:
        only = tuple(n.strip() for n in os.environ[ONLY_ENV].split(",") if n.strip())
    chosen = CPU_DEFAULT if only is None else only
    bad = [n for n in chosen if n not in CPU_FUSIONS]
    if bad:
        raise VqtoolError(f"cpu fusion(s) {', '.join(bad)} not known; choose from {', '.join(CPU_FUSIONS)} "
                         f"(${ONLY_ENV} or `only`)")
    return chosen


def apply_target(path_in: Path, path_out: Path, target: str, image_size: int,
                 only: tuple[str, ...] | None = None) -> dict[str, int]:
    """Write `path_in`'s fp32 graph for `target` to `path_out` (atomically); returns what was rewritten, by name.

    `image_size`: the encoder's input H = W after preprocessing (the patch Conv's input). `only`: the
    cpu rewrites to apply (default CPU_DEFAULT); the counts name every rewrite, 0 where not applied.
    """
    check_target(target)
    path_in, path_out = Path(path_in), Path(path_out)
    if target == "portable":
        if path_in.resolve() != path_out.resolve():
            atomic(path_out, lambda out: shutil.copyfile(path_in, out))
        return {}
    chosen = cpu_fusions(only)
    model = onnx.load(str(path_in))
    counts = {name: (fusion(model, image_size) if name in chosen else 0) for name, fusion in CPU_FUSIONS.items()}
    set_meta(model, "vqtool.target", target)
    set_meta(model, "vqtool.cpu_fusions", ",".join(f"{k}={v}" for k, v in counts.items()))
    atomic(path_out, lambda out: onnx.save(model, str(out)))
    return counts


def set_meta(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value

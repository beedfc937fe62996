"""Quantized variants of an fp32 graph, all through ONNX Runtime's own quantizers (the one seam for them)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from typing import get_args

from toolchain.errors import VqtoolError
from toolchain.recipe import Variant

SUPPORTED = get_args(Variant)  # one list: the recipe schema and the exporter agree by construction


def variant_path(base: Path, variant: str) -> Path:
    """video_encoder.onnx -> video_encoder.int8.onnx (fp32 keeps the plain name)."""
    return base if variant == "fp32" else base.with_name(f"{base.stem}.{variant}{base.suffix}")


def quantize_int8_dynamic(src: Path, dst: Path) -> Path:
    """Dynamic int8: per-channel int8 weights, activations quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        out = Path(tmp) / "q.onnx"
        quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, per_channel=True)
        os.replace(out, dst)
    return dst


def make_variant(fp32: Path, variant: str) -> Path:
    if variant == "fp32":
        return fp32
    if variant == "int8":
        return quantize_int8_dynamic(fp32, variant_path(fp32, variant))
    raise VqtoolError(
        f"export variant {variant!r} is not available yet; supported: {', '.join(SUPPORTED)} "
        "(set export.variants in the recipe or pass --variants)"
    )

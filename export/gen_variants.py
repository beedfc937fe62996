"""Variants of a generative decoder graph (fp32, fp16, int8, int4, int4-gguf), all through export/quantize.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from export.quantize import (atomic, convert_fp16, optimize_fp32, quantize_int4_decoder, quantize_int4_gguf,
                             quantize_int8_dynamic, variant_path)
from toolchain.errors import VqtoolError

DECODER_VARIANTS = ("fp32", "fp16", "int8", "int4", "int4-gguf")


@dataclass
class DecoderQuant:
    """int4 settings. symmetric False: asymmetric blocks (a Q4_1 GGUF's own layout); lm_head at 8 bits."""

    block_size: int = 32
    symmetric: bool = False
    accuracy_level: int = 4  # int8 compute on CPU (fastest); 1 = float32 compute
    lm_head_bits: int = 8
    gguf_blocks: dict | None = None  # int4-gguf: export.gguf_int4.read_gguf_blocks(...)
    gguf_sources: dict | None = None  # int4-gguf: export.gguf_int4.matmul_sources(model)


def make_decoder_variant(fp32: Path, variant: str, options: DecoderQuant | None = None) -> Path:
    """Write decoder.VARIANT.onnx beside the (raw) fp32 export; fp32 itself is ORT-optimised in place."""
    opt = options or DecoderQuant()
    dst = variant_path(Path(fp32), variant)
    if variant == "fp32":
        return optimize_fp32(fp32, dst)  # src is dst: ORT reads it before the atomic rename
    builders = {
        "fp16": lambda: convert_fp16(fp32, dst),
        "int8": lambda: quantize_int8_dynamic(fp32, dst),
        "int4": lambda: quantize_int4_decoder(fp32, dst, opt.block_size, opt.symmetric, opt.accuracy_level,
                                              opt.lm_head_bits),
        "int4-gguf": lambda: gguf_variant(fp32, dst, opt),
    }
    if variant not in builders:
        raise VqtoolError(f"decoder variant {variant!r} is not known; choose from {', '.join(DECODER_VARIANTS)}")
    return builders[variant]()


def gguf_variant(fp32: Path, dst: Path, opt: DecoderQuant) -> Path:
    if not opt.gguf_blocks or not opt.gguf_sources:
        raise VqtoolError("int4-gguf needs the GGUF's blocks: DecoderQuant(gguf_blocks=read_gguf_blocks(path, model), "
                          "gguf_sources=matmul_sources(model)); use int4 for a model that did not come from a GGUF")
    return quantize_int4_gguf(fp32, dst, opt.gguf_blocks, opt.gguf_sources, opt.accuracy_level)

"""The recipe's export section: variants, parity gates, int4 quantization (re-exported by recipe.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from toolchain.recipe_section import Section

Variant = Literal["fp32", "fp16", "int8", "int8-static", "int4"]
GateName = Variant


class GateSection(Section):
    min_cosine: float | None = Field(None, ge=-1, le=1)
    max_r1_drop: float | None = Field(None, ge=0)


DEFAULT_GATES = {
    "fp32": {"min_cosine": 0.9999, "max_r1_drop": 0.0},
    "fp16": {"min_cosine": 0.999, "max_r1_drop": 1.0},
    "int8": {"min_cosine": 0.99, "max_r1_drop": 1.0},
    "int8-static": {"min_cosine": 0.99, "max_r1_drop": 1.0},
    "int4": {"min_cosine": 0.98, "max_r1_drop": 2.0},
}


class Int4Section(Section):
    """Weight-only MatMulNBits: blocks of `block_size` input channels share a scale (and a zero point)."""

    block_size: int = Field(32, ge=16, le=256)  # used when search is off
    symmetric: bool = True
    # auto: level 4 (int8 compute, fastest on CPU) if it passes the parity gate, else 0 (float compute)
    accuracy_level: Literal["auto", 0, 1, 2, 3, 4] = "auto"
    # search: algorithms x blocks 16..128 all at 4 bits (smallest file first), the other level, then the
    # fewest most error-prone MatMuls (measured) kept at 8 bits that pass; the smallest passing file is
    # kept (export/int4_search.py). Off: the first algorithm at block_size, every MatMul at 4 bits.
    search: bool = True
    algorithms: list[Literal["rtn", "k_quant", "hqq", "gptq"]] = Field(
        default_factory=lambda: ["rtn", "k_quant", "hqq", "gptq"], min_length=1)
    max_tries: int = Field(32, ge=1)  # each try quantizes and checks every graph (a few seconds on the tiny model)

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(f"must be a power of two (16, 32, 64, 128 or 256), got {value}")
        return value


class GenGateSection(Section):
    """video-llm export, per decoder variant (fp32 must also generate PyTorch's tokens on every eval clip):
    min_top1: teacher-forced top-1 agreement (%) with PyTorch's greedy tokens; max_metric_drop: points of
    CIDEr-D (captioning) or QA accuracy (%) the variant may lose against PyTorch's own generations."""

    min_top1: float | None = Field(None, ge=0, le=100)
    max_metric_drop: float | None = Field(None, ge=0)


DEFAULT_GEN_GATES = {
    "fp32": {"min_top1": 100.0, "max_metric_drop": 0.0},
    "fp16": {"min_top1": 99.0, "max_metric_drop": 2.0},
    "int8": {"min_top1": 95.0, "max_metric_drop": 5.0},
    "int4": {"min_top1": 90.0, "max_metric_drop": 10.0},
}
GenVariant = Literal["fp32", "fp16", "int8", "int4"]


class ExportSection(Section):
    variants: list[Variant] = ["fp32", "int8"]
    # video-llm: the vision graph's own variant (the decoder variants come from `variants`); its feature
    # cosine vs PyTorch is gated with that variant's retrieval min_cosine
    vision_variant: Literal["fp32", "fp16", "int8"] = "fp32"
    gen_parity: dict[GenVariant, GenGateSection] = Field(default_factory=dict)
    exporter: Literal["dynamo", "torchscript"] = "dynamo"
    # portable: standard ONNX ops (CPU, CUDA, TensorRT, OpenVINO load them); cpu: the video encoder's
    # attention as com.microsoft MultiHeadAttention and its patch Conv as an im2col MatMul, for ONNX
    # Runtime's CPU provider only (export/targets.py; int8 0.92x the portable one on ViT-B/32)
    target: Literal["portable", "cpu"] = "portable"
    opset: int = Field(18, ge=17)
    int4: Int4Section = Int4Section()
    calibration_clips: int = Field(16, ge=1)
    parity: dict[GateName, GateSection] = Field(default_factory=dict)
    latency_runs: int = Field(20, ge=1)
    threads: int = Field(2, ge=1)

    def gate(self, variant: str) -> GateSection:
        """The recipe's thresholds for a variant; unset fields take the defaults."""
        given = self.parity.get(variant, GateSection()).model_dump(exclude_none=True)
        return GateSection(**{**DEFAULT_GATES[variant], **given})

    def gen_gate(self, variant: str) -> GenGateSection:
        given = self.gen_parity.get(variant, GenGateSection()).model_dump(exclude_none=True)
        return GenGateSection(**{**DEFAULT_GEN_GATES[variant], **given})

"""Graph variants of an fp32 export, all through ONNX Runtime's own tools (the one seam for them).

fp32 is ORT-optimised offline, fp16 converted with ORT's float16 tool, int8 / int8-static / int4
come from `onnxruntime.quantization`. Every function reads `src` and writes `dst` atomically.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, get_args

import onnx

from export.validate import strip_unused_opsets, subgraphs
from toolchain.errors import VqtoolError
from toolchain.recipe import Variant

SUPPORTED = get_args(Variant)  # one list: the recipe schema and the exporter agree by construction
INT4_LEVEL_ORDER = (4, 1)  # auto: int8 compute (fastest on CPU) first, then float32 compute
STATIC_OP_TYPES = ("MatMul", "Gemm", "Conv")
# ORT's CPU Resize has no float16 kernel (resizing is cheap anyway); MultiHeadAttention (the cpu export
# target) has none either
FP16_KEEP_FLOAT32 = ["Resize", "MultiHeadAttention"]


@dataclass
class Int8Options:
    """Dynamic int8 knobs (the defaults are the measured best; `vqtool bench latency --int8-sweep`)."""

    per_channel: bool = True
    reduce_range: bool = False
    op_types: tuple[str, ...] = ("MatMul",)
    preprocess: bool = True  # ORT's quant_pre_process: shape inference + graph optimisation first


@dataclass
class VariantOptions:
    """What a variant needs beyond the fp32 graph: calibration feeds for int8-static, int4 settings."""

    calibration: list[dict] = field(default_factory=list)  # ORT input feeds, e.g. {"frames": uint8 clip}
    int4_block_size: int = 32
    int4_symmetric: bool = True
    int4_accuracy_level: int = 4
    int8: Int8Options = field(default_factory=Int8Options)


def variant_path(base: Path, variant: str) -> Path:
    """video_encoder.onnx -> video_encoder.int8.onnx (fp32 keeps the plain name)."""
    return base if variant == "fp32" else base.with_name(f"{base.stem}.{variant}{base.suffix}")


def atomic(dst: Path, write: Callable[[Path], None]) -> Path:
    """Run write(tmp_path) in a temp dir beside dst, then rename onto dst."""
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".q-") as tmp:
        out = Path(tmp) / dst.name
        write(out)
        os.replace(out, dst)
    return dst


def optimize_fp32(src: Path, dst: Path) -> Path:
    """ORT graph optimisation, saved offline at the BASIC level.

    BASIC (constant folding, redundant-node removal, fusions into standard ops) keeps the graph in
    the default ONNX domain, so CPU, CUDA and TensorRT all load it. EXTENDED would add com.microsoft
    fusions (Attention, SkipLayerNormalization, ...) that ORT documents as tied to the provider
    they were made for; each provider applies those itself when it loads the graph.
    """
    import onnxruntime as ort

    def write(out: Path) -> None:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(out)
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
        copy_metadata(src, out)

    return atomic(dst, write)


def copy_metadata(src: Path, dst: Path) -> None:
    """Finish a rewritten graph: vqtool's metadata_props from `src`, and only the opset imports it uses.

    Every variant file passes through here (fp32 via optimize_fp32, the others via their builder), so
    no file keeps the seven unused domains ORT's offline optimisation and quantizers declare.
    """
    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    proto = onnx.load(str(dst))
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    strip_unused_opsets(proto)
    onnx.save(proto, str(dst))


def preprocessed(src: Path, tmp: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp / "pre.onnx"
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    return pre


def quantize_int8_dynamic(src: Path, dst: Path, options: Int8Options | None = None) -> Path:
    """Dynamic int8: int8 weights (per channel), activations quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    opt = options or Int8Options()

    def write(out: Path) -> None:
        model = preprocessed(src, out.parent) if opt.preprocess else src
        quantize_dynamic(str(model), str(out), weight_type=QuantType.QInt8, per_channel=opt.per_channel,
                         reduce_range=opt.reduce_range, op_types_to_quantize=list(opt.op_types))
        copy_metadata(src, out)

    return atomic(dst, write)


class FeedReader:
    """onnxruntime's CalibrationDataReader protocol over a list of input feeds."""

    def __init__(self, feeds: list[dict]):
        self.feeds = iter(feeds)

    def get_next(self) -> dict | None:
        return next(self.feeds, None)

    def rewind(self) -> None:  # part of the protocol; the calibrator reads once
        pass


def quantize_int8_static(src: Path, dst: Path, calibration: list[dict]) -> Path:
    """Static int8 in QDQ form: activation ranges calibrated (min/max) on `calibration` feeds.

    For the video graph the feeds are raw uint8 clips, so calibration runs through the fused selector
    and preprocessing exactly as deployment will. Only MatMul/Gemm/Conv with constant weights are
    quantized: the selector's integer arithmetic and the float preprocessing stay as they are.
    Symmetric int8 activations: on the tiny model, asymmetric uint8 ranges from 16 clips gave min
    cosine 0.948 on the 48 eval clips (clips outside the calibrated range clip), symmetric int8 0.999.
    Only their inputs are quantized, not their outputs: ORT's default also rounds each MatMul's output
    to int8 (a second rounding before the bias add), which on the shipped default's text graph took
    the embeddings to min cosine 0.968 against 0.9997 without it (the attention Q/K/V projections'
    outputs span about +-20, so one int8 step is 0.16 there).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise VqtoolError("int8-static needs calibration clips (export.calibration_clips >= 1 readable videos)")

    def write(out: Path) -> None:
        quantize_static(
            str(preprocessed(src, out.parent)), str(out), FeedReader(calibration), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(STATIC_OP_TYPES), per_channel=True, activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "MatMulConstBOnly": True,
                           "OpTypesToExcludeOutputQuantization": list(STATIC_OP_TYPES)},
        )
        copy_metadata(src, out)

    return atomic(dst, write)


def quantize_int4(src: Path, dst: Path, block_size: int, symmetric: bool, accuracy_level: int) -> Path:
    """Weight-only 4-bit MatMulNBits (com.microsoft), blocks of `block_size` input channels, ORT's RTN."""
    return quantize_int4_plan(src, dst, Int4Plan("rtn", block_size, symmetric, accuracy_level))


INT4_ALGORITHMS = ("rtn", "hqq", "gptq", "k_quant")  # what MatMulNBitsQuantizer offers on CPU


@dataclass(frozen=True)
class Int4Plan:
    """One way to make an int4 graph: algorithm, block, compute level, and the MatMuls kept at 8 bits.

    rtn: ORT's blockwise round-to-nearest; hqq: half-quadratic (asymmetric, float zero points); gptq:
    second-order error correction calibrated on `calibration` feeds; k_quant: llama.cpp's k-quant
    scale search. int8_nodes: MatMul node names quantized to 8-bit MatMulNBits instead (the most
    sensitive ones, see export/int4_search.py).
    """

    algorithm: str = "rtn"
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4
    int8_nodes: tuple[str, ...] = ()

    def describe(self) -> dict:
        return {"algorithm": self.algorithm, "block_size": self.block_size, "symmetric": self.symmetric_for_file(),
                "accuracy_level": self.accuracy_level, "int8_matmuls": list(self.int8_nodes)}

    def symmetric_for_file(self) -> bool:
        return self.symmetric and self.algorithm != "hqq"  # HQQ always writes zero points


def int4_config(plan: Int4Plan, calibration: list[dict]):
    """The MatMulNBitsQuantizer algorithm config for a plan (None: ORT's default RTN)."""
    from onnxruntime.quantization import matmul_nbits_quantizer as q

    if plan.algorithm == "hqq":
        return q.HQQWeightOnlyQuantConfig(block_size=plan.block_size, bits=4)
    if plan.algorithm == "k_quant":
        return q.KQuantWeightOnlyQuantConfig()
    if plan.algorithm not in INT4_ALGORITHMS:
        raise VqtoolError(f"int4 algorithm {plan.algorithm!r} is not known; choose from {', '.join(INT4_ALGORITHMS)}")
    return None


def constant_matmuls(proto: onnx.ModelProto) -> list[str]:
    """Names of the MatMul nodes with a constant 2-D weight (what MatMulNBits can replace)."""
    inits = {i.name: i for i in proto.graph.initializer}
    return [n.name for n in proto.graph.node
            if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2]


def quantize_nbits(proto: onnx.ModelProto, plan: Int4Plan, calibration: list[dict]) -> onnx.ModelProto:
    """4-bit MatMulNBits by the plan's algorithm, then its int8_nodes at 8 bits (ORT's RTN), in memory."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    keep8 = [n for n in plan.int8_nodes if n]
    level = plan.accuracy_level or None
    if plan.algorithm == "gptq":
        proto = quantize_gptq(proto, plan, calibration, keep8)
    else:
        quant = MatMulNBitsQuantizer(proto, bits=4, block_size=plan.block_size, is_symmetric=plan.symmetric,
                                     accuracy_level=level, nodes_to_exclude=keep8,
                                     algo_config=int4_config(plan, calibration))
        quant.process()
        proto = quant.model.model
    if keep8:
        others = [n for n in constant_matmuls(proto) if n not in keep8]
        quant = MatMulNBitsQuantizer(proto, bits=8, block_size=plan.block_size, is_symmetric=plan.symmetric,
                                     accuracy_level=level, nodes_to_exclude=others)
        quant.process()
        proto = quant.model.model
    set_accuracy_level(proto, plan.accuracy_level)
    return proto


def quantize_gptq(proto: onnx.ModelProto, plan: Int4Plan, calibration: list[dict], keep: list[str]) -> onnx.ModelProto:
    """GPTQ through the same INC code MatMulNBitsQuantizer calls, with `keep` left float (its own
    nodes_to_exclude is ignored on the GPTQ path); the Hessians come from the calibration feeds."""
    from onnxruntime.quantization.neural_compressor import gptq_quantize

    if not calibration:
        raise VqtoolError("int4 algorithm gptq needs calibration feeds (export.calibration_clips training clips)")
    scheme = "sym" if plan.symmetric else "asym"
    config = {n: {"bits": 4, "group_size": plan.block_size, "scheme": scheme} for n in constant_matmuls(proto)}
    config |= {n: "fp32" for n in keep}
    model = gptq_quantize(proto, ((feed, None) for feed in calibration), weight_config=config, num_bits=4,
                          group_size=plan.block_size, scheme=scheme, n_samples=-1,
                          accuracy_level=plan.accuracy_level)
    return model.model


def set_accuracy_level(proto: onnx.ModelProto, level: int) -> None:
    """Every MatMulNBits at `level` (0: attribute left out, ORT's default); HQQ and INC's paths ignore the knob."""
    for node in proto.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        kept = [a for a in node.attribute if a.name != "accuracy_level"]
        del node.attribute[:]
        node.attribute.extend(kept)
        if level:
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", level))


def quantize_int4_plan(src: Path, dst: Path, plan: Int4Plan, calibration: list[dict] | None = None) -> Path:
    """Weight-only int4 of `src` by one Int4Plan, written atomically to `dst`."""

    def write(out: Path) -> None:
        proto = quantize_nbits(onnx.load(str(src)), plan, calibration or [])
        onnx.save(proto, str(out))
        copy_metadata(src, out)

    return atomic(dst, write)


def outer_inputs(node: onnx.NodeProto) -> list[str]:
    """A node's inputs, plus the outer-scope values its subgraphs read (those must exist before it too)."""
    names = [i for i in node.input if i]
    for graph in subgraphs(node):
        inner = {i.name for i in graph.input} | {t.name for t in graph.initializer}
        for sub in graph.node:
            inner |= set(sub.output)
            names += [i for i in outer_inputs(sub) if i not in inner]
    return names


def sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder nodes so every input is made before it is read, keeping the given order where it is valid.

    ORT's float16 converter appends the Cast nodes it inserts around float32-kept ops (Resize) at the
    end of the node list, after their consumers: ORT tolerates that, onnx.checker and other runtimes
    need not. Values no node makes (graph inputs, initializers, outer scope) count as ready.
    """
    made = {o for n in graph.node for o in n.output}
    ready = {i for n in graph.node for i in outer_inputs(n) if i not in made}
    pending, ordered = list(graph.node), []
    while pending:
        left = []
        for node in pending:
            if all(i in ready for i in outer_inputs(node)):
                ordered.append(node)
                ready.update(node.output)
            else:
                left.append(node)
        if len(left) == len(pending):
            raise VqtoolError(f"graph {graph.name!r} has a cycle or an input no node makes "
                              f"(node {left[0].name!r}); re-export it")
        pending = left
    copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(copies)


def convert_fp16(src: Path, dst: Path) -> Path:
    """float16 weights and math, for GPUs; uint8 frames / int64 ids in and float32 embeddings out."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    def write(out: Path) -> None:
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True,
                                         op_block_list=DEFAULT_OP_BLOCK_LIST + FP16_KEEP_FLOAT32)
        sort_topologically(model.graph)
        onnx.save(model, str(out))
        copy_metadata(src, out)

    return atomic(dst, write)


def make_variant(fp32: Path, variant: str, options: VariantOptions | None = None) -> Path:
    """Write the `variant` file derived from the (already optimised) fp32 graph; fp32 is itself."""
    opt = options or VariantOptions()
    dst = variant_path(fp32, variant)
    builders = {
        "fp32": lambda: fp32,
        "fp16": lambda: convert_fp16(fp32, dst),
        "int8": lambda: quantize_int8_dynamic(fp32, dst, opt.int8),
        "int8-static": lambda: quantize_int8_static(fp32, dst, opt.calibration),
        "int4": lambda: quantize_int4(fp32, dst, opt.int4_block_size, opt.int4_symmetric, opt.int4_accuracy_level),
    }
    if variant not in builders:
        raise VqtoolError(f"export variant {variant!r} is not known; choose from {', '.join(SUPPORTED)} "
                          "(export.variants in the recipe, or --variants)")
    return builders[variant]()


# --- generative decoders (export/gen_variants.py): additive, the functions above are unchanged ---

def lm_head_matmul(proto: onnx.ModelProto) -> str | None:
    """Name of the MatMul that produces the logits: the last one whose constant weight is [hidden, vocab]."""
    inits = {i.name: i for i in proto.graph.initializer}
    vocab = proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    heads = [n.name for n in proto.graph.node
             if n.op_type == "MatMul" and n.input[1] in inits and list(inits[n.input[1]].dims)[-1:] == [vocab]]
    return heads[-1] if heads else None


def quantize_int4_decoder(src: Path, dst: Path, block_size: int = 32, symmetric: bool = False,
                          accuracy_level: int = 4, lm_head_bits: int = 8) -> Path:
    """Weight-only MatMulNBits (round to nearest) on a decoder; the lm_head at `lm_head_bits` (8, 4, or 32 = float).

    An int4 lm_head is where small LMs start repeating themselves, so it stays 8-bit by default.
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if lm_head_bits not in (4, 8, 32):
        raise VqtoolError(f"lm_head_bits must be 4, 8 or 32 (float), got {lm_head_bits!r}")

    def write(out: Path) -> None:
        proto = onnx.load(str(src))
        head = [h for h in [lm_head_matmul(proto)] if h]
        common = dict(block_size=block_size, is_symmetric=symmetric, accuracy_level=accuracy_level or None)
        quant = MatMulNBitsQuantizer(proto, bits=4, nodes_to_exclude=head if lm_head_bits != 4 else [], **common)
        quant.process()
        proto = quant.model.model
        if lm_head_bits == 8 and head:
            quant = MatMulNBitsQuantizer(proto, bits=8, nodes_to_include=head, **common)
            quant.process()
            proto = quant.model.model
        onnx.save(proto, str(out))
        copy_metadata(src, out)

    return atomic(dst, write)


def quantize_int4_gguf(src: Path, dst: Path, blocks: dict, sources: dict, accuracy_level: int = 4) -> Path:
    """int4 that holds a GGUF's Q4_1 (and Q8_0) blocks exactly instead of re-quantizing (export/gguf_int4.py)."""
    from export.gguf_int4 import write_gguf_matmuls

    def write(out: Path) -> None:
        replaced = write_gguf_matmuls(src, out, blocks, sources, accuracy_level)
        if not replaced:
            raise VqtoolError(f"{src}: no MatMul weight matches a GGUF block tensor; export the model loaded from that GGUF")
        copy_metadata(src, out)

    return atomic(dst, write)

"""torch -> embedding.onnx / decoder.onnx from their GraphSpec: dummy inputs, dynamic axes, axis names."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import torch
from torch import nn

from export.gen_graph import DecoderGraph, EmbeddingGraph, VisionGraph, decoder_parts
from export.gen_spec import DecoderShape, GraphSpec, decoder_spec, embedding_spec, vision_spec
from export.onnx_export import export_onnx, set_metadata

OPSET = 18


def decoder_shape(model: nn.Module) -> DecoderShape:
    """The cache layout of a causal LM or VLM, from its text config."""
    _, head, cfg = decoder_parts(model)
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    return DecoderShape(cfg.num_hidden_layers, kv, head_dim, cfg.hidden_size, head.out_features)


def example_inputs(spec: GraphSpec, fixed: dict | None = None) -> tuple[torch.Tensor, ...]:
    """Dummy inputs with every dynamic axis at its `example_sizes` value (>= 2, so it stays dynamic)."""
    sizes = dict(spec.example_sizes)
    sizes["total_sequence"] = sizes.get("past_sequence", 0) + sizes.get("sequence", 0)
    sizes |= fixed or {}
    gen = torch.Generator().manual_seed(0)
    args = []
    for t in spec.inputs:
        shape = [sizes[a] if isinstance(a, str) else a for a in t.axes]
        if t.name == "attention_mask":
            args.append(torch.ones(shape, dtype=torch.int64))
        elif t.name == "position_ids":
            past = sizes.get("past_sequence", 0)
            args.append(torch.arange(past, past + shape[1]).expand(shape).contiguous())
        elif t.dtype == "uint8":
            args.append(torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8))
        elif t.dtype == "int64":
            args.append(torch.randint(0, 8, shape, generator=gen))
        else:
            args.append(torch.randn(shape, generator=gen))
    return tuple(args)


def dynamic_shapes(spec: GraphSpec, positional: int | None = None) -> tuple:
    """Every named axis dynamic; torch.export works out how they relate (total = past + sequence).

    positional: how many inputs the forward names before its `*past`, which torch.export sees as one tuple.
    """
    shapes = [{i: torch.export.Dim.DYNAMIC for i in t.dynamic()} for t in spec.inputs]
    if positional is None:
        return tuple(shapes)
    return (*shapes[:positional], tuple(shapes[positional:]))


def name_axes(path: Path, spec: GraphSpec) -> Path:
    """Give the graph's inputs and outputs the spec's axis names (the exporter writes s0, s1, ...)."""
    proto = onnx.load(str(path))
    for values, tensors in ((proto.graph.input, spec.inputs), (proto.graph.output, spec.outputs)):
        by_name = {t.name: t for t in tensors}
        for value in values:
            for dim, axis in zip(value.type.tensor_type.shape.dim, by_name[value.name].axes):
                if isinstance(axis, str):
                    dim.dim_param = axis
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return path


def export_graph(module: nn.Module, spec: GraphSpec, path: Path, metadata: dict | None = None,
                 exporter: str = "dynamo") -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    args = example_inputs(spec)
    dynamic = dynamic_shapes(spec, getattr(module, "positional_inputs", None))
    if exporter == "torchscript":  # the TorchScript exporter wants {input: {axis: name}}
        dynamic = {t.name: t.dynamic() for t in spec.inputs}
        export_onnx_ts(module, args, path, spec, dynamic)
    else:
        export_onnx(module, args, path, spec.input_names(), spec.output_names(), dynamic, OPSET, exporter)
    name_axes(path, spec)
    return set_metadata(path, {"vqtool.graph": spec.name, **(metadata or {})})


def export_onnx_ts(module, args, path: Path, spec: GraphSpec, axes: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with torch.no_grad():
        torch.onnx.export(module.eval(), args, str(tmp), dynamo=False, input_names=spec.input_names(),
                          output_names=spec.output_names(), dynamic_axes=axes, opset_version=OPSET)
    os.replace(tmp, path)


TARGETS = ("portable", "cpu")


def export_decoder(model: nn.Module, out_path: Path, metadata: dict | None = None, exporter: str = "dynamo",
                   target: str = "portable") -> GraphSpec:
    """decoder.onnx of a causal LM or a VLM's language model: one graph for prefill and decode.

    target "portable": standard ONNX ops (every provider loads it). "cpu": then ONNX Runtime's fused
    com.microsoft ops for its CPU provider, by transformers' own pass (fuse_for_onnxruntime); on our
    graph it fuses RotaryEmbedding and SkipSimplifiedLayerNormalization, not the attention.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    spec = decoder_spec(decoder_shape(model))
    export_graph(DecoderGraph(model).eval(), spec, Path(out_path), {"vqtool.target": target, **(metadata or {})}, exporter)
    if target != "portable":
        fuse_for_provider(Path(out_path), target)
    return spec


def fuse_for_provider(path: Path, target: str) -> Path:
    import onnx_ir as ir
    from transformers.exporters.onnxruntime_fusions import fuse_for_onnxruntime

    model = ir.load(str(path))
    fuse_for_onnxruntime(model, target)
    tmp = path.with_name(f".{path.name}.tmp")
    ir.save(model, str(tmp))
    os.replace(tmp, path)
    return path


def export_embedding(model: nn.Module, out_path: Path, token_id: int | None = None, metadata: dict | None = None,
                     exporter: str = "dynamo") -> GraphSpec:
    """embedding.onnx: the model's own input embeddings with the video features merged in."""
    graph = EmbeddingGraph(model, token_id).eval()
    spec = embedding_spec(graph.embed.embedding_dim)
    export_graph(graph, spec, Path(out_path), {"vqtool.video_token_id": graph.token_id, **(metadata or {})}, exporter)
    return spec


def export_vision(model: nn.Module, out_path: Path, metadata: dict | None = None, exporter: str = "dynamo") -> GraphSpec:
    """vision.onnx of a VideoLLM: raw uint8 frames -> its video tokens (flattened) and frame indices."""
    spec = vision_spec(int(model.config.text_config.hidden_size), model.k)
    export_graph(VisionGraph(model).eval(), spec, Path(out_path), metadata, exporter)
    return spec

"""Declarative descriptions of the generative graphs (names, dtypes, dynamic axes); torch-free.

One `GraphSpec` per graph, as optimum's per-architecture configs do: the exporter builds its dummy
inputs and dynamic axes from it, the runtime and the parity checks read it back from manifest.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from toolchain.errors import VqtoolError

GEN_FORMAT = 1
DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "uint8": np.uint8}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: a name, a dtype and its axes (a str is a dynamic axis, an int fixed)."""

    name: str
    dtype: str
    axes: tuple

    def dynamic(self) -> dict[int, str]:
        return {i: a for i, a in enumerate(self.axes) if isinstance(a, str)}


@dataclass(frozen=True)
class GraphSpec:
    name: str  # "decoder", "embedding", "vision"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Sizes the dummy export inputs use: every dynamic axis >= 2, so none is specialised to 1 or 0.
    example_sizes: dict = field(default_factory=dict)

    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


@dataclass(frozen=True)
class DecoderShape:
    """What the KV cache and the logits look like; read from the decoder's config."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden: int
    vocab: int


def past_names(layer: int) -> tuple[str, str]:
    return f"past_key_values.{layer}.key", f"past_key_values.{layer}.value"


def present_names(layer: int) -> tuple[str, str]:
    return f"present.{layer}.key", f"present.{layer}.value"


def decoder_spec(shape: DecoderShape, dtype: str = "float32") -> GraphSpec:
    """inputs_embeds, attention_mask, position_ids, past_key_values.N.key/value -> logits, present.N.key/value."""
    kv = ("batch", shape.num_kv_heads, "past_sequence", shape.head_dim)
    kv_out = ("batch", shape.num_kv_heads, "total_sequence", shape.head_dim)
    inputs = [TensorSpec("inputs_embeds", dtype, ("batch", "sequence", shape.hidden)),
              TensorSpec("attention_mask", "int64", ("batch", "total_sequence")),
              TensorSpec("position_ids", "int64", ("batch", "sequence"))]
    outputs = [TensorSpec("logits", dtype, ("batch", "sequence", shape.vocab))]
    for layer in range(shape.num_layers):
        inputs += [TensorSpec(n, dtype, kv) for n in past_names(layer)]
        outputs += [TensorSpec(n, dtype, kv_out) for n in present_names(layer)]
    return GraphSpec("decoder", tuple(inputs), tuple(outputs), {"batch": 2, "sequence": 3, "past_sequence": 4})


def embedding_spec(hidden: int) -> GraphSpec:
    """input_ids [batch, seq] + image_features [num_tokens, hidden] (zero rows on text steps) -> inputs_embeds."""
    return GraphSpec(
        "embedding",
        (TensorSpec("input_ids", "int64", ("batch", "sequence")),
         TensorSpec("image_features", "float32", ("num_image_tokens", hidden))),
        (TensorSpec("inputs_embeds", "float32", ("batch", "sequence", hidden)),),
        {"batch": 2, "sequence": 7, "num_image_tokens": 3},
    )


def vision_spec(hidden: int, k: int) -> GraphSpec:
    """pixel_values uint8 [batch, num_frames, height, width, 3] -> image_features [num_tokens, hidden], frame_indices [batch, K]."""
    return GraphSpec(
        "vision",
        (TensorSpec("pixel_values", "uint8", ("batch", "num_frames", "height", "width", 3)),),
        (TensorSpec("image_features", "float32", ("num_image_tokens", hidden)),
         TensorSpec("frame_indices", "int64", ("batch", k))),
        {"batch": 2, "num_frames": max(k + 3, 12), "height": 48, "width": 64},
    )


def spec_json(spec: GraphSpec) -> dict:
    return asdict(spec)


def spec_from_json(data: dict) -> GraphSpec:
    try:
        tensors = [tuple(TensorSpec(t["name"], t["dtype"], tuple(t["axes"])) for t in data[k]) for k in ("inputs", "outputs")]
        return GraphSpec(data["name"], tensors[0], tensors[1], dict(data.get("example_sizes", {})))
    except (KeyError, TypeError) as exc:
        raise VqtoolError(f"manifest graph description is malformed ({exc!r}); re-create it: vqtool export RUN_DIR --force") from None


def decoder_shape_of(spec: GraphSpec) -> DecoderShape:
    """The cache layout back from a decoder spec (the runtime needs it for empty past tensors)."""
    past = [t for t in spec.inputs if t.name.startswith("past_key_values.")]
    embeds = spec.inputs[0]
    logits = spec.outputs[0]
    return DecoderShape(len(past) // 2, past[0].axes[1], past[0].axes[3], embeds.axes[2], logits.axes[2])


def graphs_manifest(specs: dict[str, GraphSpec], variants: dict[str, dict[str, str]]) -> dict:
    """The `generative` section of manifest.json: each graph's I/O description and each variant's files."""
    return {"format": GEN_FORMAT, "graphs": {name: spec_json(spec) for name, spec in specs.items()},
            "variants": variants}


def read_graphs_manifest(section: dict) -> tuple[dict[str, GraphSpec], dict[str, dict[str, str]]]:
    """(graph specs, {variant: {graph: file}}) back from a manifest's `generative` section."""
    if not isinstance(section, dict) or section.get("format") != GEN_FORMAT:
        raise VqtoolError(f"manifest 'generative' section has format {section.get('format') if isinstance(section, dict) else None!r}, "
                          f"this runtime reads {GEN_FORMAT}; re-create it: vqtool export RUN_DIR --force")
    specs = {name: spec_from_json(data) for name, data in section.get("graphs", {}).items()}
    return specs, dict(section.get("variants", {}))

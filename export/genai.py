"""onnxruntime-genai backend (optional extra `genai`): genai_config.json for our graphs, and a generate call.

onnxruntime-genai's decoder-only types (llama, qwen2, ...) feed `input_ids` to one decoder graph,
while our decoder takes `inputs_embeds`; so the text backend runs `decoder_ids.onnx`, the embedding
graph composed in front of the decoder (image_features pinned to an empty constant), with the same
weights and the same decoder ops. The three graphs run under a registered VLM type (`phi3v`):
vision.onnx -> image_features [num_image_tokens, hidden] -> embedding.onnx -> decoder.onnx, with
the frames and `num_image_tokens` fed as named tensors (genai's own image processor is not used).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import compose, numpy_helper

from export.gen_spec import DecoderShape
from toolchain.errors import MissingExtraError

IDS_DECODER = "decoder_ids.onnx"


def compose_ids_decoder(embedding: Path, decoder: Path, out: Path) -> Path:
    """embedding.onnx -> decoder.onnx as one graph taking input_ids (text-only: no image features)."""
    emb, dec = onnx.load(str(embedding)), onnx.load(str(decoder))
    hidden = emb.graph.output[0].type.tensor_type.shape.dim[2].dim_value
    features = next(i for i in emb.graph.input if i.name == "image_features")
    emb.graph.input.remove(features)
    emb.graph.initializer.append(numpy_helper.from_array(np.zeros((0, hidden), np.float32), "image_features"))
    opsets = {o.domain: o.version for o in dec.opset_import} | {o.domain: o.version for o in emb.opset_import}
    for proto in (emb, dec):  # merge_models wants both on the same opsets and IR version
        del proto.opset_import[:]
        proto.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets.items())
        proto.ir_version = max(emb.ir_version, dec.ir_version)
    del emb.metadata_props[:]  # the decoder's metadata describes the composed graph
    emb = compose.add_prefix(emb, "embedding/")  # the exporter names edges alike in both graphs
    merged = compose.merge_models(emb, dec, io_map=[("embedding/inputs_embeds", "inputs_embeds")])
    rename_input(merged.graph, "embedding/input_ids", "input_ids")
    tmp = out.with_name(f".{out.name}.tmp")
    onnx.save(merged, str(tmp))
    os.replace(tmp, out)
    return out


def rename_input(graph, old: str, new: str) -> None:
    for value in graph.input:
        if value.name == old:
            value.name = new
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]


def genai_config(shape: DecoderShape, heads: int, decoder_file: str, eos_ids: list[int], bos_id: int, pad_id: int,
                 context_length: int, threads: int | None = None, model_type: str = "llama") -> dict:
    """The genai_config.json of a decoder-only type on our graph names (optimum's, which genai defaults to)."""
    session = {"log_id": "vqtool", "provider_options": []}
    if threads:
        session |= {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    return {"model": {
        "type": model_type, "bos_token_id": bos_id, "eos_token_id": eos_ids, "pad_token_id": pad_id,
        "context_length": context_length, "vocab_size": shape.vocab,
        "decoder": {
            "filename": decoder_file, "session_options": session, "head_size": shape.head_dim,
            "hidden_size": shape.hidden, "num_attention_heads": heads, "num_hidden_layers": shape.num_layers,
            "num_key_value_heads": shape.num_kv_heads,
            "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                       "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
            "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                        "present_value_names": "present.%d.value"}}},
        # Our decoder concatenates past and new keys (present grows), so genai must not share one buffer.
        "search": {"do_sample": False, "num_beams": 1, "max_length": context_length, "min_length": 0,
                   "past_present_share_buffer": False, "early_stopping": False, "length_penalty": 1.0}}


def genai_vlm_config(shape: DecoderShape, heads: int, eos_ids: list[int], bos_id: int, pad_id: int,
                     context_length: int, threads: int | None = None, vision_inputs: tuple[str, ...] = ("pixel_values",),
                     model_type: str = "phi3v") -> dict:
    """The three-graph config: genai runs vision.onnx only on a prompt with num_image_tokens > 0, feeds its
    image_features into embedding.onnx (an empty [0, hidden] tensor on decode steps) and the embeds to decoder.onnx."""
    cfg = genai_config(shape, heads, "decoder.onnx", eos_ids, bos_id, pad_id, context_length, threads, model_type)
    decoder = cfg["model"]["decoder"]
    decoder["inputs"].pop("input_ids")
    decoder["inputs"]["inputs_embeds"] = "inputs_embeds"
    cfg["model"]["vision"] = {"filename": "vision.onnx", "inputs": {"pixel_values": vision_inputs[0]},
                              "outputs": {"image_features": "image_features"}}
    cfg["model"]["embedding"] = {"filename": "embedding.onnx",
                                 "inputs": {"input_ids": "input_ids", "image_features": "image_features"},
                                 "outputs": {"inputs_embeds": "inputs_embeds"}}
    return cfg


def write_genai_config(model_dir: Path, config: dict) -> Path:
    path = Path(model_dir) / "genai_config.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, path)
    return path


def load_genai():
    try:
        import onnxruntime_genai as og
    except ImportError:
        raise MissingExtraError("onnxruntime_genai", "genai") from None
    return og


def genai_generate(model, prompt_ids: list[int], max_new_tokens: int, on_token=None, min_new_tokens: int = 0,
                   named_inputs: dict | None = None) -> list[int]:
    """Greedy tokens from an `og.Model` (load it once with og.Model(dir)); EOS from its config stops it
    (min_new_tokens: not before that many, as benchmarks need). named_inputs: the vision graph's inputs
    (e.g. {"pixel_values": frames}); num_image_tokens must be among them for the vision graph to run."""
    og = load_genai()
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt_ids) + max_new_tokens, do_sample=False,
                              min_length=len(prompt_ids) + min_new_tokens)
    generator = og.Generator(model, params)
    if named_inputs:
        tensors = og.NamedTensors()
        for name, value in named_inputs.items():
            tensors[name] = np.ascontiguousarray(value)
        generator.set_inputs(tensors)
    generator.append_tokens(np.asarray([prompt_ids], np.int32))
    out: list[int] = []
    while not generator.is_done():
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        out.append(token)
        if on_token:
            on_token(len(out) - 1, [token])
    return out

"""torch -> ONNX with named dynamic axes and vqtool metadata (dynamo or TorchScript exporter; parity decides)."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import torch

from export.graph import ScorerGraph, TextEncoderGraph, VideoEncoderGraph
from toolchain.models.video_clip import VideoCLIP

# The newest manifest format written. 2: a video-conditioned scorer graph (X-CLIP) is part of every
# variant, so a runtime that only knows format 1 (dot products) must refuse it; plain exports stay 1.
FORMAT_VERSION = 2
PLAIN_FORMAT = 1
VIDEO_INPUTS, VIDEO_OUTPUTS = ["frames"], ["video_embeds", "frame_indices"]
TEXT_INPUTS, TEXT_OUTPUTS = ["input_ids", "attention_mask"], ["text_embeds"]
CONTEXT_OUTPUT, FEATURES_OUTPUT = "video_context", "text_features"
SCORER_INPUTS, SCORER_OUTPUTS = ["video_embeds", CONTEXT_OUTPUT, FEATURES_OUTPUT], ["scores"]


EXPORTERS = ("dynamo", "torchscript")


def dims(*names: str) -> dict:
    return {i: torch.export.Dim(n, min=1, max=1 << 16) for i, n in enumerate(names) if n}


def axis_names(dynamic: dict) -> dict:
    """torch.export Dims -> the TorchScript exporter's {input: {axis: name}}."""
    return {inp: {axis: dim.__name__ for axis, dim in axes.items()} for inp, axes in dynamic.items()}


def export_onnx(module: torch.nn.Module, args: tuple, path: Path, inputs, outputs, dynamic, opset: int,
                exporter: str = "dynamo") -> Path:
    """Export to a temp file beside `path`, then rename; the exporter's chatter goes nowhere."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    tmp = path.with_name(f".{path.name}.tmp")
    common = dict(input_names=inputs, output_names=outputs, opset_version=opset, verbose=False)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        if exporter == "dynamo":
            torch.onnx.export(module.eval(), args, str(tmp), dynamo=True, dynamic_shapes=dynamic,
                              external_data=False, **common)
        else:
            torch.onnx.export(module.eval(), args, str(tmp), dynamo=False, dynamic_axes=axis_names(dynamic),
                              do_constant_folding=True, **common)
    os.replace(tmp, path)
    return path


def export_video_encoder(model: VideoCLIP, path: Path, opset: int, metadata: dict, exporter: str = "dynamo") -> Path:
    example = torch.randint(0, 256, (2, max(model.k + 3, 12), 48, 64, 3), dtype=torch.uint8)
    dynamic = {"frames": dims("batch", "num_frames", "height", "width")}
    outputs = VIDEO_OUTPUTS + [CONTEXT_OUTPUT] * model.conditioned
    export_onnx(VideoEncoderGraph(model), (example,), path, VIDEO_INPUTS, outputs, dynamic, opset, exporter)
    return set_metadata(path, metadata)


def export_scorer(model: VideoCLIP, path: Path, opset: int, metadata: dict, exporter: str = "dynamo") -> Path:
    """X-CLIP's scorer graph (any number of videos and captions)."""
    cfg = model.clip.config
    patches = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
    dim = cfg.projection_dim
    example = (torch.nn.functional.normalize(torch.randn(2, dim), dim=-1), torch.randn(2, patches, dim), torch.randn(3, dim))
    videos = torch.export.Dim("videos", min=1, max=1 << 16)
    dynamic = {"video_embeds": {0: videos}, CONTEXT_OUTPUT: {0: videos}, FEATURES_OUTPUT: dims("texts")}
    export_onnx(ScorerGraph(model), example, path, SCORER_INPUTS, SCORER_OUTPUTS, dynamic, opset, exporter)
    return set_metadata(path, metadata)


def export_text_encoder(model: VideoCLIP, path: Path, opset: int, seq_len: int, metadata: dict,
                        exporter: str = "dynamo") -> Path:
    ids = torch.zeros((2, seq_len), dtype=torch.int64)
    mask = torch.ones((2, seq_len), dtype=torch.int64)
    # The sequence length is fixed by the tokenizer's padding, so only the batch is dynamic.
    dynamic = {"input_ids": dims("batch"), "attention_mask": dims("batch")}
    outputs = TEXT_OUTPUTS + [FEATURES_OUTPUT] * model.conditioned
    export_onnx(TextEncoderGraph(model), (ids, mask), path, TEXT_INPUTS, outputs, dynamic, opset, exporter)
    return set_metadata(path, metadata)


def set_metadata(path: Path, metadata: dict) -> Path:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in {"vqtool.format": str(PLAIN_FORMAT), **metadata}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return path

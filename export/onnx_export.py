"""torch -> ONNX with named dynamic axes and vqtool metadata (dynamo or TorchScript exporter; parity decides)."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import torch

from export.graph import TextEncoderGraph, VideoEncoderGraph
from toolchain.models.video_clip import VideoCLIP

FORMAT_VERSION = 1
VIDEO_INPUTS, VIDEO_OUTPUTS = ["frames"], ["video_embeds", "frame_indices"]
TEXT_INPUTS, TEXT_OUTPUTS = ["input_ids", "attention_mask"], ["text_embeds"]


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
    export_onnx(VideoEncoderGraph(model), (example,), path, VIDEO_INPUTS, VIDEO_OUTPUTS, dynamic, opset, exporter)
    return set_metadata(path, metadata)


def export_text_encoder(model: VideoCLIP, path: Path, opset: int, seq_len: int, metadata: dict,
                        exporter: str = "dynamo") -> Path:
    ids = torch.zeros((2, seq_len), dtype=torch.int64)
    mask = torch.ones((2, seq_len), dtype=torch.int64)
    # The sequence length is fixed by the tokenizer's padding, so only the batch is dynamic.
    dynamic = {"input_ids": dims("batch"), "attention_mask": dims("batch")}
    export_onnx(TextEncoderGraph(model), (ids, mask), path, TEXT_INPUTS, TEXT_OUTPUTS, dynamic, opset, exporter)
    return set_metadata(path, metadata)


def set_metadata(path: Path, metadata: dict) -> Path:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in {"vqtool.format": str(FORMAT_VERSION), **metadata}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return path

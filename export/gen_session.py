"""ONNX Runtime sessions of embedding.onnx + decoder.onnx, run through IO binding; torch-free.

The KV cache never leaves ONNX Runtime: each step's `present.N.*` OrtValues are bound as the next
step's `past_key_values.N.*` inputs, on the device the decoder runs on. Only the last position's
logits come back to numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.gen_spec import DTYPES
from toolchain.errors import VqtoolError

ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass
class CacheLayout:
    """What the decoder's past inputs look like, read from the session itself."""

    names: list[str]  # past_key_values.N.key / .value, in input order
    num_kv_heads: int
    head_dim: int
    dtype: type
    hidden: int


def read_layout(decoder: ort.InferenceSession) -> CacheLayout:
    inputs = {i.name: i for i in decoder.get_inputs()}
    needed = {"inputs_embeds", "attention_mask", "position_ids"}
    if not needed <= set(inputs):
        raise VqtoolError(f"decoder graph lacks inputs {sorted(needed - set(inputs))}: not a vqtool/optimum-style "
                          "KV-cache decoder (re-export it with export_decoder)")
    past = [i for i in decoder.get_inputs() if i.name.startswith("past_key_values.")]
    if not past:
        raise VqtoolError("decoder graph has no past_key_values.N.key/value inputs: it was exported without a KV cache")
    first = past[0]
    return CacheLayout([p.name for p in past], int(first.shape[1]), int(first.shape[3]),
                       ORT_DTYPES.get(first.type, np.float32), int(inputs["inputs_embeds"].shape[2]))


def session_options(threads: int | None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


class GenSessions:
    """embedding.onnx and decoder.onnx on one provider list; `embed` and `step` are all the loop needs."""

    def __init__(self, decoder: str | Path, embedding: str | Path, threads: int | None = None,
                 providers: list[str] | None = None, options: ort.SessionOptions | None = None):
        for path in (decoder, embedding):
            if not Path(path).is_file():
                raise VqtoolError(f"{path} does not exist; export the graphs first (export_decoder / export_embedding)")
        opts = options or session_options(threads)
        chosen = providers or ["CPUExecutionProvider"]
        self.decoder = ort.InferenceSession(str(decoder), opts, providers=chosen)
        self.embedding = ort.InferenceSession(str(embedding), opts, providers=chosen)
        self.layout = read_layout(self.decoder)
        self.device = "cuda" if "CUDAExecutionProvider" in self.decoder.get_providers() else "cpu"
        self.outputs = [o.name for o in self.decoder.get_outputs()]
        self.vocab = int(self.decoder.get_outputs()[0].shape[2])
        meta = self.embedding.get_modelmeta().custom_metadata_map
        self.video_token_id = int(meta.get("vqtool.video_token_id", -1))  # -1: a text-only model

    def empty_past(self, batch: int) -> list[ort.OrtValue]:
        shape = (batch, self.layout.num_kv_heads, 0, self.layout.head_dim)
        return [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, self.layout.dtype), self.device)
                for _ in self.layout.names]

    def embed(self, input_ids: np.ndarray, features: np.ndarray | None) -> ort.OrtValue:
        """ids [B, S] (+ features [T, hidden] for the placeholders) -> inputs_embeds, left on the device."""
        if features is None:
            features = np.zeros((0, self.layout.hidden), np.float32)
        binding = self.embedding.io_binding()
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, dtype=np.int64))
        binding.bind_cpu_input("image_features", np.ascontiguousarray(features, dtype=DTYPES["float32"]))
        binding.bind_output("inputs_embeds", self.device)
        self.embedding.run_with_iobinding(binding)
        return binding.get_outputs()[0]

    def step(self, embeds: ort.OrtValue, mask: np.ndarray, positions: np.ndarray,
             past: list[ort.OrtValue]) -> tuple[np.ndarray, list[ort.OrtValue]]:
        """One decoder run -> (last-position logits float32 [B, V], present OrtValues for the next step)."""
        binding = self.decoder.io_binding()
        binding.bind_ortvalue_input("inputs_embeds", embeds)
        binding.bind_cpu_input("attention_mask", np.ascontiguousarray(mask, dtype=np.int64))
        binding.bind_cpu_input("position_ids", np.ascontiguousarray(positions, dtype=np.int64))
        for name, value in zip(self.layout.names, past):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(self.outputs[0], "cpu")
        for name in self.outputs[1:]:
            binding.bind_output(name, self.device)
        self.decoder.run_with_iobinding(binding)
        values = binding.get_outputs()
        return values[0].numpy()[:, -1].astype(np.float32), values[1:]


def reorder(past: list[ort.OrtValue], rows: np.ndarray, device: str) -> list[ort.OrtValue]:
    """Beam search: the cache rows of the beams that continue (copied through numpy; beams only)."""
    return [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v.numpy()[rows]), device) for v in past]

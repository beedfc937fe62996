"""Exact MatMulNBits weights from a GGUF's own blocks (Q4_1 -> 4-bit, Q8_0 -> 8-bit), no re-quantization.

A Q4_1 block of 32 holds x = d * q + m (q in 0..15, d and m float16). MatMulNBits computes
(q - zero_point) * scale per block along K; a uint8 zero point cannot hold the offset (m / d is not
an integer) and ORT's float-zero-point path is a slow fallback (4.4 tokens/s vs 20 for fp32 on
SmolLM2), so the block is split: symmetric MatMulNBits (q - 8) * d on the fast path, plus the
offset (m + 8 d) times the block sums of the input, one small MatMul [nb, N] (3% of the FLOPs).
Q8_0 (x = d * q, q int8) is 8-bit with the uint8 zero point 128. The GGUF tensors are matched to the exported graph's MatMul
weights by value (the transposed weight's bytes), so the exporter's initializer names do not matter.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from toolchain.errors import VqtoolError

BLOCK = 32
EXACT_TOL = 1e-6  # relative to the block's range: float32 rounding of (q + m/d) * d vs d * q + m


@dataclass
class Blocks:
    """One weight's GGUF blocks along K, rows in the model's order."""

    bits: int
    q: np.ndarray  # uint8 [N, nb, 32]: unsigned codes (Q8_0: int8 + 128)
    scale: np.ndarray  # float32 [N, nb]: d
    offset: np.ndarray | None  # float32 [N, nb]: Q4_1's m; None for Q8_0

    def dequantize(self) -> np.ndarray:
        """What the GGUF means (gguf's own dequantize): d * q + m, or d * (q - 128)."""
        q = self.q.astype(np.float32)
        w = self.scale[..., None] * q + self.offset[..., None] if self.offset is not None else \
            (q - 128) * self.scale[..., None]
        return w.reshape(w.shape[0], -1)


def q4_1_blocks(raw: np.ndarray) -> Blocks:
    """GGUF Q4_1 rows [N, nb * 20] (d f16, m f16, 16 bytes of codes per block) -> Blocks."""
    b = raw.reshape(raw.shape[0], -1, 20)
    d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = b[..., 4:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # byte j holds elements j and j + 16
    return Blocks(4, q, d, m)


def q8_0_blocks(raw: np.ndarray) -> Blocks:
    b = raw.reshape(raw.shape[0], -1, 34)
    d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    q = (b[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return Blocks(8, q, d, None)


READERS = {"Q4_1": q4_1_blocks, "Q8_0": q8_0_blocks}


def read_gguf_blocks(gguf_path: Path, model) -> dict[str, Blocks]:
    """{transformers parameter name: Blocks} for the GGUF's Q4_1 / Q8_0 tensors, rows permuted as
    transformers' own GGUF loader permutes them (Llama's q/k rope layout)."""
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    cfg = model.config
    processor = TENSOR_PROCESSORS.get(cfg.model_type, TensorProcessor)(
        config={"num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads})
    names = get_gguf_hf_weights_map(model, processor)
    out = {}
    for tensor in GGUFReader(str(gguf_path)).tensors:
        kind = tensor.tensor_type.name
        if kind not in READERS or tensor.name not in names:
            continue
        blocks = READERS[kind](np.asarray(tensor.data))
        rows = processor.process(weights=np.arange(blocks.q.shape[0])[:, None], name=tensor.name).weights[:, 0]
        offset = None if blocks.offset is None else blocks.offset[rows]
        out[names[tensor.name]] = Blocks(blocks.bits, blocks.q[rows], blocks.scale[rows], offset)
    return out


def weight_key(w_t: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(w_t, dtype=np.float32).tobytes()).hexdigest()


def matmul_sources(model) -> dict[str, str]:
    """{hash of the transposed weight as the graph stores it: parameter name} of every 2-D parameter."""
    return {weight_key(p.detach().float().T.numpy()): name for name, p in model.named_parameters() if p.ndim == 2}


def check_exact(name: str, blocks: Blocks, weight: np.ndarray) -> None:
    got = blocks.dequantize()
    span = np.abs(weight).max() + 1e-12
    if got.shape != weight.shape or np.abs(got - weight).max() > EXACT_TOL * span:
        raise VqtoolError(f"GGUF blocks of {name} do not reproduce the model's weight (max diff "
                          f"{np.abs(got - weight).max() if got.shape == weight.shape else 'shape'}): not the same checkpoint")


def nbits_nodes(node, blocks: Blocks, accuracy_level: int, inits: list) -> list[onnx.NodeProto]:
    """MatMulNBits for `node` (8-bit: zero point 128; 4-bit: symmetric plus the block-offset correction)."""
    n, nb, _ = blocks.q.shape
    base = node.name or node.output[0]
    attrs = dict(domain="com.microsoft", K=nb * BLOCK, N=n, bits=blocks.bits, block_size=BLOCK,
                 accuracy_level=accuracy_level)
    add = lambda name, value: inits.append(numpy_helper.from_array(value, name)) or name  # noqa: E731
    scales = add(f"{base}.scales", blocks.scale.reshape(-1))
    if blocks.bits == 8:
        ins = [add(f"{base}.q8", blocks.q), scales, add(f"{base}.zero_points", np.full(n * nb, 128, np.uint8))]
        return [helper.make_node("MatMulNBits", [node.input[0], *ins], list(node.output), name=f"{base}_nbits", **attrs)]
    packed = (blocks.q[..., 0::2] | (blocks.q[..., 1::2] << 4)).astype(np.uint8)
    offset = (blocks.offset + 8 * blocks.scale).astype(np.float32)  # m + 8 d, [N, nb]
    x, y = node.input[0], node.output[0]
    return [
        helper.make_node("MatMulNBits", [x, add(f"{base}.q4", packed), scales], [f"{y}.main"], name=f"{base}_nbits", **attrs),
        helper.make_node("Reshape", [x, add(f"{base}.blocks_shape", np.array([0, 0, nb, BLOCK], np.int64))],
                         [f"{y}.blocked"], name=f"{base}_blocked"),
        helper.make_node("ReduceSum", [f"{y}.blocked", add(f"{base}.last_axis", np.array([-1], np.int64))],
                         [f"{y}.block_sums"], keepdims=0, name=f"{base}_block_sums"),
        helper.make_node("MatMul", [f"{y}.block_sums", add(f"{base}.offsets", np.ascontiguousarray(offset.T))],
                         [f"{y}.offset"], name=f"{base}_offset"),
        helper.make_node("Add", [f"{y}.main", f"{y}.offset"], [y], name=f"{base}_sum"),
    ]


def write_gguf_matmuls(src: Path, dst: Path, blocks: dict[str, Blocks], sources: dict[str, str],
                       accuracy_level: int = 4) -> list[str]:
    """Replace every MatMul whose weight came from a GGUF block tensor; returns the parameter names replaced."""
    proto = onnx.load(str(src))
    inits = {i.name: i for i in proto.graph.initializer}
    new_inits, replaced, nodes = [], [], []
    for node in proto.graph.node:
        init = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        name = sources.get(weight_key(numpy_helper.to_array(init))) if init is not None else None
        if name not in blocks:
            nodes.append(node)
            continue
        check_exact(name, blocks[name], numpy_helper.to_array(init).T)
        nodes.extend(nbits_nodes(node, blocks[name], accuracy_level, new_inits))
        replaced.append(name)
    used = {i for n in nodes for i in n.input}
    keep = [i for i in proto.graph.initializer if i.name in used]
    del proto.graph.node[:], proto.graph.initializer[:]
    proto.graph.node.extend(nodes)
    proto.graph.initializer.extend(keep + new_inits)
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(proto, str(dst))
    return replaced

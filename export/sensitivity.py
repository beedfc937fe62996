"""Which MatMuls 4-bit weights hurt most, measured: each layer's relative output error on real activations.

`layer_errors` runs the fp32 graph once per feed with every constant MatMul's input exposed as an
output and computes ||X W - X Q4(W)|| / ||X W|| per layer (Q4: blockwise 4-bit round-to-nearest, what
MatMulNBits does), so the layers int4 keeps at 8 bits are picked by measurement on the calibration
clips, not by name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def weighted_nodes(proto: onnx.ModelProto) -> dict[str, tuple[str, np.ndarray]]:
    """MatMul node name -> (its activation input, its constant 2-D [K, N] weight)."""
    inits = {i.name: i for i in proto.graph.initializer}
    out = {}
    for node in proto.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits and len(inits[node.input[1]].dims) == 2:
            out[node.name] = (node.input[0], numpy_helper.to_array(inits[node.input[1]]))
    return out


def rtn4(weight: np.ndarray, block: int = 32) -> np.ndarray:
    """Symmetric 4-bit round-to-nearest along K in blocks, dequantized (what int4's error looks like)."""
    k, n = weight.shape
    pad = (-k) % block
    w = np.pad(weight, ((0, pad), (0, 0))).reshape(-1, block, n)
    scale = np.abs(w).max(axis=1, keepdims=True) / 7.0
    scale[scale == 0] = 1.0
    return (np.clip(np.round(w / scale), -8, 7) * scale).reshape(-1, n)[:k]


def tapped_session(proto: onnx.ModelProto, taps: list[str], threads: int):
    """A session over `proto` (unoptimised, so tensor names stay) with every tap added as an output."""
    import onnxruntime as ort

    known = {o.name for o in proto.graph.output}
    proto.graph.output.extend(onnx.ValueInfoProto(name=t) for t in taps if t not in known)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess, [o.name for o in sess.get_outputs()]


def layer_errors(path: Path, feeds: list[dict], threads: int = 1) -> dict[str, float]:
    """Each constant MatMul's relative output error ||X (W - Q4(W))|| / ||X W|| on the feeds' activations."""
    proto = onnx.load(str(path))
    layers = weighted_nodes(proto)
    sess, names = tapped_session(proto, list(dict.fromkeys(tap for tap, _ in layers.values())), threads)
    num, den = dict.fromkeys(layers, 0.0), dict.fromkeys(layers, 0.0)
    for feed in feeds:
        acts = dict(zip(names, sess.run(None, feed)))
        for name, (tap, w) in layers.items():
            x = acts[tap].reshape(-1, w.shape[0]).astype(np.float64)
            num[name] += float(np.square(x @ (w - rtn4(w))).sum())
            den[name] += float(np.square(x @ w).sum())
    return {name: float(np.sqrt(num[name] / den[name])) if den[name] else 0.0 for name in layers}


def most_sensitive(errors: dict[str, dict[str, float]], count: int) -> dict[str, tuple[str, ...]]:
    """The `count` layers with the largest measured error over all graphs, grouped by graph kind."""
    ranked = sorted(((e, kind, name) for kind, errs in errors.items() for name, e in errs.items()), reverse=True)
    picked: dict[str, list[str]] = {kind: [] for kind in errors}
    for _, kind, name in ranked[:count]:
        picked[kind].append(name)
    return {kind: tuple(names) for kind, names in picked.items()}


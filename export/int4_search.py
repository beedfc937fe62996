"""int4 by search: which MatMulNBits plan gives the smallest graph that still passes the parity gate.

The candidates are every (algorithm, block size, number of MatMuls kept at 8 bits) the recipe
allows, ordered by their predicted file size (smallest first; each tried at accuracy level 4, int8
compute, then 0, float compute), so the first one that passes is the smallest passing plan among
those tried. Which MatMuls stay at 8 bits is measured, not guessed: each constant-weight MatMul's
output error under 4-bit round-to-nearest, on the activations the calibration feeds give it
(`layer_errors`), ranked over all graphs of the export.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from export.quantize import Int4Plan, constant_matmuls

SEARCH_BLOCKS = (16, 32, 64, 128)
INT8_COUNTS = (0, 1, 2, 3, 4, 6, 8, 12, 16)
AUTO_LEVELS = (4, 0)  # int8 compute (fastest on CPU) first, then the float compute ORT picks by default


@dataclass(frozen=True)
class Candidate:
    """One try: a plan per graph kind (same algorithm / block / level, each with its own int8 MatMuls)."""

    plans: dict
    predicted_bytes: int
    int8_count: int

    def describe(self) -> dict:
        first = next(iter(self.plans.values()))
        return {**{k: v for k, v in first.describe().items() if k != "int8_matmuls"},
                "int8_matmuls": {kind: list(p.int8_nodes) for kind, p in self.plans.items() if p.int8_nodes},
                "predicted_mb": round(self.predicted_bytes / 1e6, 4)}


def matmul_weights(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Constant MatMul node name -> its [K, N] weight."""
    inits = {i.name: i for i in proto.graph.initializer}
    nodes = {n.name: n for n in proto.graph.node}
    return {name: numpy_helper.to_array(inits[nodes[name].input[1]]) for name in constant_matmuls(proto)}


def rtn4(weight: np.ndarray, block: int = 32) -> np.ndarray:
    """Symmetric 4-bit round-to-nearest along K in blocks, dequantized (what int4's error looks like)."""
    k, n = weight.shape
    pad = (-k) % block
    w = np.pad(weight, ((0, pad), (0, 0))).reshape(-1, block, n)
    scale = np.abs(w).max(axis=1, keepdims=True) / 7.0
    scale[scale == 0] = 1.0
    return (np.clip(np.round(w / scale), -8, 7) * scale).reshape(-1, n)[:k]


def layer_errors(path: Path, feeds: list[dict], threads: int = 1) -> dict[str, float]:
    """Each constant MatMul's relative output error ||X (W - Q4(W))|| / ||X W|| on the feeds' activations."""
    import onnxruntime as ort

    proto = onnx.load(str(path))
    weights = matmul_weights(proto)
    nodes = {n.name: n for n in proto.graph.node}
    taps = list(dict.fromkeys(nodes[name].input[0] for name in weights))
    known = {o.name for o in proto.graph.output}
    proto.graph.output.extend(onnx.ValueInfoProto(name=t) for t in taps if t not in known)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    num = dict.fromkeys(weights, 0.0)
    den = dict.fromkeys(weights, 0.0)
    for feed in feeds:
        acts = dict(zip(names, sess.run(None, feed)))
        for name, w in weights.items():
            x = acts[nodes[name].input[0]].reshape(-1, w.shape[0]).astype(np.float64)
            num[name] += float(np.square(x @ (w - rtn4(w))).sum())
            den[name] += float(np.square(x @ w).sum())
    return {name: float(np.sqrt(num[name] / den[name])) if den[name] else 0.0 for name in weights}


def matmul_bytes(shape: tuple[int, int], bits: int, block: int, zero_points: bool) -> int:
    """Bytes MatMulNBits stores for a [K, N] weight: packed blocks, float32 scales, packed zero points."""
    k, n = shape
    blocks = -(-k // block)
    data = n * blocks * block * bits // 8
    return data + n * blocks * 4 + (n * -(-blocks * bits // 8) if zero_points else 0)


def predicted_bytes(shapes: dict[str, dict], plans: dict[str, Int4Plan]) -> int:
    """The MatMul weights' bytes under a plan per graph (the rest of the graph is the same in every try)."""
    total = 0
    for kind, plan in plans.items():
        zp = not plan.symmetric_for_file()
        for name, shape in shapes[kind].items():
            bits = 8 if name in plan.int8_nodes else 4
            total += matmul_bytes(shape, bits, plan.block_size, zp or bits == 8 and not plan.symmetric)
    return total


def most_sensitive(errors: dict[str, dict[str, float]], count: int) -> dict[str, tuple[str, ...]]:
    """The `count` MatMuls with the largest measured error over all graphs, grouped by graph kind."""
    ranked = sorted(((e, kind, name) for kind, errs in errors.items() for name, e in errs.items()), reverse=True)
    picked: dict[str, list[str]] = {kind: [] for kind in errors}
    for _, kind, name in ranked[:count]:
        picked[kind].append(name)
    return {kind: tuple(names) for kind, names in picked.items()}


def candidates(shapes: dict[str, dict], errors: dict[str, dict[str, float]], space: tuple,
               symmetric: bool = True) -> list[Candidate]:
    """Every plan combination, smallest predicted file first; at equal size the recipe's order of
    algorithms and levels decides (level 4 before 0)."""
    algorithms, blocks, levels, int8_counts = space
    total = sum(len(s) for s in shapes.values())
    counts = sorted({min(c, total) for c in int8_counts})
    out = []
    for algorithm in algorithms:
        for block in blocks:
            for count in counts:
                keep = most_sensitive(errors, count)
                for level in levels:
                    base = Int4Plan(algorithm, block, symmetric, level)
                    plans = {kind: replace(base, int8_nodes=keep[kind]) for kind in shapes}
                    out.append(Candidate(plans, predicted_bytes(shapes, plans), count))
    order = {a: i for i, a in enumerate(algorithms)}
    return sorted(out, key=lambda c: (c.predicted_bytes, order[next(iter(c.plans.values())).algorithm],
                                      levels.index(next(iter(c.plans.values())).accuracy_level)))


def search_space(cfg) -> tuple[tuple, tuple, tuple, tuple]:
    """(algorithms, blocks, levels, int8 counts) from the recipe's export.int4 section; without
    `search` only the recipe's algorithm and block, every MatMul at 4 bits."""
    algorithms = tuple(cfg.algorithms) if cfg.search else (cfg.algorithms[0],)
    blocks = SEARCH_BLOCKS if cfg.search else (cfg.block_size,)
    levels = AUTO_LEVELS if cfg.accuracy_level == "auto" else (cfg.accuracy_level,)
    return algorithms, blocks, levels, INT8_COUNTS if cfg.search else (0,)


def run_search(cands: list[Candidate], try_one, max_tries: int) -> tuple[Candidate, dict, list[dict]]:
    """Try candidates in order until one passes or `max_tries` ran; returns the passing one (or the
    best failing one: the highest worst cosine), its result, and every try."""
    tried, best = [], None
    for cand in cands[:max_tries]:
        result = try_one(cand)
        tried.append({**cand.describe(), "size_mb": result["size_mb"], "min_cosine": worst_cosine(result),
                      "passed": result["passed"], "failures": result["failures"]})
        if best is None or result["passed"] or worst_cosine(result) > worst_cosine(best[1]):
            best = (cand, result)
        if result["passed"]:
            break
    return best[0], best[1], tried


def worst_cosine(result: dict) -> float:
    """The lowest min cosine over the graphs' outputs in a check_files result (vs the trained model)."""
    return min(v["min_cosine"] for v in result.values() if isinstance(v, dict) and "min_cosine" in v)

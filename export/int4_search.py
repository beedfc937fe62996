"""int4 by search: which MatMulNBits plan gives the smallest graph that still passes the parity gate.

A plan is (algorithm, block size, accuracy level, which MatMuls stay at 8 bits); `search` tries them
in three stages (all-4-bit plans smallest file first, the other accuracy level, then the fewest 8-bit
MatMuls that pass) and records every try. Which MatMuls stay at 8 bits is measured, not guessed: each constant-weight MatMul's
output error under 4-bit round-to-nearest, on the activations the calibration feeds give it
(`layer_errors`), ranked over all graphs of the export.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import numpy_helper

from export.quantize import Int4Plan, constant_matmuls
from export.sensitivity import most_sensitive
from toolchain.errors import VqtoolError

SEARCH_BLOCKS = (16, 32, 64, 128)
AUTO_LEVELS = (4, 0)  # int8 compute (fastest on CPU) first, then the float compute ORT picks by default


@dataclass(frozen=True)
class Candidate:
    """One try: a plan per graph kind (same algorithm / block / level, each with its own int8 MatMuls)."""

    plans: dict
    predicted_bytes: int
    int8_count: int

    def first(self) -> Int4Plan:
        return next(iter(self.plans.values()))

    def describe(self) -> dict:
        return {**{k: v for k, v in self.first().describe().items() if k != "int8_matmuls"},
                "int8_matmuls": {kind: list(p.int8_nodes) for kind, p in self.plans.items() if p.int8_nodes},
                "predicted_mb": round(self.predicted_bytes / 1e6, 4)}


def matmul_weights(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Constant MatMul node name -> its [K, N] weight."""
    inits = {i.name: i for i in proto.graph.initializer}
    nodes = {n.name: n for n in proto.graph.node}
    return {name: numpy_helper.to_array(inits[nodes[name].input[1]]) for name in constant_matmuls(proto)}


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


def plan(shapes: dict[str, dict], errors: dict[str, dict[str, float]], algorithm: str, block: int, level: int,
         count: int, symmetric: bool = True) -> Candidate:
    """One candidate: every graph at (algorithm, block, level) with the `count` most sensitive MatMuls at 8 bits."""
    keep = most_sensitive(errors, count)
    base = Int4Plan(algorithm, block, symmetric, level)
    plans = {kind: replace(base, int8_nodes=keep.get(kind, ())) for kind in shapes}
    return Candidate(plans, predicted_bytes(shapes, plans), count)


def grid(shapes: dict[str, dict], errors: dict, space: tuple, symmetric: bool = True) -> list[Candidate]:
    """Stage one: every (algorithm, block) at the first level, all MatMuls at 4 bits, smallest predicted
    file first (at equal size the recipe's order of algorithms decides)."""
    algorithms, blocks, levels, _ = space
    cands = [plan(shapes, errors, a, b, levels[0], 0, symmetric) for a in algorithms for b in blocks]
    order = {a: i for i, a in enumerate(algorithms)}
    return sorted(cands, key=lambda c: (c.predicted_bytes, order[c.first().algorithm]))


def search_space(cfg) -> tuple[tuple, tuple, tuple, bool]:
    """(algorithms, blocks, levels, keep MatMuls at 8 bits?) from the recipe's export.int4 section;
    without `search` only the recipe's first algorithm at its block, every MatMul at 4 bits."""
    algorithms = tuple(cfg.algorithms) if cfg.search else (cfg.algorithms[0],)
    blocks = SEARCH_BLOCKS if cfg.search else (cfg.block_size,)
    levels = AUTO_LEVELS if cfg.accuracy_level == "auto" else (cfg.accuracy_level,)
    return algorithms, blocks, levels, bool(cfg.search)


class Tries:
    """Every try in order, the best one so far (a pass, else the highest worst cosine), and the budget."""

    def __init__(self, try_one, max_tries: int):
        self.try_one, self.left, self.tried, self.best, self.failures = try_one, max_tries, [], None, []

    def run(self, cand: Candidate, stage: str) -> dict | None:
        """The try's result, or None if the quantizer could not build the plan (recorded as a failed try)."""
        self.left -= 1
        try:
            result = self.try_one(cand)
        except Exception as exc:  # noqa: BLE001 - a quantizer that cannot make this plan is a failed try, not the end
            self.tried.append({**cand.describe(), "stage": stage, "passed": False,
                               "error": f"{type(exc).__name__}: {exc}"[:300]})
            return None
        self.tried.append({**cand.describe(), "stage": stage, "size_mb": result["size_mb"],
                           "min_cosine": worst_cosine(result), "passed": result["passed"], "failures": result["failures"]})
        if self.better(result):
            self.best = (cand, result)
        if not result["passed"]:
            self.failures.append((worst_cosine(result), cand))
        return result

    def closest_failure(self, below: int | None) -> Candidate | None:
        """The failed plan with the highest worst cosine whose predicted file is under `below` bytes."""
        fits = [(cos, -c.predicted_bytes, -i, c) for i, (cos, c) in enumerate(self.failures)
                if below is None or c.predicted_bytes < below]
        return max(fits)[3] if fits else None

    def better(self, result: dict) -> bool:
        """A pass beats a failure, a smaller pass beats a larger one, a closer failure a worse one."""
        if self.best is None:
            return True
        kept = self.best[1]
        if result["passed"]:
            return not kept["passed"] or result["size_mb"] < kept["size_mb"]
        return not kept["passed"] and worst_cosine(result) > worst_cosine(kept)

    def done(self) -> bool:
        return self.left <= 0 or (self.best is not None and self.best[1]["passed"])


def search(shapes: dict[str, dict], errors: dict[str, dict[str, float]], space: tuple, try_one, max_tries: int,
           symmetric: bool = True) -> tuple[Candidate, dict, list[dict]]:
    """The smallest plan found that passes: (kept candidate, its result, every try).

    1. grid: every (algorithm, block) with all MatMuls at 4 bits, smallest predicted file first, until
       one passes (the smallest all-4-bit file that does).
    2. level: with none passing, the best (highest worst cosine) of those at each other accuracy level.
    3. keep8: on the closest failing plan that is smaller than the pass (if any), the most sensitive
       MatMuls at 8 bits, their count doubled from 1 until a plan passes or would be no smaller than
       the pass, then bisected down to the fewest that pass (more 8-bit MatMuls are assumed never
       to hurt). The smallest passing file of all tries is kept.
    With none passing in `max_tries`, the closest try is kept (and fails the gate).
    """
    tries = Tries(try_one, max_tries)
    for cand in grid(shapes, errors, space, symmetric):
        if tries.done():
            break
        tries.run(cand, "grid")
    if tries.best is None:
        errors_seen = "; ".join(f"{t['algorithm']} block {t['block_size']}: {t['error']}" for t in tries.tried[:3])
        raise VqtoolError(f"int4: no plan could be built ({len(tries.tried)} tried: {errors_seen}); set "
                          "export.int4.algorithms to [rtn] or leave int4 out of export.variants")
    algorithms, blocks, levels, keep8 = space
    top = tries.best[0].first()
    for level in levels[1:]:
        if not tries.done():
            tries.run(plan(shapes, errors, top.algorithm, top.block_size, level, 0, symmetric), "level")
    limit = tries.best[0].predicted_bytes if tries.best[1]["passed"] else None
    base = tries.closest_failure(limit)
    if keep8 and base is not None and tries.left > 0:
        p = base.first()
        fewest_passing(lambda n: plan(shapes, errors, p.algorithm, p.block_size, p.accuracy_level, n, symmetric),
                       sum(len(s) for s in shapes.values()), tries, limit)
    return tries.best[0], tries.best[1], tries.tried


def fewest_passing(make, total: int, tries: Tries, limit: int | None = None) -> None:
    """Doubling then bisection over the number of MatMuls at 8 bits (1..total), never trying a plan
    whose predicted file is `limit` bytes or more (a pass already that small exists)."""
    low, high, n = 0, None, 1
    while high is None and tries.left > 0:
        cand = make(n)
        if limit is not None and cand.predicted_bytes >= limit:
            return
        result = tries.run(cand, "keep8")
        if result is not None and result["passed"]:
            high = n
        elif n >= total:
            return
        else:
            low, n = n, min(2 * n, total)
    while high is not None and high - low > 1 and tries.left > 0:
        mid = (low + high) // 2
        result = tries.run(make(mid), "keep8")
        if result is not None and result["passed"]:
            high = mid
        else:
            low = mid


def worst_cosine(result: dict) -> float:
    """The lowest min cosine over the graphs' outputs in a check_files result (vs the trained model)."""
    return min(v["min_cosine"] for v in result.values() if isinstance(v, dict) and "min_cosine" in v)

"""Cross-modality rank allocation: split a budget of adapter parameters over vision, text and fusion.

A LoRA layer of rank r costs r·(in + out) parameters, plus r·(kernel + 1 + K) when it carries a
temporal branch (conv taps, and the gate's own: 1 for motion, K for position, both for `both`):
every cost is linear in r, so a budget
becomes real-valued ranks per layer, then integer ranks by largest remainder. Strategies:
uniform (one rank), manual (a share of the budget per group), importance (ranks in proportion
to each layer's measured sensitivity, see calibrate.py). The plan turns into PEFT's
target_modules / rank_pattern / alpha_pattern and is saved as ranks.json.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from toolchain.adapters.groups import GROUPS, LinearLayer
from toolchain.errors import RecipeError
from toolchain.recipe import AdaptersSection, RanksSection

TOLERANCE = 0.05  # the contract: the allocation honours the budget within 5 %


@dataclass
class LayerRank:
    layer: LinearLayer
    per_rank: int  # parameters one unit of rank costs in this layer
    rank: int = 0
    alpha: float = 0.0
    importance: float | None = None

    @property
    def params(self) -> int:
        return self.rank * self.per_rank

    def cap(self, max_rank: int) -> int:
        """A rank above min(in, out) adds parameters but no expressiveness."""
        return min(max_rank, self.layer.in_features, self.layer.out_features)


@dataclass
class RankPlan:
    strategy: str
    budget: int
    base_params: int
    layers: list[LayerRank] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(x.params for x in self.layers)

    def active(self) -> list[LayerRank]:
        return [x for x in self.layers if x.rank > 0]

    def lora_kwargs(self) -> dict:
        """LoraConfig fields: only layers with rank > 0 are targeted; names are matched exactly."""
        act = self.active()
        return {
            "target_modules": [x.layer.name for x in act],
            "rank_pattern": {re.escape(x.layer.name): x.rank for x in act},
            "alpha_pattern": {re.escape(x.layer.name): x.alpha for x in act},
        }

    def by_group(self) -> dict[str, dict]:
        out = {}
        for g in GROUPS:
            members = [x for x in self.layers if x.layer.group == g]
            if members:
                ranks = [x.rank for x in members]
                out[g] = {"layers": len(members), "adapted": sum(r > 0 for r in ranks),
                          "rank_min": min(ranks), "rank_max": max(ranks), "params": sum(x.params for x in members)}
        return out

    def to_json(self) -> dict:
        return {
            "strategy": self.strategy, "budget": self.budget, "total": self.total,
            "budget_error": round(self.total / self.budget - 1, 5) if self.budget else None,
            "base_params": self.base_params, "groups": self.by_group(),
            "layers": [{"name": x.layer.name, "group": x.layer.group, "rank": x.rank, "alpha": x.alpha,
                        "params": x.params, "importance": x.importance} for x in self.layers],
        }


def per_rank_cost(layer: LinearLayer, temporal_extra: int) -> int:
    return layer.in_features + layer.out_features + temporal_extra


def resolve_budget(cfg: RanksSection, uniform_cost: int, base_params: int) -> int:
    """The budget in parameters: given, a percentage of the base, or the recipe's uniform rank's cost."""
    if cfg.budget is None:
        return uniform_cost
    if isinstance(cfg.budget, str):
        budget = int(round(float(cfg.budget.strip().rstrip("%")) / 100 * base_params))
        if budget < 1:
            raise RecipeError(f"adapters.ranks.budget: {cfg.budget!r} of the base ({base_params:,} parameters) is "
                              "less than one parameter; give a larger percentage or a parameter count")
        return budget
    return cfg.budget


def plan_ranks(a: AdaptersSection, layers: list[LinearLayer], temporal_extra: dict[str, int],
               base_params: int, importance: dict[str, float] | None = None) -> RankPlan:
    """Allocate ranks for `layers` under the recipe's strategy and budget; temporal_extra[name] per rank."""
    cfg = a.ranks
    if not layers:
        raise RecipeError("adapters.target_modules selects no linear layer, so there is nothing to allocate")
    rows = [LayerRank(x, per_rank_cost(x, temporal_extra.get(x.name, 0))) for x in layers]
    budget = resolve_budget(cfg, a.rank * sum(x.per_rank for x in rows), base_params)
    if cfg.strategy == "uniform":
        real = uniform_ranks(rows, cfg, budget, a.rank)
    elif cfg.strategy == "manual":
        real = manual_ranks(rows, cfg, budget)
    else:
        real = importance_ranks(rows, cfg, budget, importance)
    if cfg.strategy == "manual":  # each group rounds to its own share, so no group borrows another's
        for g, share in cfg.shares.items():
            idx = [i for i, x in enumerate(rows) if x.layer.group == g]
            integer_ranks([rows[i] for i in idx], [real[i] for i in idx], share * budget, cfg.max_rank)
    else:
        integer_ranks(rows, real, budget, cfg.max_rank)
    for x in rows:
        x.alpha = a.alpha * x.rank / a.rank  # keep LoRA's scale alpha/r as the recipe set it
    plan = RankPlan(cfg.strategy, budget, base_params, rows)
    check_budget(plan, cfg)
    return plan


def uniform_ranks(rows: list[LayerRank], cfg: RanksSection, budget: int, rank: int) -> list[float]:
    if cfg.budget is None:
        return [float(rank)] * len(rows)
    r = round(budget / sum(x.per_rank for x in rows))
    return [clamp(r, cfg, x) for x in rows]


def manual_ranks(rows: list[LayerRank], cfg: RanksSection, budget: int) -> list[float]:
    present = {x.layer.group for x in rows}
    for group, share in cfg.shares.items():
        if share > 0 and group not in present:
            raise RecipeError(f"adapters.ranks.shares.{group}: the targeted layers have no '{group}' layer; "
                              f"groups present: {', '.join(g for g in GROUPS if g in present)}")
    real = []
    for x in rows:
        share = cfg.shares.get(x.layer.group, 0.0)
        cost = sum(y.per_rank for y in rows if y.layer.group == x.layer.group)
        real.append(0.0 if share == 0 else clamp(share * budget / cost, cfg, x))
    return real


def importance_ranks(rows: list[LayerRank], cfg: RanksSection, budget: int, importance) -> list[float]:
    """Ranks proportional to importance within [min_rank, max_rank]; the scale found by bisection."""
    if importance is None:
        raise ValueError("the importance strategy needs calibration scores (toolchain.adapters.calibrate)")
    scores = [max(float(importance[x.layer.name]), 0.0) for x in rows]
    for x, s in zip(rows, scores):
        x.importance = s
    top = max(scores) or 1.0
    weights = [s / top for s in scores]

    def spend(scale: float) -> float:
        return sum(clamp(scale * w, cfg, x) * x.per_rank for w, x in zip(weights, rows))

    lo, hi = 0.0, float(cfg.max_rank)
    while spend(hi) < budget and hi < 1e9:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if spend(mid) < budget else (lo, mid)
    return [clamp(hi * w, cfg, x) for w, x in zip(weights, rows)]


def clamp(r: float, cfg: RanksSection, row: LayerRank) -> float:
    return min(max(r, float(cfg.min_rank)), float(row.cap(cfg.max_rank)))


def integer_ranks(rows: list[LayerRank], real: list[float], budget: float, max_rank: int) -> None:
    """Floor every rank, then give +1 to the largest remainders while that brings the total closer."""
    for x, r in zip(rows, real):
        x.rank = int(math.floor(r + 1e-9))
    left = budget - sum(x.params for x in rows)
    order = sorted(range(len(rows)), key=lambda i: real[i] - rows[i].rank, reverse=True)
    for i in order:
        x = rows[i]
        frac = real[i] - x.rank
        if frac <= 1e-9 or x.rank >= x.cap(max_rank):
            continue
        if abs(left - x.per_rank) < abs(left):
            x.rank += 1
            left -= x.per_rank


def check_budget(plan: RankPlan, cfg: RanksSection) -> None:
    if not plan.active():
        raise RecipeError("adapters.ranks: the allocation adapts no layer; raise the budget or the shares")
    err = plan.total / plan.budget - 1
    if abs(err) <= TOLERANCE:
        return
    raise RecipeError(f"adapters.ranks.budget: {plan.budget:,} parameters requested, the allocation reaches "
                      f"{plan.total:,} ({100 * err:+.1f}%, the limit is ±{100 * TOLERANCE:.0f}%); "
                      + budget_hint(plan, cfg))


def rank_bounds(rows: list[LayerRank], cfg: RanksSection) -> tuple[int, int]:
    """Fewest and most parameters `rows` can take within min_rank and each layer's cap."""
    return (sum(cfg.min_rank * x.per_rank for x in rows),
            sum(max(cfg.min_rank, x.cap(cfg.max_rank)) * x.per_rank for x in rows))


def budget_hint(plan: RankPlan, cfg: RanksSection) -> str:
    if plan.strategy == "uniform":
        step = sum(x.per_rank for x in plan.layers)
        return (f"with strategy uniform the budget moves in steps of {step:,} (one rank everywhere): "
                "pick a multiple, or use strategy manual or importance")
    # manual: each group with a share must fit its own layers; importance: one budget over every layer
    groups = {g: s for g, s in cfg.shares.items() if s > 0} if plan.strategy == "manual" else {"all": 1.0}
    out = []
    for g, share in groups.items():
        lo, hi = rank_bounds([x for x in plan.layers if g in ("all", x.layer.group)], cfg)
        want = share * plan.budget
        if want < lo or want > hi:
            name = "the budget" if g == "all" else f"the {g} share"
            out.append(f"{name} ({want:,.0f}) is outside what its layers can take ({lo:,} at min_rank "
                       f"{cfg.min_rank} to {hi:,} at max_rank {cfg.max_rank} or min(in, out))")
    return "; ".join(out) + ": change the budget, the shares or min_rank/max_rank"


def temporal_extra(layers: list[LinearLayer], temporal, k: int) -> dict[str, int]:
    """Parameters per unit of rank that a temporal branch adds: conv taps, and the gate's own
    parameters (motion: 1, position: K)."""
    from toolchain.adapters.temporal import gate_parts, vision_layer_index

    if not temporal.enabled:
        return {}
    parts = gate_parts(temporal.gate)
    per = temporal.kernel + ("motion" in parts) + k * ("position" in parts)
    out = {}
    for x in layers:
        idx = vision_layer_index(x.name + ".")
        if idx is not None and (temporal.layers == "all" or idx in temporal.layers):
            out[x.name] = per
    return out


def plan_table(plan: RankPlan) -> str:
    """A fixed-width table a person reads at a glance: one row per group, then the total."""
    head = f"{'group':<8} {'layers':>6} {'adapted':>7} {'rank':>9} {'adapter params':>14} {'share':>6}"
    lines = [head, "-" * len(head)]
    for g, row in plan.by_group().items():
        rank = str(row["rank_min"]) if row["rank_min"] == row["rank_max"] else f"{row['rank_min']}-{row['rank_max']}"
        share = row["params"] / max(1, plan.total)
        lines.append(f"{g:<8} {row['layers']:>6} {row['adapted']:>7} {rank:>9} {row['params']:>14,} {share:>6.1%}")
    err = plan.total / plan.budget - 1
    lines.append(f"{'total':<8} {len(plan.layers):>6} {len(plan.active()):>7} {'':>9} {plan.total:>14,} "
                 f"{'':>6}  budget {plan.budget:,} ({err:+.1%}), {plan.total / max(1, plan.base_params):.2%} of the base")
    return f"rank allocation ({plan.strategy})\n" + "\n".join(lines)


def group_table(plan: RankPlan) -> str:
    """Module groups found in the model: targeted linear layers and their base parameters."""
    head = f"{'group':<8} {'linear layers':>13} {'base params':>12}  example"
    lines = ["module groups (targeted linear layers)", head, "-" * len(head)]
    for g in GROUPS:
        members = [x.layer for x in plan.layers if x.layer.group == g]
        if members:
            lines.append(f"{g:<8} {len(members):>13} {sum(m.params for m in members):>12,}  {members[0].name}")
    return "\n".join(lines)


def layer_table(plan: RankPlan) -> str:
    width = max(len(x.layer.name) for x in plan.layers)
    lines = [f"{'layer':<{width}} {'group':<7} {'shape':>11} {'rank':>5} {'params':>8} {'importance':>11}"]
    for x in plan.layers:
        imp = "" if x.importance is None else f"{x.importance:.3g}"
        shape = f"{x.layer.in_features}x{x.layer.out_features}"
        lines.append(f"{x.layer.name:<{width}} {x.layer.group:<7} {shape:>11} {x.rank:>5} {x.params:>8,} {imp:>11}")
    return "\n".join(lines)

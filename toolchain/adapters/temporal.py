"""Temporal-aware LoRA: the rank-r bottleneck is mixed across the K frames and gated per frame.

For a LoRA layer in the vision tower, frame k of a clip gets

    y_k = W x_k + s · B (g_k ⊙ conv_t(h)_k),   h = A x
        = (W + s·BA) x_k + s · B (g_k ⊙ conv_t(h)_k − h_k)

where conv_t is a depthwise convolution over the K frames (one kernel per rank channel, identity
at init) and g_k = 2·sigmoid(α · motion_k + p_k) is a per-frame, per-channel gate from the frame's
integer motion energy and a learned position embedding over K (1 at init). With the identity init
the residual is zero at step 0, so the layer equals plain LoRA. With `adapters.temporal.init:
difference`, every second channel's kernel starts as identity + the central difference
(h_{k+1} − h_{k−1}) / 2, so the branch sees the sign of motion from step 0; either way the layer
starts as the base, since LoRA's B is zero at init. The static part W + s·BA merges into the base
on export; the residual stays as a low-rank side branch in the graph (it depends on the other
frames and on the frame's time and motion, so it cannot merge).

It plugs into PEFT as a LoRA variant (`module.lora_variant[adapter]`), so lora_A/lora_B stay in
PEFT's own format and file; the temporal parameters are saved beside them in temporal.safetensors.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from toolchain.errors import VqtoolError

TEMPORAL_FILE, TEMPORAL_CONFIG = "temporal.safetensors", "temporal.json"
GATES = ("motion", "position", "both", "none")


@dataclass
class TemporalContext:
    """Per-forward clip layout shared by every temporal layer: frames per clip and the gate inputs."""

    k: int = 0
    motion: torch.Tensor | None = None  # float [B, K] in [0, 1]
    active: bool = field(default=False)


def gate_parts(gate: str) -> tuple[str, ...]:
    """The gate parameters a gate mode uses (only those are created, trained and counted)."""
    return {"motion": ("motion",), "position": ("position",), "both": ("motion", "position")}.get(gate, ())


def init_kernel(rank: int, kernel: int, init: str = "identity") -> torch.Tensor:
    """[rank, kernel] depthwise kernels: identity over time, and with init="difference" every second
    channel also carries the central difference (h[k+1] − h[k−1]) / 2, so the branch sees motion's sign."""
    conv = torch.zeros(rank, kernel)
    c = kernel // 2
    conv[:, c] = 1.0
    if init == "difference" and kernel > 1:
        conv[1::2, c - 1], conv[1::2, c + 1] = -0.5, 0.5
    return conv


def init_temporal_params(
    rank: int, kernel: int, k: int, gate: str = "both", init: str = "identity"
) -> nn.ParameterDict:
    conv = init_kernel(rank, kernel, init)
    params = {"conv": nn.Parameter(conv)}
    if "motion" in gate_parts(gate):
        params["motion"] = nn.Parameter(torch.zeros(rank))
    if "position" in gate_parts(gate):
        params["position"] = nn.Parameter(torch.zeros(k, rank))
    return nn.ParameterDict(params)


def frame_gate(params: nn.ParameterDict, gate: str, ctx: TemporalContext) -> torch.Tensor | None:
    """[B, K, r] gate, or None for a constant 1."""
    if gate == "none":
        return None
    z = 0.0
    if gate in ("motion", "both"):
        z = z + ctx.motion[:, :, None] * params["motion"]
    if gate in ("position", "both"):
        z = z + params["position"][: ctx.k].unsqueeze(0)
    return 2.0 * torch.sigmoid(z)


def temporal_residual(h: torch.Tensor, params: nn.ParameterDict, gate: str, ctx: TemporalContext) -> torch.Tensor:
    """h [B·K, T, r] -> g ⊙ conv_t(h) − h, same shape. Zero-padded at the clip's ends."""
    if not ctx.active:
        raise VqtoolError("a temporal LoRA layer ran outside a video forward; encode frames through VideoCLIP")
    bk, t, r = h.shape
    k = ctx.k
    z = h.reshape(bk // k, k, t, r)
    w = params["conv"].to(h.dtype)
    pad = w.shape[1] // 2
    zp = F.pad(z, (0, 0, 0, 0, pad, pad))
    mixed = sum(w[:, j] * zp[:, j : j + k] for j in range(w.shape[1]))
    g = frame_gate(params, gate, ctx)
    if g is not None:
        mixed = mixed * g.to(h.dtype)[:, :, None, :]
    return (mixed - z).reshape(bk, t, r)


class TemporalLoraVariant:
    """PEFT LoRA variant (duck-typed to peft's LoraVariant): plain LoRA plus the temporal residual."""

    def __init__(self, gate: str, ctx: TemporalContext):
        self.gate, self.ctx = gate, ctx

    def supports_lora_conversion(self) -> bool:
        return False

    @staticmethod
    def init(module, adapter_name: str, **kwargs) -> None:
        pass  # parameters are attached by attach_temporal, which knows K and the kernel

    def forward(self, module, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs) -> torch.Tensor:
        a, b = module.lora_A[active_adapter], module.lora_B[active_adapter]
        h = a(module.lora_dropout[active_adapter](x))
        h = h + temporal_residual(h, module.temporal_params[active_adapter], self.gate, self.ctx)
        return result + (b(h) * module.scaling[active_adapter]).to(result.dtype)

    @staticmethod
    def _refuse(*args, **kwargs):
        raise VqtoolError("temporal LoRA layers cannot be merged in place: use `vqtool export RUN_DIR`, "
                          "which merges the static part and keeps the temporal branch")

    merge_safe = merge_unsafe = unmerge = _refuse


def vision_layer_index(name: str) -> int | None:
    """The vision encoder layer a module belongs to; None outside them and for X-CLIP's message
    token layers (message_fc / message_attn), which already mix the frames and see one token each."""
    m = re.search(r"(vision_model|vision_tower)\.encoder\.layers\.(\d+)\.", name)
    return int(m.group(2)) if m and ".message_" not in name else None


def temporal_targets(model: nn.Module, layers) -> list[str]:
    """Names of LoRA layers in the vision tower's encoder layers chosen by `layers` ("all" or indices)."""
    from peft.tuners.lora import LoraLayer

    out = []
    for name, module in model.named_modules():
        idx = vision_layer_index(name)
        if isinstance(module, LoraLayer) and idx is not None and (layers == "all" or idx in layers):
            out.append(name)
    return out


def attach_temporal(model: nn.Module, cfg, k: int, ctx: TemporalContext, adapter: str = "default") -> list[str]:
    """Turn the chosen vision LoRA layers into temporal ones; returns their names."""
    names = temporal_targets(model, cfg.layers)
    if not names:
        raise VqtoolError("adapters.temporal.layers matched no LoRA layer of the vision tower; "
                          "target vision linears in adapters.target_modules or use layers: all")
    for name in names:
        module = model.get_submodule(name)
        rank = module.lora_A[adapter].out_features
        device = module.lora_A[adapter].weight.device
        params = init_temporal_params(rank, cfg.kernel, k, cfg.gate, cfg.init)
        module.temporal_params = nn.ModuleDict({adapter: params.to(device)})
        module.lora_variant[adapter] = TemporalLoraVariant(cfg.gate, ctx)
    return names


def temporal_state(model: nn.Module, adapter: str = "default") -> dict[str, torch.Tensor]:
    state = {}
    for name, module in model.named_modules():
        if hasattr(module, "temporal_params") and adapter in module.temporal_params:
            for key, p in module.temporal_params[adapter].items():
                state[f"{name}.{key}"] = p.detach().cpu().contiguous()
    return state


@contextmanager
def plain_lora_view(model: nn.Module):
    """Temporarily detach the temporal parameters, so PEFT saves a plain-LoRA adapter file.

    PEFT collects every parameter of a LoRA layer into adapter_model.safetensors; ours live in
    temporal.safetensors instead, keeping PEFT's file loadable by anything that reads plain LoRA.
    """
    held = {}
    for name, module in model.named_modules():
        if "temporal_params" in module._modules:
            held[name] = module._modules.pop("temporal_params")
    try:
        yield model
    finally:
        for name, params in held.items():
            model.get_submodule(name)._modules["temporal_params"] = params


def save_temporal(model: nn.Module, adapter_dir: Path, cfg, k: int) -> None:
    from safetensors.torch import save_file

    save_file(temporal_state(model), str(Path(adapter_dir) / TEMPORAL_FILE))
    meta = {"kernel": cfg.kernel, "gate": cfg.gate, "layers": cfg.layers, "k": k}
    (Path(adapter_dir) / TEMPORAL_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")


def load_temporal(model: nn.Module, adapter_dir: Path, cfg, k: int, ctx: TemporalContext) -> list[str]:
    """Re-attach temporal layers to a model whose plain LoRA was loaded by PEFT, then load their weights."""
    from safetensors.torch import load_file

    path = Path(adapter_dir) / TEMPORAL_FILE
    if not path.is_file():
        raise VqtoolError(f"{path} is missing: the recipe enables adapters.temporal but the run saved no temporal weights")
    names = attach_temporal(model, cfg, k, ctx)
    state = load_file(str(path))
    for name in names:
        params = model.get_submodule(name).temporal_params["default"]
        for key in params:
            params[key].data.copy_(state[f"{name}.{key}"])
    return names


class TemporalSideBranch(nn.Module):
    """Export form of a temporal LoRA layer: the merged dense linear plus the gated temporal residual."""

    def __init__(self, dense: nn.Linear, lora_a: torch.Tensor, lora_b: torch.Tensor, params: nn.ParameterDict,
                 gate: str, ctx: TemporalContext):
        super().__init__()
        self.dense = dense
        self.a = nn.Linear(lora_a.shape[1], lora_a.shape[0], bias=False)
        self.b = nn.Linear(lora_b.shape[1], lora_b.shape[0], bias=False)
        self.a.weight.data.copy_(lora_a)
        self.b.weight.data.copy_(lora_b)  # the LoRA scaling is folded into b
        self.params = nn.ParameterDict({k: nn.Parameter(v.detach().clone().float()) for k, v in params.items()})
        self.gate, self.ctx = gate, ctx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x) + self.b(temporal_residual(self.a(x), self.params, self.gate, self.ctx))


def side_branch(module, dense: nn.Linear, adapter: str = "default") -> TemporalSideBranch:
    """Build the export form from a PEFT LoRA layer that carries temporal parameters."""
    a = module.lora_A[adapter].weight.detach().float()
    b = module.lora_B[adapter].weight.detach().float() * module.scaling[adapter]
    variant = module.lora_variant[adapter]
    return TemporalSideBranch(dense, a, b, module.temporal_params[adapter], variant.gate, variant.ctx)


def bind_temporal(model: nn.Module, ctx: TemporalContext) -> int:
    """Point every temporal layer (training or export form) at one model's context."""
    bound = 0
    for module in model.modules():
        if isinstance(module, TemporalSideBranch):
            module.ctx, bound = ctx, bound + 1
        for variant in getattr(module, "lora_variant", {}).values():
            if isinstance(variant, TemporalLoraVariant):
                variant.ctx, bound = ctx, bound + 1
    return bound


def branch_cost(model: nn.Module, tokens: int) -> dict:
    """Parameters of the side branches and their share of the vision encoder's multiply-accumulates.

    Per frame: every vision linear costs in·out MACs per token, attention 2·T·d per token per layer,
    the patch embedding 3·p²·d per patch; a branch costs (in + out)·r per token plus kernel·r.
    """
    branch_macs = branch_params = base_macs = 0
    for name, m in model.named_modules():
        if "vision" not in name:
            continue
        if isinstance(m, TemporalSideBranch):
            r = m.a.out_features
            branch_macs += tokens * (m.a.in_features * r + r * m.b.out_features + m.params["conv"].numel())
            branch_params += sum(p.numel() for n, p in m.named_parameters() if not n.startswith("dense."))
        elif isinstance(m, nn.Linear) and not name.endswith((".a", ".b")):
            base_macs += tokens * m.in_features * m.out_features
        elif isinstance(m, nn.Conv2d):
            base_macs += (tokens - 1) * m.weight.numel()
    layers = sum(1 for n, _ in model.named_modules() if vision_layer_index(n + ".") is not None and n.endswith("self_attn"))
    width = getattr(getattr(model, "config", None), "vision_config", None)
    base_macs += layers * 2 * tokens * tokens * (width.hidden_size if width else 0)
    return {"branch_params": branch_params,
            "branch_flop_share": branch_macs / max(1, base_macs + branch_macs)}

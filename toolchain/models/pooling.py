"""Temporal pooling of per-frame embeddings: CLIP4Clip's meanP, or seqTransf (a small transformer).

seqTransf adds a learned position per frame, runs a few transformer layers over the K frame
embeddings and adds the result back to them before the mean. Its residual branches and position
table start at zero, so at step 0 it equals mean pooling exactly and fine-tuning moves it from there.
Its parameters train in full precision, are saved beside the adapter (pooling.safetensors) and are
part of the exported video graph.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from toolchain.errors import VqtoolError

POOLING_FILE, POOLING_CONFIG = "pooling.safetensors", "pooling.json"


class TemporalTransformer(nn.Module):
    """[B, K, D] frame embeddings -> [B, D] video embedding (not normalised)."""

    def __init__(self, dim: int, k: int, layers: int = 1):
        super().__init__()
        heads = next(h for h in (8, 4, 2, 1) if dim % h == 0)
        self.position = nn.Parameter(torch.zeros(k, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        for block in self.encoder.layers:  # zero residual branches: identity at init
            nn.init.zeros_(block.self_attn.out_proj.weight), nn.init.zeros_(block.self_attn.out_proj.bias)
            nn.init.zeros_(block.linear2.weight), nn.init.zeros_(block.linear2.bias)
        self.dim, self.k, self.layers = dim, k, layers

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.encoder(frames + self.position[: frames.shape[1]])
        return (x + frames).mean(dim=1) / 2  # = the frames' mean at init


def build_pooling(kind: str, dim: int, k: int, layers: int) -> nn.Module | None:
    if kind == "mean":
        return None
    if kind == "transformer":
        return TemporalTransformer(dim, k, layers)
    raise VqtoolError(f"model.pooling {kind!r} is not known; choose mean or transformer")


def save_pooling(pool: nn.Module, folder: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu().float() for k, v in pool.state_dict().items()}
    save_file(state, str(Path(folder) / POOLING_FILE))
    config = {"kind": "transformer", "dim": pool.dim, "k": pool.k, "layers": pool.layers}
    (Path(folder) / POOLING_CONFIG).write_text(json.dumps(config, indent=2))


def load_pooling(pool: nn.Module, folder: Path) -> None:
    from safetensors.torch import load_file

    path = Path(folder) / POOLING_FILE
    if not path.is_file():
        raise VqtoolError(f"{folder} has no {POOLING_FILE}, but the recipe's model.pooling is transformer; "
                          "was the run made with another recipe?")
    pool.load_state_dict(load_file(str(path)))

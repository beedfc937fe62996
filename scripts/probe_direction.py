"""Linear probe: do a video-llm base's video tokens (before any fine-tuning) tell the motion direction?

Decodes a captioning recipe's shapes splits, computes the base's video tokens (vision tower, projector,
pooling; no adapters, no 4-bit), flattens them per clip and fits a 4-way logistic regression
(standardised features, Adam, L2) on the training clips; prints its accuracy on the eval clips.
Run: python scripts/probe_direction.py [recipes/shapes-caption-tiny.yaml]
"""

from __future__ import annotations

import sys

import torch

from toolchain.data.splits import load_data, read_splits
from toolchain.models.assemble import build_trainable, model_info
from toolchain.progress import Reporter
from toolchain.recipe import load_recipe

DIRECTIONS = ["left", "right", "up", "down"]


@torch.no_grad()
def token_features(model, clips) -> torch.Tensor:
    out = [model.video_tokens(clips.video_pixels[i:i + 32], clips.video_motion[i:i + 32]).flatten(1)
           for i in range(0, len(clips.videos), 32)]
    return torch.cat(out)


def labels(clips) -> torch.Tensor:
    return torch.tensor([DIRECTIONS.index(c.split()[-1]) for c in clips.captions[: len(clips.videos)]])


def probe(x, y, xe, ye, weight_decay: float, steps: int = 500) -> tuple[float, float]:
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x, xe = (x - mu) / sd, (xe - mu) / sd
    w = torch.zeros(x.shape[1], len(DIRECTIONS), requires_grad=True)
    b = torch.zeros(len(DIRECTIONS), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + weight_decay * (w ** 2).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return [float(((a @ w + b).argmax(1) == t).float().mean()) for a, t in ((x, y), (xe, ye))]


def main() -> None:
    recipe = load_recipe(sys.argv[1] if len(sys.argv) > 1 else "recipes/shapes-caption-tiny.yaml",
                         ["adapters.quantization=none", "adapters.temporal.enabled=false"])
    report = Reporter(quiet=True)
    model = build_trainable(recipe, model_info(recipe), "cpu")
    train, evalset = load_data(recipe, read_splits(recipe, report), model.preparer(), report)
    x, xe = token_features(model, train), token_features(model, evalset)
    print(f"video tokens per clip: {x.shape[1] // model.config.text_config.hidden_size}, features {x.shape[1]}")
    for wd in (1e-3, 1e-2):
        tr, ev = probe(x, labels(train), xe, labels(evalset), wd)
        print(f"L2 {wd:g}: train accuracy {tr:.3f}, eval accuracy {ev:.3f} ({len(evalset.videos)} clips, chance 0.25)")


if __name__ == "__main__":
    main()

"""Accuracy and latency parity of every exported variant against the PyTorch model, as gates."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from toolchain.evaluate import retrieval_metrics
from toolchain.models.video_clip import VideoCLIP
from toolchain.recipe import GateSection


@dataclass
class Outputs:
    video: np.ndarray  # [M, D]
    indices: np.ndarray  # [M, K]
    text: np.ndarray  # [M, D]
    scores: np.ndarray | None = None  # [M videos, M texts]: the model's own scores when not a dot product (X-CLIP)

    def t2v(self) -> np.ndarray:
        """[texts, videos]: what retrieval ranks."""
        return self.scores.T if self.scores is not None else self.text @ self.video.T


@dataclass
class ParityInputs:
    clips: list[np.ndarray]  # uint8 [N, H, W, 3] each, sizes vary
    ids: np.ndarray
    mask: np.ndarray


@torch.no_grad()
def torch_outputs(model: VideoCLIP, inputs: ParityInputs) -> Outputs:
    """Embeddings, frame indices and, for a model that conditions captions on videos, its scores."""
    model.eval()
    vids, idxs, contexts = zip(*(model.encode_frames_parts(torch.from_numpy(c)[None]) for c in inputs.clips))
    features = model.encode_text_features(torch.from_numpy(inputs.ids), torch.from_numpy(inputs.mask))
    video = torch.cat(vids)
    scores = model.scores(video, torch.cat(contexts), features).numpy() if model.conditioned else None
    text = torch.nn.functional.normalize(features, dim=-1)
    return Outputs(video.numpy(), torch.cat(idxs).numpy(), text.numpy(), scores)


def onnx_outputs(video_sess, text_sess, inputs: ParityInputs, scorer_sess=None) -> Outputs:
    """The graphs' outputs on the parity clips; with X-CLIP's scorer graph, its scores of every pair."""
    runs = [video_sess.run(None, {"frames": c[None]}) for c in inputs.clips]
    text_out = text_sess.run(None, {"input_ids": inputs.ids, "attention_mask": inputs.mask})
    video = np.concatenate([r[0] for r in runs])
    scores = None
    if scorer_sess is not None:
        feed = {"video_embeds": video, "video_context": np.concatenate([r[2] for r in runs]), "text_features": text_out[1]}
        scores = scorer_sess.run(None, feed)[0]
    return Outputs(video, np.concatenate([r[1] for r in runs]), text_out[0], scores)


def lsb_noise(clips: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """Each clip with independent ±1 LSB noise on every value (what a re-encode or a camera adds)."""
    rng = np.random.default_rng(seed)
    return [np.clip(c.astype(np.int16) + rng.integers(-1, 2, size=c.shape), 0, 255).astype(np.uint8) for c in clips]


def noise_agreement(video_sess, inputs: ParityInputs, reference: Outputs) -> float:
    """Share of clips whose ONNX frame choice under ±1 LSB noise equals PyTorch's on the clean clip."""
    noisy = [video_sess.run(None, {"frames": c[None]})[1] for c in lsb_noise(inputs.clips)]
    return float(np.mean([np.array_equal(n[0], r) for n, r in zip(noisy, reference.indices)]))


def embedding_diff(ref: np.ndarray, got: np.ndarray) -> dict:
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-12)
    return {"max_abs_diff": float(np.abs(ref - got).max()), "min_cosine": float(cos.min())}


def t2v_r1(out: Outputs) -> float:
    return retrieval_metrics(out.t2v())["t2v"]["r1"]


# Two videos whose reference scores for a caption differ by less than this are tied: float16's spacing
# near 1.0 is 2**-10 (~9.8e-4), so no fp16 graph can keep their order, and a float32 one keeps it by luck.
TIE_MARGIN = 1e-3


def decisive_r1_delta(ref: Outputs, got: Outputs, tie_margin: float = TIE_MARGIN) -> tuple[float, int]:
    """t2v R@1 change (points) counting only flips the reference decided by more than `tie_margin`.

    A caption lost (the reference ranked its video first, the variant does not) counts when the
    reference scored its video above the variant's pick by more than the margin; a caption gained,
    when the reference's own pick beat its video by more than the margin. Returns (delta, near-tie flips).
    """
    s_ref, s_got = ref.t2v(), got.t2v()
    truth = np.arange(len(s_ref))
    pick_ref, pick_got = s_ref.argmax(1), s_got.argmax(1)
    lost = (pick_ref == truth) & (pick_got != truth)
    gained = (pick_ref != truth) & (pick_got == truth)
    lost_by = s_ref[truth, truth] - s_ref[truth, pick_got]
    gained_by = s_ref[truth, pick_ref] - s_ref[truth, truth]
    decisive = int((lost & (lost_by > tie_margin)).sum()) - int((gained & (gained_by > tie_margin)).sum())
    ties = int((lost & (lost_by <= tie_margin)).sum() + (gained & (gained_by <= tie_margin)).sum())
    return -100.0 * decisive / len(s_ref), ties


def compare(ref: Outputs, got: Outputs) -> dict:
    """Embeddings, frame indices and retrieval; retrieval ranks by each side's own scores (X-CLIP:
    captions conditioned on each video), and `scores` compares those scores where both have them."""
    video = embedding_diff(ref.video, got.video)
    same_shape = ref.indices.shape == got.indices.shape
    video["frame_index_agreement"] = float(np.mean(np.all(ref.indices == got.indices, axis=1))) if same_shape else 0.0
    r_ref, r_got = t2v_r1(ref), t2v_r1(got)
    top_ref, top_got = ref.t2v().argmax(axis=1), got.t2v().argmax(axis=1)
    decisive, ties = decisive_r1_delta(ref, got)
    out = {
        "video": video,
        "text": embedding_diff(ref.text, got.text),
        "retrieval": {"t2v_r1_torch": r_ref, "t2v_r1_onnx": r_got, "delta": r_got - r_ref,
                      "delta_beyond_ties": decisive, "near_tie_flips": ties, "tie_margin": TIE_MARGIN,
                      "t2v_top1_agreement": float(np.mean(top_ref == top_got))},
    }
    if ref.scores is not None:
        diff = np.abs(ref.scores - (got.scores if got.scores is not None else got.video @ got.text.T))
        out["scores"] = {"max_abs_diff": float(diff.max()), "conditioned_onnx": got.scores is not None}
    return out


REFERENCES = {"vs_trained": "as-trained", "vs_merged": "merged fp32"}


def reference_failures(label: str, result: dict, gate: GateSection) -> list[str]:
    fails = []
    for out in ("video", "text"):
        cos = result[out]["min_cosine"]
        if not cos >= gate.min_cosine:
            fails.append(f"{label}: {out}_embeds min cosine {cos:.6f} < {gate.min_cosine} "
                         f"(max abs diff {result[out]['max_abs_diff']:.3g})")
    agree = result["video"]["frame_index_agreement"]
    if agree < 1.0:
        fails.append(f"{label}: frame_indices differ from PyTorch on {100 * (1 - agree):.1f}% of clips")
    retrieval = result["retrieval"]
    drop = -retrieval.get("delta_beyond_ties", retrieval["delta"])  # older parity results lack it
    if not drop <= gate.max_r1_drop:
        ties = retrieval.get("near_tie_flips", 0)
        fails.append(f"{label}: t2v R@1 dropped {drop:.2f} points > {gate.max_r1_drop}"
                     + (f" (not counting {ties} near-tie flips)" if ties else ""))
    scores = result.get("scores")
    if scores is not None and not scores["conditioned_onnx"]:
        fails.append(f"{label}: the ONNX scores are plain dot products, not the model's video-conditioned "
                     f"scores (max abs diff {scores['max_abs_diff']:.3g}, t2v R@1 delta {-drop:+.2f})")
    elif scores is not None and gate.max_r1_drop == 0 and retrieval.get("delta_beyond_ties", retrieval["delta"]) != 0:
        fails.append(f"{label}: t2v R@1 from the exported scorer ({retrieval['t2v_r1_onnx']:.2f}) "
                     f"differs from PyTorch's ({retrieval['t2v_r1_torch']:.2f})")
    return fails


def gate_failures(variant: str, results: dict, gate: GateSection) -> list[str]:
    """Every failed check against every reference, each naming the output, the value and the threshold.

    `results` maps "vs_trained" / "vs_merged" to a `compare` result.
    """
    return [f for key, ref in REFERENCES.items() if key in results
            for f in reference_failures(f"{variant} vs {ref}", results[key], gate)]


def time_ms(fn, runs: int, warmup: int = 3) -> np.ndarray:
    return interleaved_ms({"fn": fn}, runs, warmup)["fn"]


def interleaved_ms(fns: dict, runs: int, warmup: int = 2) -> dict[str, np.ndarray]:
    """Warm every candidate up, then time one call of each in turn for `runs` rounds.

    Interleaving puts every candidate under the same machine load, so ratios stay meaningful on a
    busy machine even when absolute times drift.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1000)
    return {name: np.array(t) for name, t in times.items()}


def stats(ms: np.ndarray) -> dict:
    return {"p50": float(np.median(ms)), "p95": float(np.percentile(ms, 95)), "mean": float(ms.mean()),
            "runs": int(ms.size)}


def latency_table(torch_fns: dict, onnx_fns: dict, runs: int) -> tuple[dict, dict]:
    """(torch stats by name, per-variant latency dicts with speedups vs the torch models)."""
    times = interleaved_ms({**torch_fns, **onnx_fns}, runs)
    torch_stats = {name: stats(times[name]) for name in torch_fns}
    merged, trained = torch_stats["merged_fp32"]["p50"], torch_stats["as_trained"]["p50"]
    out = {}
    for name in onnx_fns:
        s = stats(times[name])
        out[name] = {"torch_p50": merged, "torch_trained_p50": trained, "onnx_p50": s["p50"],
                     "onnx_p95": s["p95"], "onnx_mean": s["mean"], "runs": s["runs"],
                     "speedup": merged / s["p50"], "speedup_vs_trained": trained / s["p50"]}
    return torch_stats, out

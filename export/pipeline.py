"""`vqtool export RUN_DIR`: merge, export both graphs, quantize, check parity, write the export dir."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from export.merge import merged_model
from export.onnx_export import FORMAT_VERSION, export_text_encoder, export_video_encoder
from export.parity import (
    ParityInputs, compare, gate_failures, latency, noise_agreement, onnx_outputs, torch_outputs,
)
from export.quantize import SUPPORTED, make_variant, variant_path
from export.report import parity_markdown
from export.tokenize import encode_texts, load_tokenizer
from toolchain import rundir
from toolchain.data.clips import group_by_video
from toolchain.data.formats import read_split
from toolchain.data.video import decode_video
from toolchain.errors import DataError, VideoReadError, VqtoolError
from toolchain.models.preprocess import describe_preprocessing


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parity_inputs(recipe, info, limit: int | None = None) -> ParityInputs:
    """The eval split's videos, each with its first caption (so text i describes video i)."""
    clips, captions = [], []
    videos, caption_lists = group_by_video(read_split(recipe.data, "eval"))
    for video, caps in list(zip(videos, caption_lists))[:limit]:
        try:
            clips.append(decode_video(video, recipe.frames.decode_max_frames))
            captions.append(caps[0])
        except VideoReadError:
            continue
    if not clips:
        raise DataError(f"no readable eval video in {recipe.data.eval}; parity needs some")
    ids, mask = encode_texts(load_tokenizer(info.tokenizer, info.max_text_len), captions)
    return ParityInputs(clips, ids, mask)


def graph_metadata(recipe, info) -> dict:
    return {
        "vqtool.frames.k": recipe.frames.k, "vqtool.frames.selector": recipe.frames.selector,
        "vqtool.image_size": info.image_size, "vqtool.mean": list(info.mean), "vqtool.std": list(info.std),
    }


def temporal_summary(recipe, info, merged) -> dict | None:
    if not recipe.adapters.temporal.enabled:
        return None
    from toolchain.adapters.temporal import branch_cost

    cfg = merged.clip.config.vision_config
    tokens = (cfg.image_size // cfg.patch_size) ** 2 + 1
    return {**recipe.adapters.temporal.model_dump(), **branch_cost(merged.clip, tokens)}


def manifest(recipe, info, run_dir: Path, files: dict, dim: int, temporal: dict | None) -> dict:
    return {
        "format": FORMAT_VERSION,
        "name": recipe.name,
        "source": {"run_dir": str(Path(run_dir).resolve()), "base": recipe.model.name_or_path,
                   "family": recipe.model.family, "pooling": recipe.model.pooling,
                   "quantization": recipe.adapters.quantization,
                   "adapter_sha256": sha256(Path(run_dir) / "adapter" / "adapter_model.safetensors")},
        "frames": recipe.frames.model_dump(),
        "preprocessing": describe_preprocessing(info),
        "text": {"tokenizer": "tokenizer.json", "max_length": info.max_text_len},
        "graphs": {
            "video": {"inputs": {"frames": "uint8 [batch, num_frames, height, width, 3] RGB"},
                      "outputs": {"video_embeds": f"float32 [batch, {dim}] L2-normalised",
                                  "frame_indices": f"int64 [batch, {recipe.frames.k}]"}},
            "text": {"inputs": {"input_ids": "int64 [batch, seq]", "attention_mask": "int64 [batch, seq]"},
                     "outputs": {"text_embeds": f"float32 [batch, {dim}] L2-normalised"}},
        },
        "embedding_dim": dim,
        "temporal": temporal,
        "variants": files,
    }


def check_variant(name, files, out_dir, reference, inputs, merged, recipe) -> dict:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = recipe.export.threads
    video = ort.InferenceSession(str(out_dir / files["video"]), opts, providers=["CPUExecutionProvider"])
    text = ort.InferenceSession(str(out_dir / files["text"]), opts, providers=["CPUExecutionProvider"])
    result = compare(reference, onnx_outputs(video, text, inputs))
    result["video"]["frame_index_agreement_lsb_noise"] = noise_agreement(video, inputs, reference)
    clip = inputs.clips[0][None]
    with torch.no_grad():
        torch_fn = lambda: merged.encode_frames(torch.from_numpy(clip))  # noqa: E731
        result["latency_ms"] = latency(torch_fn, lambda: video.run(None, {"frames": clip}), recipe.export.latency_runs)
    size = sum((out_dir / f).stat().st_size for f in (files["video"], files["text"])) / 1e6
    failures = gate_failures(name, result, recipe.export.gate(name))
    return {"file": files["video"], "size_mb": round(size, 3), "passed": not failures, "failures": failures, **result}


def check_variants(variants: list[str]) -> list[str]:
    unknown = [v for v in variants if v not in SUPPORTED]
    if unknown:
        raise VqtoolError(f"export variant(s) {unknown} not available; choose from {', '.join(SUPPORTED)}")
    return variants if "fp32" in variants else ["fp32", *variants]  # the others derive from fp32


def export_run(run_dir: Path, out_dir: Path, force: bool, variants: list[str] | None, report) -> dict:
    """Build the export dir atomically; returns the parity report (its `passed` decides the exit code)."""
    rundir.check_target(out_dir, force)
    if variants:
        check_variants(variants)
    trained, merged, recipe, info = merged_model(run_dir)
    variants = check_variants(variants or list(recipe.export.variants))
    temporal = temporal_summary(recipe, info, merged)
    if temporal:
        report.say(f"temporal side branch: {temporal['branch_params']:,} parameters, "
                   f"{100 * temporal['branch_flop_share']:.2f}% of the video encoder's FLOPs")
    with rundir.building(out_dir) as tmp:
        files = write_graphs(tmp, merged, recipe, info, variants, report)
        parity = check_parity(tmp, trained, merged, recipe, info, files, report)
        rundir.write_json(tmp / "manifest.json", manifest(recipe, info, run_dir, files, parity.pop("dim"), temporal))
        rundir.write_json(tmp / "parity.json", parity)
        rundir.write_text(tmp / "parity.md", parity_markdown(parity))
    return parity


def write_graphs(tmp: Path, merged, recipe, info, variants: list[str], report) -> dict:
    meta = graph_metadata(recipe, info)
    with report.task("exporting ONNX graphs", 2) as step:
        video = export_video_encoder(merged, tmp / "video_encoder.onnx", recipe.export.opset, meta)
        step(1)
        text = export_text_encoder(merged, tmp / "text_encoder.onnx", recipe.export.opset, info.max_text_len, meta)
        step(1)
    shutil.copyfile(info.tokenizer, tmp / "tokenizer.json")
    files = {}
    with report.task("quantizing", len(variants)) as step:
        for v in variants:
            make_variant(video, v), make_variant(text, v)
            files[v] = {"video": variant_path(video, v).name, "text": variant_path(text, v).name}
            files[v]["sha256"] = {k: sha256(tmp / files[v][k]) for k in ("video", "text")}
            step(1, v)
    return files


def check_parity(tmp: Path, trained, merged, recipe, info, files: dict, report) -> dict:
    inputs = parity_inputs(recipe, info)
    reference = torch_outputs(trained, inputs)
    merged_ref = torch_outputs(merged, inputs)
    torch.set_num_threads(recipe.export.threads)
    results = {}
    with report.task("checking parity", len(files)) as step:
        for v, f in files.items():
            results[v] = check_variant(v, f, tmp, reference, inputs, merged, recipe)
            step(1, v)
    return {
        "format": 1, "passed": all(r["passed"] for r in results.values()), "variants": results,
        "reference": "PyTorch as trained (quantized base + adapters)", "eval_clips": len(inputs.clips),
        "threads": recipe.export.threads, "selector": recipe.frames.selector, "k": recipe.frames.k,
        "merged_vs_trained": compare(reference, merged_ref)["video"] | {"note": "float32 merged PyTorch vs as trained"},
        "dim": int(reference.video.shape[1]),
    }

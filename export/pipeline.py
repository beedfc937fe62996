"""`vqtool export RUN_DIR`: merge, export both graphs, quantize, check parity, write the export dir."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import onnx
import onnxruntime as ort
import torch

from export.check_runtime import compare_variants, require_runtime, retrieval_feeds
from export.merge import merged_model
from export.onnx_export import FORMAT_VERSION, PLAIN_FORMAT, export_scorer, export_text_encoder, export_video_encoder
from export.parity import (
    ParityInputs, compare, gate_failures, latency_table, noise_agreement, onnx_outputs, torch_outputs,
)
from export.quantize import (
    FP16_KEEP_FLOAT32, STATIC_OP_TYPES, SUPPORTED, Int8Options, VariantOptions, make_variant, optimize_fp32,
    quantize_int4_plan, variant_path,
)
from export.int4_search import matmul_weights, search, search_space
from export.sensitivity import layer_errors
from export.report import parity_markdown
from export.targets import apply_target, check_target
from export.validate import graph_report
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
    return split_inputs(recipe, info, "eval", limit)


def split_inputs(recipe, info, which: str, limit: int | None = None, spread: bool = False) -> ParityInputs:
    """Readable videos of a split with their first captions: the first `limit`, or with `spread`,
    `limit` of them evenly spaced over the split."""
    clips, captions = [], []
    pairs = list(zip(*group_by_video(read_split(recipe.data, which))))
    if spread and limit is not None and len(pairs) > limit:
        pairs = [pairs[round(i * (len(pairs) - 1) / max(1, limit - 1))] for i in range(limit)]
    for video, caps in pairs[:limit]:
        try:
            clips.append(decode_video(video, recipe.frames.decode_max_frames))
            captions.append(caps[0])
        except VideoReadError:
            continue
    if not clips:
        raise DataError(f"no readable {which} video in {getattr(recipe.data, which)}; the export needs some")
    ids, mask = encode_texts(load_tokenizer(info.tokenizer, info.max_text_len), captions)
    return ParityInputs(clips, ids, mask)


def calibration_inputs(recipe, info, inputs: ParityInputs, report) -> tuple[ParityInputs, str]:
    """int8-static calibrates on training clips, so the parity check runs on clips it has not seen;
    the eval clips only if the training split cannot be read any more (said, and recorded)."""
    try:
        return split_inputs(recipe, info, "train", recipe.export.calibration_clips, spread=True), "train"
    except VqtoolError as exc:
        report.warn(f"int8-static calibrates on eval clips (the parity set): the training split is not readable ({exc})")
        return inputs, "eval"


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


def manifest(recipe, info, run_dir: Path, files: dict, dim: int, temporal: dict | None, scoring: dict | None = None) -> dict:
    graphs = graph_contracts(recipe, dim, scoring)
    return {
        "format": FORMAT_VERSION if scoring and scoring["exported"] else PLAIN_FORMAT,
        "name": recipe.name,
        "source": {"run_dir": str(Path(run_dir).resolve()), "base": recipe.model.name_or_path,
                   "family": recipe.model.family, "pooling": recipe.model.pooling,
                   "exporter": recipe.export.exporter, "target": recipe.export.target, "opset": recipe.export.opset,
                   "quantization": recipe.adapters.quantization,
                   "adapter_sha256": sha256(Path(run_dir) / "adapter" / "adapter_model.safetensors")},
        "frames": recipe.frames.model_dump(),
        "preprocessing": describe_preprocessing(info),
        "text": {"tokenizer": "tokenizer.json", "max_length": info.max_text_len},
        "graphs": graphs,
        "embedding_dim": dim,
        "temporal": temporal,
        "scoring": scoring or {"kind": "dot product of video_embeds and text_embeds"},
        "variants": files,
    }


def graph_contracts(recipe, dim: int, scoring: dict | None) -> dict:
    graphs = {
        "video": {"inputs": {"frames": "uint8 [batch, num_frames, height, width, 3] RGB"},
                  "outputs": {"video_embeds": f"float32 [batch, {dim}] L2-normalised",
                              "frame_indices": f"int64 [batch, {recipe.frames.k}]"}},
        "text": {"inputs": {"input_ids": "int64 [batch, seq]", "attention_mask": "int64 [batch, seq]"},
                 "outputs": {"text_embeds": f"float32 [batch, {dim}] L2-normalised"}},
    }
    if scoring and scoring["exported"]:
        graphs["video"]["outputs"]["video_context"] = f"float32 [batch, patches, {dim}] (the scorer's visual input)"
        graphs["text"]["outputs"]["text_features"] = f"float32 [batch, {dim}] projected, not normalised"
        graphs["scorer"] = {"inputs": {"video_embeds": f"float32 [videos, {dim}]",
                                       "video_context": f"float32 [videos, patches, {dim}]",
                                       "text_features": f"float32 [texts, {dim}]"},
                            "outputs": {"scores": "float32 [videos, texts] cosine, captions conditioned on each video"}}
    return graphs


def check_variants(variants: list[str]) -> list[str]:
    unknown = [v for v in variants if v not in SUPPORTED]
    if unknown:
        raise VqtoolError(f"export variant(s) {unknown} not available; choose from {', '.join(SUPPORTED)}")
    return variants if "fp32" in variants else ["fp32", *variants]  # the others derive from fp32


def export_run(run_dir: Path, out_dir: Path, force: bool, variants: list[str] | None, report,
               check_runtimes: list[str] = (), graph_target: str | None = None) -> dict:
    """Build the export dir atomically; returns the parity report (its `passed` decides the exit code).

    check_runtimes: second runtimes (e.g. "openvino") that run every variant on the parity clips and
    are compared with ONNX Runtime's outputs (parity.json "runtimes"; a failure fails the gate).
    graph_target: portable or cpu instead of the recipe's export.target.
    """
    if graph_target is not None:
        check_target(graph_target)
    for name in check_runtimes:
        require_runtime(name)  # before any model loads
    rundir.check_target(out_dir, force)
    if variants:
        check_variants(variants)
    trained, merged, recipe, info = merged_model(run_dir)
    if graph_target is not None:
        recipe = recipe.model_copy(update={"export": recipe.export.model_copy(update={"target": graph_target})})
    variants = check_variants(variants or list(recipe.export.variants))
    temporal = temporal_summary(recipe, info, merged)
    if temporal:
        report.say(f"temporal side branch: {temporal['branch_params']:,} parameters, "
                   f"{100 * temporal['branch_flop_share']:.2f}% of the video encoder's FLOPs")
    with rundir.building(out_dir) as tmp:
        fp32, scoring = write_fp32_graphs(tmp, merged, recipe, info, report)
        inputs = parity_inputs(recipe, info)
        refs = {"vs_trained": torch_outputs(trained, inputs), "vs_merged": torch_outputs(merged, inputs)}
        files, results = build_and_check_all(tmp, fp32, variants, refs, inputs, recipe, info, report)
        torch_latency = add_latency(tmp, files, results, trained, merged, inputs, recipe, report)
        parity = parity_report(results, torch_latency, refs, inputs, recipe)
        if scoring is not None:
            parity["scoring"] = scoring
        add_runtime_checks(parity, tmp, files, inputs, check_runtimes, recipe.export.threads, report)
        rundir.write_json(tmp / "manifest.json", manifest(recipe, info, run_dir, files, parity.pop("dim"), temporal, scoring))
        rundir.write_json(tmp / "parity.json", parity)
        rundir.write_text(tmp / "parity.md", parity_markdown(parity))
    return parity


def write_fp32_graphs(tmp: Path, merged, recipe, info, report) -> tuple[dict[str, Path], dict | None]:
    """Export the encoders (and X-CLIP's scorer) with the recipe's exporter, then ORT-optimise them
    offline (the fp32 variant); returns the graphs and the scoring summary (None: dot products)."""
    meta = graph_metadata(recipe, info) | {"vqtool.exporter": recipe.export.exporter}
    opset, exporter = recipe.export.opset, recipe.export.exporter
    if merged.conditioned:
        meta["vqtool.scoring"] = "video-conditioned (scorer graph)"
    with report.task(f"exporting ONNX graphs ({exporter})", 2 + merged.conditioned) as step:
        raw = {"video": export_video_encoder(merged, tmp / ".raw-video.onnx", opset, meta, exporter)}
        step(1)
        raw["text"] = export_text_encoder(merged, tmp / ".raw-text.onnx", opset, info.max_text_len, meta, exporter)
        step(1)
        scoring = None
        if merged.conditioned:
            raw["scorer"], scoring = scorer_graph(merged, tmp / ".raw-scorer.onnx", opset, meta, exporter, report)
            step(1)
    names = {"video": "video_encoder.onnx", "text": "text_encoder.onnx", "scorer": "scorer.onnx"}
    graphs = {kind: optimize_fp32(path, tmp / names[kind]) for kind, path in raw.items() if path is not None}
    for path in raw.values():
        if path is not None:
            path.unlink()
    if recipe.export.target != "portable":
        fused = apply_target(graphs["video"], graphs["video"], recipe.export.target, info.image_size)
        report.say(f"export target {recipe.export.target}: video encoder rewritten for ONNX Runtime's CPU provider "
                   f"({', '.join(f'{k} {v}' for k, v in fused.items())})")
    shutil.copyfile(info.tokenizer, tmp / "tokenizer.json")
    return graphs, scoring


XCLIP_SCORING = "video-conditioned: X-CLIP's prompt generator adds to each caption's text features, per video"


def scorer_graph(merged, path: Path, opset: int, meta: dict, exporter: str, report) -> tuple[Path | None, dict]:
    """X-CLIP's scorer graph, or None with the reason when it cannot be exported (the export says so,
    and parity then measures how far plain dot products are from the model's scores)."""
    try:
        return export_scorer(merged, path, opset, meta, exporter), {"kind": XCLIP_SCORING, "graph": "scorer", "exported": True}
    except Exception as exc:  # any exporter failure: report it and keep the two encoders
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        report.warn(f"X-CLIP's prompt generator could not be exported ({reason}); this export scores captions "
                    "with plain dot products, and parity.json measures the difference from the trained model's scores")
        return None, {"kind": XCLIP_SCORING, "graph": None, "exported": False, "reason": reason}


def calibration_feeds(inputs: ParityInputs, n: int, fp32: dict | None = None, threads: int = 1) -> dict[str, list[dict]]:
    """Raw uint8 clips (through the fused selector) and their captions, one feed per clip; for a
    scorer graph, the fp32 encoders' outputs on them (each clip against all calibration captions)."""
    feeds = {"video": [{"frames": c[None]} for c in inputs.clips[:n]],
             "text": [{"input_ids": inputs.ids[i:i + 1], "attention_mask": inputs.mask[i:i + 1]}
                      for i in range(min(n, len(inputs.ids)))]}
    if fp32 and "scorer" in fp32:
        video, text = session(fp32["video"], threads), session(fp32["text"], threads)
        features = text.run(None, {"input_ids": inputs.ids[:n], "attention_mask": inputs.mask[:n]})[1]
        runs = [video.run(None, f) for f in feeds["video"]]
        feeds["scorer"] = [{"video_embeds": r[0], "video_context": r[2], "text_features": features} for r in runs]
    return feeds


def variant_settings(variant: str, recipe, calibration: int, calibration_split: str = "train") -> list[dict]:
    """The settings to try for a variant, in order; only int4's `accuracy_level: auto` has more than one."""
    if variant == "int8-static":
        return [{"format": "QDQ", "calibration": "MinMax", "calibration_clips": calibration,
                 "calibration_split": calibration_split, "outputs_quantized": False,
                 "activations": "int8 symmetric", "op_types": list(STATIC_OP_TYPES), "per_channel": True}]
    if variant == "int8":
        opt = Int8Options()
        return [{"per_channel": opt.per_channel, "reduce_range": opt.reduce_range, "op_types": list(opt.op_types)}]
    if variant == "fp16":
        return [{"keep_io_types": True, "float32_ops": FP16_KEEP_FLOAT32}]
    return [{"ort_optimization": "basic"}]


def build_one(tmp: Path, fp32: dict, variant: str, setting: dict, feeds: dict) -> dict:
    files = {}
    for kind in fp32:
        opts = VariantOptions(calibration=feeds.get(kind, []))
        files[kind] = make_variant(fp32[kind], variant, opts).name
    files["sha256"] = {k: sha256(tmp / files[k]) for k in fp32}
    return files


GRAPH_KINDS = ("video", "text", "scorer")


def check_files(tmp: Path, files: dict, variant: str, refs: dict, inputs: ParityInputs, recipe) -> dict:
    kinds = [k for k in GRAPH_KINDS if k in files]
    video, text, scorer = (session(tmp / files[k], recipe.export.threads) if k in files else None for k in GRAPH_KINDS)
    got = onnx_outputs(video, text, inputs, scorer)
    result = {key: compare(ref, got) for key, ref in refs.items()}
    result["vs_trained"]["video"]["frame_index_agreement_lsb_noise"] = noise_agreement(video, inputs, refs["vs_trained"])
    graphs = {k: graph_report(tmp / files[k], variant) for k in kinds}
    failures = gate_failures(variant, result, recipe.export.gate(variant))
    failures += [f"{variant}: {p}" for g in graphs.values() for p in g["problems"]]
    sizes = {k: (tmp / files[k]).stat().st_size / 1e6 for k in kinds}
    return {"file": files["video"], "size_mb": round(sum(sizes.values()), 3),
            **{f"size_{k}_mb": round(v, 3) for k, v in sizes.items()},
            "passed": not failures, "failures": failures, "graphs": graphs, **result.pop("vs_trained"), **result}


def build_int4(tmp: Path, fp32: dict, cand, feeds: dict) -> dict:
    """One int4 try: every graph quantized by its plan in the candidate."""
    files = {kind: quantize_int4_plan(fp32[kind], variant_path(fp32[kind], "int4"), cand.plans[kind],
                                      feeds.get(kind, [])).name for kind in fp32}
    files["sha256"] = {k: sha256(tmp / files[k]) for k in fp32}
    return files


def search_int4(tmp: Path, fp32: dict, refs: dict, inputs: ParityInputs, recipe, feeds) -> tuple:
    """int4 by plan search (export/int4_search.py): the smallest plan tried that passes the gate;
    every try goes to parity.json's `tried`. With none passing, the best one is kept (and fails)."""
    cfg = recipe.export.int4
    shapes = {kind: {n: w.shape for n, w in matmul_weights(onnx.load(str(p))).items()} for kind, p in fp32.items()}
    space = search_space(cfg)
    errors = ({kind: layer_errors(p, feeds.get(kind, [])[:8], recipe.export.threads) for kind, p in fp32.items()}
              if space[3] else {kind: dict.fromkeys(s, 0.0) for kind, s in shapes.items()})

    built = {}

    def try_one(cand):
        built["last"], built["files"] = cand, build_int4(tmp, fp32, cand, feeds)
        return check_files(tmp, built["files"], "int4", refs, inputs, recipe)

    best, result, tried = search(shapes, errors, space, try_one, cfg.max_tries, cfg.symmetric)
    # the files on disk are the last try's: with none passing the kept (best) plan may be an earlier one
    files = built["files"] if built["last"] is best else build_int4(tmp, fp32, best, feeds)
    setting = best.describe()
    result["settings"], files["settings"] = setting, setting
    result["tried"] = tried
    result["matmul_error"] = {kind: dict(sorted(e.items(), key=lambda kv: -kv[1])) for kind, e in errors.items()}
    return files, result


def build_and_check(tmp: Path, fp32: dict, variant: str, refs: dict, inputs: ParityInputs, recipe, feeds,
                    calibration_split: str = "train") -> tuple:
    """Build the variant with each candidate setting until one passes its gate (or none is left)."""
    if variant == "int4":
        return search_int4(tmp, fp32, refs, inputs, recipe, feeds)
    tried = []
    for setting in variant_settings(variant, recipe, len(feeds["video"]), calibration_split):
        files = build_one(tmp, fp32, variant, setting, feeds)
        result = check_files(tmp, files, variant, refs, inputs, recipe)
        tried.append({**setting, "passed": result["passed"], "failures": result["failures"]})
        if result["passed"]:
            break
    result["settings"], files["settings"] = setting, setting
    if len(tried) > 1:
        result["tried"] = tried
    return files, result


def build_and_check_all(tmp: Path, fp32: dict, variants, refs, inputs, recipe, info, report) -> tuple[dict, dict]:
    calibration, split = inputs, "eval"
    if "int8-static" in variants or "int4" in variants:  # int4's layer errors and GPTQ: training clips too
        calibration, split = calibration_inputs(recipe, info, inputs, report)
    feeds = calibration_feeds(calibration, recipe.export.calibration_clips, fp32 if "int8-static" in variants else None,
                              recipe.export.threads)
    files, results = {}, {}
    with report.task("building and checking variants", len(variants)) as step:
        for v in variants:
            files[v], results[v] = build_and_check(tmp, fp32, v, refs, inputs, recipe, feeds, split)
            step(1, f"{v}: {'pass' if results[v]['passed'] else 'FAIL'}")
    return files, results


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def add_latency(tmp: Path, files: dict, results: dict, trained, merged, inputs, recipe, report) -> dict:
    """Video encoder on one eval clip: PyTorch eager (merged fp32, as trained) and every variant, interleaved."""
    clip = inputs.clips[0][None]
    torch.set_num_threads(recipe.export.threads)
    sessions = {v: session(tmp / f["video"], recipe.export.threads) for v, f in files.items()}
    torch_fns = {"merged_fp32": lambda: merged.encode_frames(torch.from_numpy(clip)),
                 "as_trained": lambda: trained.encode_frames(torch.from_numpy(clip))}
    onnx_fns = {v: (lambda s=s: s.run(None, {"frames": clip})) for v, s in sessions.items()}
    with torch.no_grad(), report.task("timing (interleaved)", None):
        torch_stats, lat = latency_table(torch_fns, onnx_fns, recipe.export.latency_runs)
    for v in results:
        results[v]["latency_ms"] = lat[v]
    return torch_stats


def parity_report(results: dict, torch_latency: dict, refs: dict, inputs: ParityInputs, recipe) -> dict:
    fp32_size = results["fp32"]["size_mb"]
    for r in results.values():
        r["size_vs_fp32"] = round(r["size_mb"] / fp32_size, 4)
    return {
        "format": 1, "passed": all(r["passed"] for r in results.values()), "variants": results,
        "reference": "PyTorch as trained (quantized base + adapters); vs_merged: the merged float32 PyTorch model",
        "eval_clips": len(inputs.clips), "threads": recipe.export.threads, "selector": recipe.frames.selector,
        "k": recipe.frames.k, "exporter": recipe.export.exporter, "torch_latency_ms": torch_latency,
        "merged_vs_trained": compare(refs["vs_trained"], refs["vs_merged"])["video"]
        | {"note": "float32 merged PyTorch vs as trained"},
        "dim": int(refs["vs_trained"].video.shape[1]),
    }


def add_runtime_checks(parity: dict, tmp: Path, files: dict, inputs: ParityInputs, runtimes, threads: int,
                       report) -> None:
    """Every variant under each second runtime vs ONNX Runtime, on the parity (eval) clips, which
    int8-static did not calibrate on; a disagreement fails the gate like any parity check."""
    if not runtimes:
        return
    feeds = retrieval_feeds(inputs.clips, inputs.ids, inputs.mask)
    parity["runtimes"] = {}
    for name in runtimes:
        with report.task(f"comparing {name} with onnxruntime", None):
            parity["runtimes"][name] = compare_variants(tmp, files, feeds, name, threads)
    parity["passed"] = parity["passed"] and all(r["passed"] for r in parity["runtimes"].values())

"""`vqtool export RUN_DIR` on a video-llm run: vision.onnx + embedding.onnx + decoder.onnx (+ decoder
variants), the tokenizer files, manifest.json, parity.json / parity.md; built in a temp dir, renamed at the end."""

from __future__ import annotations

import shutil
from pathlib import Path

from export.gen_export import export_decoder, export_embedding, export_vision
from export.gen_parity import (decoder_parity, eval_clips, gate_failures, metric, parity_markdown, texts,
                               torch_reference, vision_outputs, vision_parity)
from export.gen_session import GenSessions, session_options
from export.gen_spec import graphs_manifest
from export.gen_variants import DecoderQuant, make_decoder_variant
from export.merge import merged_model
from export.pipeline import sha256
from export.quantize import INT4_LEVEL_ORDER, make_variant, optimize_fp32, variant_path
from toolchain import rundir
from toolchain.errors import VqtoolError
from toolchain.models.preprocess import describe_preprocessing

GEN_VARIANTS = ("fp32", "fp16", "int8", "int4")
MANIFEST_KIND = "video-llm"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def is_video_llm_run(run_dir: Path) -> bool:
    """Whether a run dir holds a video-llm (captioning / qa) run; a broken one is left to the export's own checks."""
    try:
        from export.merge import load_run

        return load_run(run_dir)[0].model.family == "video-llm"
    except VqtoolError:
        return False


def check_gen_variants(variants: list[str]) -> list[str]:
    unknown = [v for v in variants if v not in GEN_VARIANTS]
    if unknown:
        raise VqtoolError(f"export variant(s) {unknown} not available for a video-llm decoder; choose from "
                          f"{', '.join(GEN_VARIANTS)} (export.variants in the recipe, or --variants)")
    return variants if "fp32" in variants else ["fp32", *variants]


def export_video_llm(run_dir: Path, out_dir: Path, force: bool, variants: list[str] | None, report) -> dict:
    """Build the export dir of a video-llm run; returns the parity report (`passed` decides the exit code)."""
    rundir.check_target(out_dir, force)
    if variants:
        check_gen_variants(variants)
    trained, merged, recipe, info = merged_model(run_dir)
    variants = check_gen_variants(variants or list(recipe.export.variants))
    fmt = merged.prompt_format(recipe.generation.template(recipe.task))
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(info.tokenizer))
    with rundir.building(out_dir) as tmp:
        specs, vision_file = write_graphs(tmp, merged, recipe, report)
        clips = eval_clips(recipe, tok, fmt)
        max_new = recipe.generation.max_new_tokens
        with report.task(f"PyTorch reference on {len(clips.frames)} eval clips", 2) as step:
            ref = torch_reference(merged, clips, fmt, max_new)
            step(1)
            trained_tokens = torch_reference(trained, clips, fmt, max_new)["tokens"]
            step(1)
        parity = check_all(tmp, vision_file, variants, ref, clips, fmt, tok, recipe, report)
        parity["vs_trained_identical_clips"] = sum(a == b for a, b in zip(trained_tokens, ref["tokens"]))
        parity["name"] = recipe.name
        parity["failures"] = gate_failures(parity, recipe)
        parity["passed"] = not parity["failures"]
        files = {v: {"vision": vision_file.name, "embedding": "embedding.onnx",
                     "decoder": variant_path(Path("decoder.onnx"), row.pop("file")).name}
                 for v, row in parity["variants"].items()}
        for row in parity["variants"].values():
            row.pop("tokens")
        copy_tokenizer(Path(info.tokenizer).parent, tmp)
        write_genai_files(tmp, merged, fmt, recipe)
        rundir.write_json(tmp / "manifest.json", manifest(recipe, info, run_dir, fmt, specs, files))
        rundir.write_json(tmp / "parity.json", parity)
        rundir.write_text(tmp / "parity.md", parity_markdown(parity))
    return parity


def write_genai_files(tmp: Path, merged, fmt, recipe) -> None:
    """genai_config.json: onnxruntime-genai's three-graph VLM type over this export's fp32 graphs (its
    decoder.onnx; uint8 frames go in as `pixel_values`, with `num_image_tokens` = the prompt's placeholders)."""
    from export.gen_export import decoder_shape
    from export.genai import genai_vlm_config, write_genai_config

    heads = merged.hf.config.text_config.num_attention_heads
    context = max(256, fmt.video_tokens + 4 * recipe.generation.max_new_tokens + 128)
    write_genai_config(tmp, genai_vlm_config(decoder_shape(merged.hf), heads, [fmt.eos_token_id], fmt.eos_token_id,
                                             fmt.pad_token_id, context, recipe.export.threads))


def write_graphs(tmp: Path, merged, recipe, report) -> tuple[dict, Path]:
    """The three fp32 graphs (ORT-optimised) and the vision graph's own variant."""
    meta = {"vqtool.family": "video-llm", "vqtool.frames.k": recipe.frames.k, "vqtool.frames.selector": recipe.frames.selector}
    exporter = recipe.export.exporter
    with report.task(f"exporting vision / embedding / decoder graphs ({exporter})", 3) as step:
        specs = {"vision": export_vision(merged, tmp / "vision.onnx", meta, exporter)}
        step(1)
        specs["embedding"] = export_embedding(merged.hf, tmp / "embedding.onnx", int(merged.config.video_token_id), meta, exporter)
        step(1)
        specs["decoder"] = export_decoder(merged.hf, tmp / "decoder.onnx", meta, exporter)
        step(1)
    for name in ("vision", "embedding"):
        optimize_fp32(tmp / f"{name}.onnx", tmp / f"{name}.onnx")
    vision = make_variant(tmp / "vision.onnx", recipe.export.vision_variant)
    return specs, vision


def check_all(tmp: Path, vision_file: Path, variants: list[str], ref: dict, clips, fmt, tok, recipe, report) -> dict:
    import onnxruntime as ort

    opts = session_options(recipe.export.threads)
    vis_session = ort.InferenceSession(str(vision_file), opts, providers=["CPUExecutionProvider"])
    vis = vision_outputs(vis_session, clips)
    name, torch_value = metric(recipe.task, clips, texts(tok, fmt, ref["tokens"]))
    parity = {"kind": MANIFEST_KIND, "task": recipe.task, "clips": len(clips.frames), "metric": name,
              "torch_metric": torch_value, "vision": {"variant": recipe.export.vision_variant, **vision_parity(vis, ref)},
              "variants": {}}
    raw = tmp / "decoder.onnx"
    quant = [v for v in variants if v != "fp32"]
    with report.task("decoder variants: build and check", len(variants)) as step:
        for variant in quant:  # from the raw export, before fp32 is optimised in place
            parity["variants"][variant] = build_and_check(raw, variant, vis, ref, clips, fmt, tok, recipe, name, torch_value)
            step(1)
        make_decoder_variant(raw, "fp32")
        parity["variants"] = {"fp32": check_decoder(raw, "fp32", vis, ref, clips, fmt, tok, recipe, name, torch_value),
                              **parity["variants"]}
        step(1)
    return parity


def build_and_check(raw: Path, variant: str, vis, ref, clips, fmt, tok, recipe, name, torch_value) -> dict:
    """A quantized decoder; int4 with accuracy_level auto tries level 4 (int8 compute), then 1, and keeps
    the first that passes its gate."""
    cfg = recipe.export.int4
    levels = list(INT4_LEVEL_ORDER) if cfg.accuracy_level == "auto" else [cfg.accuracy_level]
    levels = levels if variant == "int4" else levels[:1]
    tried = []
    for level in levels:
        opt = DecoderQuant(block_size=cfg.block_size, symmetric=cfg.symmetric, accuracy_level=int(level))
        make_decoder_variant(raw, variant, opt)
        row = check_decoder(raw, variant, vis, ref, clips, fmt, tok, recipe, name, torch_value)
        gate = recipe.export.gen_gate(variant)
        ok = row["teacher_forced_top1"] >= gate.min_top1 and row["metric_drop"] <= gate.max_metric_drop
        tried.append({"accuracy_level": int(level), "passed": ok})
        if ok:
            break
    if variant == "int4":
        row |= {"accuracy_level": tried[-1]["accuracy_level"], "accuracy_levels_tried": tried,
                "block_size": cfg.block_size, "symmetric": cfg.symmetric, "lm_head_bits": DecoderQuant().lm_head_bits}
    return row


def check_decoder(raw: Path, variant: str, vis, ref, clips, fmt, tok, recipe, name, torch_value) -> dict:
    path = variant_path(raw, variant)
    sessions = GenSessions(path, raw.with_name("embedding.onnx"), threads=recipe.export.threads)
    row = decoder_parity(sessions, vis["features"], ref, clips, fmt, recipe.generation.max_new_tokens)
    value = metric(recipe.task, clips, texts(tok, fmt, row["tokens"]))[1]
    return {**row, "file": variant, "file_mb": path.stat().st_size / 1e6, "metric": value,
            "metric_drop": torch_value - value}


def copy_tokenizer(src: Path, dst: Path) -> list[str]:
    copied = [n for n in TOKENIZER_FILES if (src / n).is_file()]
    for n in copied:
        shutil.copyfile(src / n, dst / n)
    return copied


def manifest(recipe, info, run_dir: Path, fmt, specs: dict, files: dict) -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(info.tokenizer))
    special = {"video": {"id": fmt.video_token_id, "text": tok.id_to_token(fmt.video_token_id)},
               "eos": {"id": fmt.eos_token_id, "text": tok.id_to_token(fmt.eos_token_id)},
               "pad": {"id": fmt.pad_token_id, "text": tok.id_to_token(fmt.pad_token_id)}}
    return {
        "format": 1, "kind": MANIFEST_KIND, "task": recipe.task, "name": recipe.name,
        "source": {"run_dir": str(Path(run_dir).resolve()), "base": recipe.model.name_or_path,
                   "family": recipe.model.family, "exporter": recipe.export.exporter,
                   "quantization": recipe.adapters.quantization,
                   "adapter_sha256": sha256(Path(run_dir) / "adapter" / "adapter_model.safetensors")},
        "frames": recipe.frames.model_dump(),
        "preprocessing": describe_preprocessing(info),
        "prompt": fmt.to_json() | {"question_slot": "{question}" in fmt.template},
        "special_tokens": special,
        "generation": {"max_new_tokens": recipe.generation.max_new_tokens, "greedy": True},
        "text": {"tokenizer": "tokenizer.json", "files": [n for n in TOKENIZER_FILES
                                                          if (Path(info.tokenizer).parent / n).is_file()]},
        "vision_variant": recipe.export.vision_variant,
        "generative": graphs_manifest(specs, files),
        "variants": files,
    }

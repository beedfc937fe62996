"""What `vqtool bench generate` times: our decoder variants, onnxruntime-genai on them, its builder's graphs.

Each candidate is a `run(prompt_ids, new_tokens, on_token)` -> token ids; the timing loop does not
know which runtime is behind it.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from export.gen_export import decoder_shape, export_decoder, export_embedding
from export.gen_session import GenSessions
from export.gen_variants import DecoderQuant, make_decoder_variant
from export.generate import generate

Runner = Callable[[list[int], int, Callable], list[int]]


@dataclass
class Candidate:
    name: str
    run: Runner
    files: list[Path]  # what a device has to hold (decoder only; the embedding graph is shared by all)
    rss: list[str] | None = None  # argv of a fresh process that loads it and generates, for the peak RSS


def torch_runner(model, threads: int) -> Runner:
    def run(ids, new_tokens, on_token):
        torch.set_num_threads(threads)
        streamer = TorchStreamer(on_token, len(ids))
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, streamer=streamer, pad_token_id=0)
        return out[0, len(ids):].tolist()
    return run


class TorchStreamer:
    """transformers' streamer protocol: put() gets the prompt first, then each new token."""

    def __init__(self, on_token, prompt_len: int):
        self.on_token, self.step, self.prompt = on_token, 0, True

    def put(self, value):
        if self.prompt:
            self.prompt = False
            return
        self.on_token(self.step, value.reshape(-1).tolist())
        self.step += 1

    def end(self):
        pass


def ours_runner(sessions: GenSessions, sessions_eos: list[int]) -> Runner:
    def run(ids, new_tokens, on_token):
        # EOS suppressed until new_tokens, as torch's min_new_tokens and genai's min_length do
        return generate(sessions, ids, max_new_tokens=new_tokens, on_token=on_token, eos_ids=sessions_eos,
                        min_new_tokens=new_tokens)[0]
    return run


def genai_runner(model_dir: Path, threads: int) -> Runner:
    import onnxruntime_genai as og

    from export.genai import genai_generate

    set_genai_threads(model_dir, threads)
    model = og.Model(str(model_dir))

    def run(ids, new_tokens, on_token):
        return genai_generate(model, ids, new_tokens, on_token, min_new_tokens=new_tokens)
    return run


def set_genai_threads(model_dir: Path, threads: int) -> None:
    import json

    path = Path(model_dir) / "genai_config.json"
    cfg = json.loads(path.read_text())
    cfg["model"]["decoder"].setdefault("session_options", {}).update(intra_op_num_threads=threads, inter_op_num_threads=1)
    path.write_text(json.dumps(cfg, indent=2))


def export_ours(model, out: Path, variants: list[str], gguf: Path | None, quant: DecoderQuant, report) -> dict[str, Path]:
    """decoder.onnx (+ variants) and embedding.onnx of `model` under `out`; int4-gguf when `gguf` is given."""
    report.say("exporting embedding.onnx and decoder.onnx (dynamo exporter)")
    export_decoder(model, out / "decoder.onnx")
    export_embedding(model, out / "embedding.onnx")
    if gguf is not None and "int4-gguf" in variants:
        from export.gguf_int4 import matmul_sources, read_gguf_blocks

        quant.gguf_blocks, quant.gguf_sources = read_gguf_blocks(gguf, model), matmul_sources(model)
    files = {}
    with report.task("decoder variants", len(variants)) as step:
        for variant in ["fp32", *[v for v in variants if v != "fp32"]]:
            if variant == "int4-gguf" and gguf is None:
                continue
            files[variant] = make_decoder_variant(out / "decoder.onnx", variant, quant)
            step(1, variant)
    return files


def export_cpu_target(model, out: Path, quant: DecoderQuant, report) -> dict[str, Path]:
    """The same decoder with ONNX Runtime's CPU fusions (export_decoder target "cpu"): fp32 and int4."""
    report.say("exporting the cpu-target decoder (RotaryEmbedding / SkipSimplifiedLayerNormalization fused)")
    export_decoder(model, out / "decoder.onnx", target="cpu")
    return {f"cpu-target {v}": make_decoder_variant(out / "decoder.onnx", v, quant) for v in ("fp32", "int4")}


def genai_dir_for(model, embedding: Path, decoder: Path, out: Path, threads: int, eos: list[int]) -> Path:
    """A genai model dir running our `decoder` (composed with the embedding graph: genai feeds input_ids)."""
    from export.genai import compose_ids_decoder, genai_config, write_genai_config

    out.mkdir(parents=True, exist_ok=True)
    compose_ids_decoder(embedding, decoder, out / "decoder_ids.onnx")
    cfg = model.config.get_text_config(decoder=True)
    write_genai_config(out, genai_config(decoder_shape(model), cfg.num_attention_heads, "decoder_ids.onnx", eos,
                                         cfg.bos_token_id or 0, 0, getattr(cfg, "max_position_embeddings", 2048), threads))
    return out


def run_builder(hf_dir: Path, out: Path, precision: str, block_size: int, accuracy_level: int) -> Path:
    """onnxruntime-genai's model builder, offline from a local transformers dir."""
    extra = ["--extra_options", f"block_size={block_size}", f"accuracy_level={accuracy_level}"] if precision == "int4" else []
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out), "-p", precision,
           "-e", "cpu", "-c", str(out.parent / "builder-cache"), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"model builder ({precision}) failed: {done.stderr[-2000:]}")
    return out


def onnx_files(path: Path) -> list[Path]:
    """A graph and its external data files."""
    if path.is_dir():
        return [p for p in path.iterdir() if p.name.startswith("model.onnx")]
    return [p for p in path.parent.iterdir() if p.name == path.name or p.name.startswith(path.name + ".")]


def our_candidates(files: dict[str, Path], embedding: Path, threads: int, eos: list[int]) -> list[Candidate]:
    out = []
    for variant, path in files.items():
        sessions = GenSessions(path, embedding, threads=threads)
        out.append(Candidate(f"ours {variant}", ours_runner(sessions, eos), onnx_files(path),
                             ["ours", str(path), str(embedding), str(threads)]))
    return out

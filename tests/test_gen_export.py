"""embedding.onnx / decoder.onnx against PyTorch: the merge for batch > 1 and text-only steps, past 0, seq 1."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from gen_models import VIDEO_TOKEN, exported, video_features

from export.gen_export import export_decoder
from export.gen_session import GenSessions


@pytest.fixture(scope="module")
def llava_graphs():
    return exported("llava")


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_embedding_merges_video_tokens_for_a_batch_and_text_steps(llava_graphs):
    model, out = llava_graphs
    _, feats = video_features(model, batch=2)
    per_video = feats.shape[0] // 2
    ids = torch.randint(3, 90, (2, 30), generator=torch.Generator().manual_seed(1))
    ids[0, 2:2 + per_video] = VIDEO_TOKEN  # the two videos at different offsets in their rows
    ids[1, 9:9 + per_video] = VIDEO_TOKEN
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        ref = embeds.masked_scatter((ids == VIDEO_TOKEN)[..., None].expand_as(embeds), feats)
    graph = session(out / "embedding.onnx")
    got = graph.run(None, {"input_ids": ids.numpy(), "image_features": feats.numpy()})[0]
    assert np.abs(got - ref.numpy()).max() < 1e-6
    assert np.abs(got - embeds.numpy()).max() > 1e-3  # the features really went in
    step = np.array([[5], [7]])
    got = graph.run(None, {"input_ids": step, "image_features": np.zeros((0, 64), np.float32)})[0]
    assert np.array_equal(got, model.get_input_embeddings()(torch.from_numpy(step)).detach().numpy())


def test_graph_io_names_and_dynamic_axes(llava_graphs):
    _, out = llava_graphs
    dec = session(out / "decoder.onnx")
    names = [i.name for i in dec.get_inputs()]
    assert names[:4] == ["inputs_embeds", "attention_mask", "position_ids", "past_key_values.0.key"]
    assert [o.name for o in dec.get_outputs()][:3] == ["logits", "present.0.key", "present.0.value"]
    assert dec.get_inputs()[0].shape == ["batch", "sequence", 64]
    assert dec.get_inputs()[3].shape == ["batch", 2, "past_sequence", 16]


@pytest.mark.parametrize("batch,past,seq", [(1, 0, 5), (2, 6, 1), (3, 3, 4)])
def test_decoder_steps_match_a_full_pytorch_forward(llava_graphs, batch, past, seq):
    """Prefill `past` tokens in ONNX, then `seq` more with that cache: logits equal PyTorch's on the whole sequence."""
    model, out = llava_graphs
    gen = GenSessions(out / "decoder.onnx", out / "embedding.onnx", threads=1)
    ids = torch.randint(3, 90, (batch, past + seq), generator=torch.Generator().manual_seed(past))
    mask = np.ones((batch, past + seq), np.int64)
    with torch.no_grad():
        ref = model(input_ids=ids).logits[:, -1].numpy()
    cache = gen.empty_past(batch)
    if past:
        _, cache = gen.step(gen.embed(ids[:, :past].numpy(), None), mask[:, :past],
                            np.tile(np.arange(past), (batch, 1)), cache)
        assert cache[0].shape() == [batch, 2, past, 16]
    logits, cache = gen.step(gen.embed(ids[:, past:].numpy(), None), mask, np.tile(np.arange(past, past + seq), (batch, 1)), cache)
    assert cache[0].shape() == [batch, 2, past + seq, 16]
    assert np.abs(logits - ref).max() < 1e-4


def test_decoder_of_a_plain_causal_lm():
    model, out = exported("llama")
    gen = GenSessions(out / "decoder.onnx", out / "embedding.onnx")
    assert gen.video_token_id == -1  # nothing to merge in a text-only model
    ids = np.array([[4, 8, 15, 16, 23, 42]])
    logits, _ = gen.step(gen.embed(ids, None), np.ones_like(ids), np.arange(6)[None], gen.empty_past(1))
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids)).logits[:, -1].numpy()
    assert np.abs(logits - ref).max() < 1e-4


def test_cpu_target_fuses_ort_ops_and_keeps_the_tokens(tmp_path):
    import onnx

    from export.generate import generate

    model, out = exported("llama")
    export_decoder(model, tmp_path / "decoder.onnx", target="cpu")
    fused = {n.op_type for n in onnx.load(str(tmp_path / "decoder.onnx")).graph.node if n.domain == "com.microsoft"}
    assert {"RotaryEmbedding", "SkipSimplifiedLayerNormalization"} <= fused
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    want = generate(GenSessions(out / "decoder.onnx", out / "embedding.onnx"), prompts, max_new_tokens=10)
    assert generate(GenSessions(tmp_path / "decoder.onnx", out / "embedding.onnx"), prompts, max_new_tokens=10) == want

"""The torch-free generation loop: token-for-token equal to transformers' generate(do_sample=False), bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import BLOCK_TORCH, REPO
from gen_models import EOS, VIDEO_TOKEN, exported, video_features

from export.gen_export import decoder_shape
from export.gen_session import GenSessions
from export.generate import generate
from toolchain.errors import VqtoolError

PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]


def torch_generate(model, prompts, max_new_tokens, num_beams=1, eos=None, **kwargs) -> list[list[int]]:
    """transformers' generate on the same left-padded batch, trimmed after each row's EOS."""
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             num_beams=num_beams, pad_token_id=0, eos_token_id=eos, **kwargs)
    rows = []
    for row in out[:, width:].tolist():
        rows.append(row[:row.index(eos) + 1] if eos is not None and eos in row else row)
    return rows


@pytest.fixture(scope="module")
def llama():
    model, out = exported("llama")
    return model, out, GenSessions(out / "decoder.onnx", out / "embedding.onnx", threads=1)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_tokens_equal_pytorch_for_a_padded_batch(llama, num_beams):
    model, _, sessions = llama
    ours = generate(sessions, PROMPTS, max_new_tokens=12, num_beams=num_beams)
    assert ours == torch_generate(model, PROMPTS, 12, num_beams, eos=EOS)
    assert all(len(r) == 12 for r in ours)


def test_stops_at_eos_and_streams_each_token(llama):
    model, _, sessions = llama
    free = generate(sessions, PROMPTS[:1], max_new_tokens=10)[0]
    eos = free[3]  # a token the model really emits: generation must end there
    seen = []
    ours = generate(sessions, PROMPTS[:1], max_new_tokens=10, eos_ids=[eos], on_token=lambda step, ids: seen.append(ids[0]))
    assert ours[0] == free[:free.index(eos) + 1] == torch_generate(model, PROMPTS[:1], 10, eos=eos)[0]
    assert seen == ours[0]


def test_video_features_fill_their_placeholders_like_pytorch():
    model, out = exported("llava")
    sessions = GenSessions(out / "decoder.onnx", out / "embedding.onnx", threads=1)
    pixels, feats = video_features(model, batch=2)
    n = feats.shape[0] // 2
    prompts = [[5, 6] + [VIDEO_TOKEN] * n + [7, 8], [9] + [VIDEO_TOKEN] * n + [10, 11, 12]]
    ours = generate(sessions, prompts, feats.numpy(), max_new_tokens=8)
    assert ours == torch_generate(model, prompts, 8, pixel_values_videos=pixels)
    text_only = generate(sessions, [5, 6, 7], max_new_tokens=8)
    assert text_only == torch_generate(model, [[5, 6, 7]], 8)


@pytest.mark.parametrize("kwargs,message", [
    ({"prompt_ids": []}, "prompt_ids is empty"),
    ({"prompt_ids": [[1, 2], []]}, "prompt 1 is empty"),
    ({"prompt_ids": [1, 500]}, "outside the decoder's vocabulary"),
    ({"max_new_tokens": 0}, "max_new_tokens must be a whole number >= 1"),
    ({"num_beams": 0}, "num_beams must be"),
    ({"image_features": np.zeros((2, 64), np.float64)}, "must be a float32 numpy array"),
    ({"image_features": np.zeros((2, 64), np.float32)}, "has 2 rows but the prompt has 0"),
    ({"image_features": np.zeros((2, 7), np.float32)}, "shape [num_tokens, 64]"),
])
def test_bad_inputs_give_clear_errors(llama, kwargs, message):
    args = {"prompt_ids": [5, 6, 7], "max_new_tokens": 4} | kwargs
    with pytest.raises(VqtoolError, match=message.replace("[", r"\[").replace("]", r"\]")):
        generate(llama[2], **args)


def test_generation_runs_without_torch(llama):
    _, out, sessions = llama
    want = generate(sessions, PROMPTS, max_new_tokens=6)
    code = BLOCK_TORCH + (
        "import json\nfrom export.gen_session import GenSessions\nfrom export.generate import generate\n"
        f"s = GenSessions({str(out / 'decoder.onnx')!r}, {str(out / 'embedding.onnx')!r}, threads=1)\n"
        f"print(json.dumps(generate(s, {PROMPTS!r}, max_new_tokens=6)))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == want


def test_onnxruntime_genai_gives_the_same_tokens(llama):
    og = pytest.importorskip("onnxruntime_genai")  # the `genai` extra (make setup installs it)
    from export.genai import compose_ids_decoder, genai_config, genai_generate, write_genai_config

    model, out, sessions = llama
    out = out / "genai"
    out.mkdir(exist_ok=True)
    compose_ids_decoder(out.parent / "embedding.onnx", out.parent / "decoder.onnx", out / "decoder_ids.onnx")
    write_genai_config(out, genai_config(decoder_shape(model), model.config.num_attention_heads, "decoder_ids.onnx",
                                         [EOS], 1, 0, 256, threads=1))
    ours = generate(sessions, PROMPTS[0], max_new_tokens=12, eos_ids=[EOS])[0]
    assert genai_generate(og.Model(str(out)), PROMPTS[0], 12) == ours


class StandInVision(torch.nn.Module):
    """A vision graph for the genai test only: float pixels -> get_video_features (the uint8 vision.onnx
    with the frame selector is the fine-tuning export's)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        out = self.model.model.get_video_features(pixel_values, vision_feature_layer=-1,
                                                  vision_feature_select_strategy="full")
        return out.pooler_output.flatten(0, 1)


def test_onnxruntime_genai_runs_the_three_graphs_as_a_vlm(tmp_path):
    og = pytest.importorskip("onnxruntime_genai")
    import shutil

    from export.genai import genai_generate, genai_vlm_config, write_genai_config

    model, out = exported("llava")
    for name in ("decoder.onnx", "embedding.onnx"):
        shutil.copy(out / name, tmp_path / name)
    pixels, feats = video_features(model, batch=1)
    with torch.no_grad():
        torch.onnx.export(StandInVision(model).eval(), (pixels,), str(tmp_path / "vision.onnx"), dynamo=False,
                          input_names=["pixel_values"], output_names=["image_features"], opset_version=18)
    text = model.config.text_config
    write_genai_config(tmp_path, genai_vlm_config(decoder_shape(model), text.num_attention_heads, [EOS], 1, 0, 256, 1))
    genai = og.Model(str(tmp_path))
    sessions = GenSessions(tmp_path / "decoder.onnx", tmp_path / "embedding.onnx", threads=1)
    n = feats.shape[0]
    prompt = [5, 6] + [VIDEO_TOKEN] * n + [7, 8]
    inputs = {"pixel_values": pixels.numpy(), "num_image_tokens": np.array([n], np.int64)}
    assert genai_generate(genai, prompt, 10, named_inputs=inputs) == generate(sessions, prompt, feats.numpy(), 10, eos_ids=[EOS])[0]
    assert genai_generate(genai, [5, 6, 7], 10) == generate(sessions, [5, 6, 7], max_new_tokens=10, eos_ids=[EOS])[0]


def test_generate_text_streams_what_it_returns(llama):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from export.generate import generate_text

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(96)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    pieces = []
    text = generate_text(llama[2], tok, "w5 w6 w7", max_new_tokens=6, on_text=pieces.append)
    assert text.split() == [f"w{i}" for i in generate(llama[2], [5, 6, 7], max_new_tokens=6)[0]]
    assert "".join(pieces) == text
    with pytest.raises(VqtoolError, match="prompt is empty"):
        generate_text(llama[2], tok, "  ")


def test_min_new_tokens_keeps_eos_out_like_pytorch(llama):
    model, _, sessions = llama
    free = generate(sessions, PROMPTS[:1], max_new_tokens=10)[0]
    eos = free[3]
    ours = generate(sessions, PROMPTS[:1], max_new_tokens=10, eos_ids=[eos], min_new_tokens=6)[0]
    assert ours == torch_generate(model, PROMPTS[:1], 10, eos=eos, min_new_tokens=6)[0]
    assert len(ours) >= 6 and eos not in ours[:6]

"""Model families end to end: tiny clip (transformer pooling), xclip and dual-encoder bases saved with
save_pretrained, fine-tuned on the fixture datasets of different formats, exported and parity-checked."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import SHIPPED_RECIPE, TINY_OVERRIDES
from dataset_fixtures import data_settings, materialize
from toolchain.errors import RecipeError
from toolchain.models.families import save_tiny_base
from toolchain.progress import Reporter
from toolchain.recipe import load_recipe

# family, pooling, dataset format. The dual-encoder family on the MSR-VTT fixture runs in
# test_real_weights.py (real MiniLM text tower), and jsonl is the shared tiny_run's format: with
# these, every family and every format is fine-tuned and exported once.
CASES = {
    "clip-transformer": ("clip", "transformer", "csv"),
    "xclip": ("xclip", "mean", "vatex"),
}


def family_recipe(base, fmt_root, fmt, family, pooling, *extra):
    sets = [*TINY_OVERRIDES, *data_settings(fmt, fmt_root), f"model.family={family}",
            f"model.name_or_path={base}", f"model.pooling={pooling}", "export.variants=[fp32]", *extra]
    return load_recipe(SHIPPED_RECIPE, sets)


@pytest.fixture(scope="module", params=list(CASES))
def family_run(request, tmp_path_factory):
    from export.pipeline import export_run
    from toolchain.train import finetune

    family, pooling, fmt = CASES[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    base = save_tiny_base(family, tmp / "base", frames=4)
    recipe = family_recipe(base, materialize(fmt, tmp / "data"), fmt, family, pooling)
    result = finetune(recipe, tmp / "run", False, Reporter(quiet=True))
    parity = export_run(tmp / "run", tmp / "export", False, None, Reporter(quiet=True))
    return request.param, tmp, result, parity


@pytest.mark.slow
def test_family_finetunes_exports_and_passes_parity(family_run):
    name, tmp, result, parity = family_run
    assert result["finetuned"]["videos"] == 3 and result["steps"] == 4
    assert parity["passed"], parity["variants"]["fp32"]["failures"]
    assert parity["variants"]["fp32"]["video"]["min_cosine"] > 0.9999
    assert parity["eval_clips"] == 3
    manifest = json.loads((tmp / "export" / "manifest.json").read_text())
    assert manifest["embedding_dim"] == 64


@pytest.mark.slow
@pytest.mark.parametrize("family_run", ["clip-transformer"], indirect=True)
def test_transformer_pooling_trains_and_is_saved(family_run):
    name, tmp, _, _ = family_run
    state = load_file(str(tmp / "run" / "adapter" / "pooling.safetensors"))
    # zero at init; four steps of training moved the position table and the residual branches
    assert state["position"].abs().max() > 0
    assert state["encoder.layers.0.linear2.weight"].abs().max() > 0


@pytest.mark.slow
@pytest.mark.parametrize("family_run", ["xclip"], indirect=True)
def test_xclip_trains_its_own_video_layers_and_its_graph_matches_torch(family_run):
    """X-CLIP pools with its own multi-frame transformer: no pooling file, its LoRA there trained, and the
    exported graph gives the merged model's embedding on a clip it never saw."""
    import numpy as np
    import onnxruntime as ort

    from export.merge import merged_model

    name, tmp, _, _ = family_run
    assert not (tmp / "run" / "adapter" / "pooling.safetensors").exists()
    lora = load_file(str(tmp / "run" / "adapter" / "adapter_model.safetensors"))
    mit = [k for k in lora if ".mit." in k and "lora_B" in k]
    assert mit and max(float(lora[k].abs().max()) for k in mit) > 0, "X-CLIP's mit LoRA did not train"
    _, merged, recipe, _ = merged_model(tmp / "run")
    clip = np.random.default_rng(5).integers(0, 256, (9, 40, 52, 3), dtype=np.uint8)
    session = ort.InferenceSession(str(tmp / "export" / "video_encoder.onnx"), providers=["CPUExecutionProvider"])
    emb, idx = session.run(["video_embeds", "frame_indices"], {"frames": clip[None]})  # X-CLIP adds video_context
    with torch.no_grad():
        ref, ref_idx = merged.encode_frames(torch.from_numpy(clip)[None])
    assert idx.shape == (1, recipe.frames.k) and np.array_equal(idx, ref_idx.numpy())
    assert float((emb * ref.numpy()).sum()) > 0.9999 and np.abs(emb - ref.numpy()).max() < 1e-4


def test_transformer_pooling_starts_as_mean():
    from toolchain.models.pooling import TemporalTransformer

    feats = torch.randn(3, 4, 64)
    assert torch.allclose(TemporalTransformer(64, 4)(feats), feats.mean(dim=1), atol=1e-6)


def test_xclip_k_must_match_its_frame_count(tmp_path):
    from toolchain.models.assemble import model_info

    base = save_tiny_base("xclip", tmp_path / "x", frames=4)
    recipe = family_recipe(base, tmp_path, "jsonl", "xclip", "mean", "frames.k=6")
    with pytest.raises(RecipeError, match=r"frames.k is 6, but the xclip base .* vision_config.num_frames = 4 frames; set frames.k: 4"):
        model_info(recipe)


def test_family_must_match_the_checkpoint(tmp_path):
    from toolchain.models.build import base_info

    base = save_tiny_base("clip", tmp_path / "c")
    with pytest.raises(RecipeError, match="model.family is xclip, but .* has model_type 'clip'; set model.family: clip"):
        base_info(str(base), "xclip")
    with pytest.raises(RecipeError, match="xclip pools frames with its own"):
        load_recipe(SHIPPED_RECIPE, ["model.family=xclip", "model.pooling=transformer"])


def test_cli_composes_a_dual_encoder_from_two_checkpoints(tmp_path, run_cli):
    from toolchain.models.build import base_info
    from toolchain.models.families import compose_dual_encoder, save_tiny_text, save_tiny_vision

    vision, text = save_tiny_vision(tmp_path / "v"), save_tiny_text(tmp_path / "t")
    out = tmp_path / "dual"
    done = run_cli("base", "dual-encoder", vision, text, out, "--projection-dim", "32")
    assert done.returncode == 0, done.stderr
    info = base_info(str(out), "dual-encoder")
    assert info.tokenizer.read_bytes() == (text / "tokenizer.json").read_bytes() and info.resize_shortest == 36
    assert json.loads((out / "config.json").read_text())["projection_dim"] == 32
    (text / "tokenizer.json").unlink()
    with pytest.raises(RecipeError, match="has no tokenizer.json"):
        compose_dual_encoder(vision, text, tmp_path / "dual2")

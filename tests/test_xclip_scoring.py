"""X-CLIP is scored the way XCLIPModel.forward scores it (captions conditioned on each video by the
prompt generator) in training, evaluation, the PyTorch reference, the exported scorer graph and the
torch-free runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import SHIPPED_RECIPE, TINY_OVERRIDES
from dataset_fixtures import data_settings, materialize
from toolchain.models.families import save_tiny_base


@pytest.fixture(scope="module")
def xclip_base(tmp_path_factory):
    return save_tiny_base("xclip", tmp_path_factory.mktemp("xclip") / "base", frames=4)


def test_scores_equal_xclip_forward_logits_and_differ_from_plain_dot_products(xclip_base):
    from transformers import XCLIPModel

    from toolchain.models.video_clip import VideoCLIP

    clip = XCLIPModel.from_pretrained(str(xclip_base)).eval()
    model = VideoCLIP(clip, 4, "uniform", 32, (0.5,) * 3, (0.5,) * 3, family="xclip")
    torch.manual_seed(0)
    pixels = torch.randn(3, 4, 3, 32, 32)
    ids = torch.randint(4, 20, (5, 16))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        logits = clip(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits_per_video  # [3 videos, 5 texts]
        video, context = model.encode_video_parts(pixels, torch.zeros(3, 4))
        text = model.encode_text_features(ids, mask)
        ours = model.scores(video, context, text)
    torch.testing.assert_close(ours * clip.logit_scale.exp(), logits, rtol=1e-5, atol=1e-5)
    plain = video @ model.encode_text(ids, mask).T
    assert (plain - ours).abs().max() > 1e-2  # the prompt generator changes the scores
    assert model.conditioned and torch.equal(model.encode_pixels(pixels, torch.zeros(3, 4)), video)


@pytest.fixture(scope="module")
def xclip_export(xclip_base, tmp_path_factory):
    from export.pipeline import export_run
    from toolchain.progress import Reporter
    from toolchain.recipe import load_recipe
    from toolchain.train import finetune

    tmp = tmp_path_factory.mktemp("xclip-run")
    sets = [*TINY_OVERRIDES, *data_settings("vatex", materialize("vatex", tmp / "data")), "model.family=xclip",
            f"model.name_or_path={xclip_base}", "export.variants=[fp32,int8]"]
    recipe = load_recipe(SHIPPED_RECIPE, sets)
    finetune(recipe, tmp / "run", False, Reporter(quiet=True))
    parity = export_run(tmp / "run", tmp / "export", False, None, Reporter(quiet=True))
    return tmp, parity


@pytest.mark.slow
def test_xclip_export_scores_like_the_trained_model(xclip_export, run_cli):
    from export.merge import load_as_trained, load_run
    from export.parity import torch_outputs
    from export.pipeline import parity_inputs
    from export.runtime import VideoTextRuntime

    tmp, parity = xclip_export
    assert parity["passed"], {v: r["failures"] for v, r in parity["variants"].items()}
    assert parity["scoring"]["exported"] and parity["scoring"]["graph"] == "scorer"
    fp32 = parity["variants"]["fp32"]
    assert fp32["scores"]["conditioned_onnx"] and fp32["scores"]["max_abs_diff"] < 1e-4
    assert fp32["retrieval"]["delta"] == 0 and fp32["retrieval"]["t2v_top1_agreement"] == 1.0
    manifest = json.loads((tmp / "export" / "manifest.json").read_text())
    assert manifest["format"] == 2 and all("scorer" in f for f in manifest["variants"].values())
    # The prompt generator was trained: its LoRA B matrices start at zero and moved.
    adapter = load_file(str(tmp / "run" / "adapter" / "adapter_model.safetensors"))
    moved = [k for k, v in adapter.items() if "prompts_generator" in k and "lora_B" in k and v.abs().max() > 0]
    assert moved, sorted(k for k in adapter if "prompts_generator" in k)

    recipe, info = load_run(tmp / "run")
    inputs = parity_inputs(recipe, info)
    trained = torch_outputs(load_as_trained(tmp / "run", recipe, info), inputs)
    rt = VideoTextRuntime(tmp / "export", variant="fp32", providers="cpu")
    captions = _captions(recipe, info)
    got = rt.scores(list(inputs.clips), captions)
    np.testing.assert_allclose(got, trained.scores, atol=1e-4)
    assert np.array_equal(got.argmax(axis=0), trained.scores.argmax(axis=0))
    plain = np.concatenate([rt.encode_video(c)[0] for c in inputs.clips]) @ rt.encode_text(captions).T
    assert np.abs(plain - got).max() > 1e-3  # the runtime really runs the scorer, not dot products

    videos = sorted((tmp / "data" / "videos").glob("*.mp4"))[:2]
    out = run_cli("infer", tmp / "export", *[a for v in videos for a in ("--video", v)], "--text", captions[0],
                  "--text", captions[1], "--json")
    assert out.returncode == 0, out.stderr
    cli_scores = np.array(json.loads(out.stdout)["scores"])
    np.testing.assert_allclose(cli_scores, rt.scores(videos, captions[:2]), atol=1e-5)


def _captions(recipe, info):
    """The first caption of each eval video, in parity order (what parity_inputs tokenized)."""
    from toolchain.data.clips import group_by_video
    from toolchain.data.formats import read_split

    return [caps[0] for caps in group_by_video(read_split(recipe.data, "eval"))[1]]


def test_a_scorer_that_cannot_be_exported_is_reported_and_fails_parity(xclip_base, tmp_path):
    import io

    from rich.console import Console
    from transformers import CLIPConfig, CLIPModel

    from export.parity import Outputs, compare, gate_failures
    from export.pipeline import scorer_graph
    from toolchain.models.video_clip import VideoCLIP
    from toolchain.progress import Reporter
    from toolchain.recipe import ExportSection

    plain = VideoCLIP(CLIPModel(CLIPConfig()).eval(), 4, "uniform", 224, (0.5,) * 3, (0.5,) * 3)  # no prompt generator
    out = io.StringIO()
    path, scoring = scorer_graph(plain, tmp_path / "scorer.onnx", 18, {}, "torchscript", Reporter(Console(file=out, width=300)))
    assert path is None and scoring["exported"] is False and "AttributeError" in scoring["reason"]
    assert "could not be exported" in out.getvalue() and "parity.json measures the difference" in out.getvalue()

    rng = np.random.default_rng(0)
    video, text = rng.normal(size=(3, 8)), rng.normal(size=(3, 8))
    ref = Outputs(video, np.zeros((3, 2), np.int64), text, scores=video @ text.T + rng.normal(size=(3, 3)))
    result = compare(ref, Outputs(video, np.zeros((3, 2), np.int64), text))
    assert result["scores"]["conditioned_onnx"] is False and result["scores"]["max_abs_diff"] > 0
    failures = gate_failures("fp32", {"vs_trained": result}, ExportSection().gate("fp32"))
    assert any("plain dot products, not the model's video-conditioned scores" in f for f in failures)

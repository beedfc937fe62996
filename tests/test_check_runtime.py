"""A second runtime: OpenVINO (CPU) runs all five retrieval variants and agrees with ONNX Runtime;
`vqtool export --check-runtime openvino` records it in parity.json / parity.md."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import TINY_K, cli_env
from toolchain.data.clips import group_by_video
from toolchain.data.formats import read_split
from toolchain.data.video import decode_video

ALL = ["fp32", "fp16", "int8", "int8-static", "int4"]
needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None,
    reason="the openvino extra is not installed (pip install 'vqtool[openvino]'; `make setup` installs it)")


@pytest.fixture(scope="module")
def held_apart_feeds(tiny_recipe, merged):
    """Eval clips (int8-static calibrated on train clips, not these), odd-sized random clips, captions."""
    from export.check_runtime import retrieval_feeds
    from export.tokenize import encode_texts, load_tokenizer

    info = merged[3]
    videos, captions = group_by_video(read_split(tiny_recipe.data, "eval"))
    clips = [decode_video(v, 64) for v in videos[::6]]
    rng = np.random.default_rng(7)
    clips += [rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8) for n, h, w in [(1, 31, 47), (TINY_K, 90, 50), (40, 24, 40)]]
    ids, mask = encode_texts(load_tokenizer(info.tokenizer, info.max_text_len), [c[0] for c in captions[::6]])
    return retrieval_feeds(clips, ids, mask)


@needs_openvino
def test_openvino_runs_every_variant_and_agrees_with_onnxruntime(five_variant_export, held_apart_feeds):
    from export.check_runtime import MIN_COSINE, compare_variants

    out, _ = five_variant_export
    variants = json.loads((out / "manifest.json").read_text())["variants"]
    result = compare_variants(out, variants, held_apart_feeds, "openvino", threads=1)
    assert result["passed"], result["failures"]
    assert list(result["variants"]) == ALL and result["inputs"] == {"video": 11, "text": 1}
    assert result["device"] == "CPU" and result["inference_precision"] == "f32"  # the same answer on every CPU
    assert result["default_precision"] in ("f32", "bf16", "f16")
    for name, v in result["variants"].items():
        video, text = v["video"]["outputs"], v["text"]["outputs"]
        assert video["frame_indices"] == {"agreement": 1.0}, name
        assert video["video_embeds"]["min_cosine"] >= MIN_COSINE[name] == v["min_cosine_gate"], name
        assert text["text_embeds"]["min_cosine"] >= MIN_COSINE[name], name
        assert 0 < video["video_embeds"]["max_abs_diff"] < 0.05, name  # two runtimes: close, not bit-equal


@needs_openvino
def test_every_disagreement_and_an_unloadable_graph_are_listed(five_variant_export, held_apart_feeds, tmp_path):
    from export.check_runtime import compare_variants

    out, _ = five_variant_export
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "text_encoder.int8.onnx").write_bytes(b"not an onnx file")
    variants = json.loads((copy / "manifest.json").read_text())["variants"]
    subset = {k: variants[k] for k in ("fp32", "int8")}
    feeds = {"video": held_apart_feeds["video"][:2], "text": held_apart_feeds["text"]}
    result = compare_variants(copy, subset, feeds, "openvino", min_cosine={"fp32": 1.5})  # no cosine reaches 1.5
    assert not result["passed"] and not result["variants"]["fp32"]["passed"]
    fails = result["failures"]
    assert len(fails) == 3, fails
    assert fails[0].startswith("fp32 video_encoder.onnx (openvino vs onnxruntime): video_embeds min cosine")
    assert "< 1.5" in fails[0] and "text_embeds min cosine" in fails[1]
    assert fails[2].startswith("int8 text_encoder.int8.onnx (openvino vs onnxruntime): openvino could not load it")
    assert result["variants"]["int8"]["video"]["failures"] == []


def test_check_runtime_errors_name_the_flag_and_the_install_command(tiny_run):
    """Unknown runtime, and openvino missing (blocked here): clean errors before any model loads."""
    block = textwrap.dedent("""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "openvino" or name.startswith("openvino."):
                    raise ImportError("openvino is blocked in this test")
        sys.meta_path.insert(0, Block())
    """)
    for prelude, runtime, needle in [("", "tensorrt", "--check-runtime 'tensorrt' is not known; choose from: openvino"),
                                     (block, "openvino", "pip install 'vqtool[openvino]'")]:
        code = prelude + "import sys; sys.argv = ['vqtool', *sys.argv[1:]]; from toolchain.cli import main; main()"
        proc = subprocess.run([sys.executable, "-c", code, "export", str(tiny_run), "--check-runtime", runtime],
                              capture_output=True, text=True, env=cli_env(), timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert needle in proc.stderr, proc.stderr
        assert "Loading weights" not in proc.stderr, "the check must come before the model loads"


@needs_openvino
@pytest.mark.slow
def test_export_cli_adds_the_openvino_comparison_to_parity(run_cli, tiny_run, tmp_path):
    out = tmp_path / "export"
    proc = run_cli("export", tiny_run, "--output-dir", out, "--variants", "fp32,int8", "--check-runtime", "openvino",
                   timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parity = json.loads((out / "parity.json").read_text())
    ov = parity["runtimes"]["openvino"]
    assert parity["passed"] and ov["passed"] and list(ov["variants"]) == ["fp32", "int8"]
    assert ov["inputs"] == {"video": parity["eval_clips"], "text": 1}
    assert ov["variants"]["int8"]["video"]["outputs"]["frame_indices"] == {"agreement": 1.0}
    md = (out / "parity.md").read_text()
    assert "Second runtime: openvino" in md and "| int8 |" in md.split("Second runtime")[1]

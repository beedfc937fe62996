"""Torch-free generation from a video-llm export (issue 17): VideoLLMRuntime.generate and `vqtool infer --prompt`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from export.gen_runtime import VideoLLMRuntime, build_prompt
from toolchain.errors import VqtoolError
from toolchain.models.prompt import PromptFormat

CAPTION = PromptFormat("{video} describe the video .", 5, 3, 1, 0)
QA = PromptFormat("{video} question : {question} answer :", 5, 3, 1, 0)


def test_a_prompt_is_a_question_an_instruction_or_a_whole_template():
    assert build_prompt(QA, True, "what colour is it ?") == (QA.template, "what colour is it ?")
    assert build_prompt(CAPTION, False, None) == (CAPTION.template, None)
    assert build_prompt(CAPTION, False, "say what moves .") == ("{video} say what moves .", None)
    assert build_prompt(QA, True, "<s>{video} tell me </s>") == ("<s>{video} tell me </s>", None)
    with pytest.raises(VqtoolError, match="video QA model.*--prompt"):
        build_prompt(QA, True, None)
    with pytest.raises(VqtoolError, match="prompt is empty"):
        build_prompt(CAPTION, False, "   ")
    with pytest.raises(VqtoolError, match="more than once"):
        build_prompt(CAPTION, False, "{video} {video}")


@pytest.mark.slow
def test_runtime_generates_pytorchs_greedy_tokens_from_raw_frames(tiny_caption_export, tiny_caption_run):
    """fp32: token for token what the merged PyTorch model's greedy generate gives, on eval clips."""
    from tokenizers import Tokenizer

    from export.gen_parity import eval_clips, torch_reference
    from export.merge import merged_model

    _, merged, recipe, info = merged_model(tiny_caption_run)
    fmt = merged.prompt_format(recipe.generation.template(recipe.task))
    clips = eval_clips(recipe, Tokenizer.from_file(str(info.tokenizer)), fmt)
    clips.frames, clips.prompts = clips.frames[:4], clips.prompts[:4]
    ref = torch_reference(merged, clips, fmt, recipe.generation.max_new_tokens)
    rt = VideoLLMRuntime(tiny_caption_export, "fp32", threads=1)
    for frames, prompt, tokens, idx in zip(clips.frames, clips.prompts, ref["tokens"], ref["indices"]):
        assert rt.prompt_ids() == prompt, "the manifest's template gives the training prompt"
        out = rt.generate(frames)
        assert out["tokens"] == tokens and out["frame_indices"] == idx[0].tolist()
        assert out["new_tokens"] == len(tokens) and out["tokens_per_s"] > 0
    streamed = []
    out = rt.generate(clips.frames[0], on_text=streamed.append)
    assert "".join(streamed).strip() == out["text"]


def write_clip(path, codec: str, frames: int, width: int, height: int, seed: int):
    """A clip this project's renderer did not draw: moving noise blobs on a gradient, another codec and size."""
    import av

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as box:
        stream = box.add_stream(codec, rate=12)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(frames):
            img = np.stack([(xx * 255 // width), (yy * 255 // height), np.full_like(xx, 40)], -1).astype(np.uint8)
            cx, cy = (t * 5 + 7) % width, height // 2
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < (min(width, height) // 5) ** 2] = rng.integers(0, 256, 3)
            box.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        box.mux(stream.encode())
    return path


@pytest.mark.slow
def test_infer_prompt_on_videos_from_elsewhere_prints_a_caption(run_cli, tiny_caption_export, tmp_path):
    videos = [write_clip(tmp_path / "a.mp4", "mpeg4", 9, 50, 38, 1), write_clip(tmp_path / "b.mp4", "h264", 31, 96, 64, 2),
              write_clip(tmp_path / "c.avi", "mpeg4", 5, 34, 60, 3)]
    args = [a for v in videos for a in ("--video", v)]
    proc = run_cli("infer", tiny_caption_export, *args, "--variant", "int8", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["prompt"] == "{video} describe the video ." and len(out["outputs"]) == 3
    assert all(isinstance(t, str) and t for t in out["outputs"]) and out["tokens_per_s"] > 0
    assert [len(ix) for ix in out["frame_indices"]] == [4, 4, 4]  # K of the tiny recipe, even from a 5-frame clip
    same = run_cli("infer", tiny_caption_export, *args, "--variant", "int8", "--json", "--prompt", "describe the video .")
    assert json.loads(same.stdout)["outputs"] == out["outputs"], "the fine-tuned instruction given explicitly"
    table = run_cli("infer", tiny_caption_export, "--video", videos[0])
    assert table.returncode == 0 and table.stdout.startswith(f"{videos[0]}: ") and out["outputs"][0] in table.stdout
    bad = run_cli("infer", tiny_caption_export, "--video", videos[0], "--text", "a red circle")
    assert bad.returncode == 2 and "--prompt" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_generate_refuses_bad_inputs_with_the_fix(tiny_caption_export):
    rt = VideoLLMRuntime(tiny_caption_export, "fp32", threads=1)
    clip = np.random.default_rng(0).integers(0, 256, (6, 32, 40, 3), dtype=np.uint8)
    with pytest.raises(VqtoolError, match="uint8"):
        rt.generate(clip.astype(np.float32))
    with pytest.raises(VqtoolError, match="max_new_tokens must be a whole number >= 1"):
        rt.generate(clip, max_new_tokens=0)
    with pytest.raises(VqtoolError, match="prompt is empty"):
        rt.generate(clip, prompt="")
    with pytest.raises(VqtoolError, match="one clip"):
        rt.generate(np.stack([clip, clip]))
    with pytest.raises(VqtoolError, match="no variant 'int4'.*fp32, int8"):
        VideoLLMRuntime(tiny_caption_export, "int4")
    assert rt.generate(clip, max_new_tokens=2)["new_tokens"] <= 2


@pytest.mark.slow
def test_generation_runs_with_torch_unimportable(tiny_caption_export, tmp_path):
    """The runtime path imports no torch: with `import torch` made to fail, generation still works."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np\n"
            "from export.gen_runtime import VideoLLMRuntime\n"
            f"rt = VideoLLMRuntime({str(tiny_caption_export)!r}, 'int8', threads=1)\n"
            "out = rt.generate(np.zeros((5, 30, 30, 3), np.uint8))\n"
            "print(len(out['tokens']), 'torch' in sys.modules and sys.modules['torch'] is not None)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**__import__("os").environ, "PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1])})
    assert proc.returncode == 0, proc.stderr
    count, torch_loaded = proc.stdout.split()
    assert int(count) >= 1 and torch_loaded == "False"


@pytest.mark.slow
def test_onnxruntime_genai_runs_the_exports_own_three_graphs(tiny_caption_export, shapes_data):
    """The export's genai_config.json: genai's VLM type on vision.onnx (uint8 frames, the fused selector),
    embedding.onnx and decoder.onnx gives the tokens of our numpy loop."""
    pytest.importorskip("onnxruntime_genai")
    from export.genai import genai_generate, load_genai

    og = load_genai()
    genai = og.Model(str(tiny_caption_export))
    rt = VideoLLMRuntime(tiny_caption_export, "fp32", threads=1)
    from toolchain.data.video import decode_video

    for name in ("eval_0000.mp4", "eval_0003.mp4"):
        frames = decode_video(shapes_data / "videos" / name, 64)
        ours = rt.generate(frames)
        inputs = {"pixel_values": frames[None], "num_image_tokens": np.array([rt.fmt.video_tokens], np.int64)}
        assert genai_generate(genai, rt.prompt_ids(), rt.max_new_tokens, named_inputs=inputs) == ours["tokens"], name

"""Torch-free generation from a video-llm export: raw uint8 frames + a prompt in, text out.

vision.onnx (frame selector, preprocessing and tower fused) turns a clip into image features;
embedding.onnx splices them into the prompt's video placeholders; decoder.onnx runs the numpy
greedy / beam loop of export/generate.py with its KV cache kept as OrtValues. numpy, onnxruntime,
tokenizers and PyAV (video files) only: what `pip install vqtool` brings, without the train extra.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from export.gen_session import GenSessions, session_options
from export.generate import check_counts, generate, text_streamer
from export.providers import choose_providers, open_session, parse_providers, preload_gpu_libraries
from export.runtime import REEXPORT, check_frames, read_manifest_file
from toolchain.errors import VqtoolError
from toolchain.models.prompt import PromptFormat, encode

MANIFEST_KIND = "video-llm"
PROMPT_FIELDS = ("template", "video_token_id", "video_tokens", "eos_token_id", "pad_token_id")


def read_video_llm_manifest(export_dir: Path) -> dict:
    """manifest.json of a video-llm export, with the keys generation needs."""
    path = Path(export_dir) / "manifest.json"
    manifest = read_manifest_file(Path(export_dir))
    if manifest.get("kind") != MANIFEST_KIND:
        raise VqtoolError(f"{path} is a retrieval export (video and text encoders), not a video-llm one: score "
                          "videos against captions with `vqtool infer EXPORT --video V --text CAPTION`")
    missing = [k for k in ("variants", "prompt", "text", "frames") if k not in manifest]
    missing += [f"prompt.{k}" for k in PROMPT_FIELDS if k not in manifest.get("prompt", {})]
    if missing:
        raise VqtoolError(f"{path} lacks {', '.join(missing)}; {REEXPORT}")
    return manifest


def build_prompt(fmt: PromptFormat, question_slot: bool, prompt: str | None) -> tuple[str, str | None]:
    """(template, question) for a user's prompt.

    A prompt holding {video} is a whole template. Otherwise, with a question slot (qa) the prompt is
    the question; without one (captioning) it replaces the instruction after the video. No prompt:
    the template the model was fine-tuned with (qa needs the question, though)."""
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise VqtoolError("prompt is empty: give a question or an instruction, or leave it out for the "
                          "fine-tuned prompt")
    if prompt is None:
        if question_slot:
            raise VqtoolError("this is a video QA model: give the question as the prompt (--prompt 'what colour "
                              "is the shape ?'); its fine-tuned template is " + repr(fmt.template))
        return fmt.template, None
    if "{video}" in prompt:
        if prompt.count("{video}") != 1:
            raise VqtoolError(f"prompt {prompt!r} holds {{video}} more than once; the video goes in one place")
        return prompt, None
    if question_slot:
        return fmt.template, prompt
    return "{video} " + prompt.strip(), None


class VideoLLMRuntime:
    """One variant of a video-llm export: `generate(video, prompt)` -> text, with ONNX Runtime only.

    providers: "auto" (TensorRT, then CUDA, then CPU, as available) or names such as "cpu", "cuda".
    threads: intra-op threads (None or 0: ONNX Runtime's default)."""

    def __init__(self, export_dir, variant: str = "fp32", providers: str | list[str] = "auto",
                 threads: int | None = None):
        self.dir = Path(export_dir)
        self.manifest = read_video_llm_manifest(self.dir)
        self.variant = variant
        files = self.variant_files(variant)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 0):
            raise VqtoolError(f"threads must be a whole number >= 1 (0 or None: ONNX Runtime's default), got {threads!r}")
        opts = session_options(threads or None)
        chosen = choose_providers(providers)
        preload_gpu_libraries(chosen)
        self.vision = open_session(files["vision"], opts, chosen, parse_providers(providers) is not None)
        self.providers = self.vision.get_providers()
        self.sessions = GenSessions(files["decoder"], files["embedding"], providers=self.providers, options=opts)
        prompt = self.manifest["prompt"]
        self.fmt = PromptFormat(**{k: prompt[k] for k in PROMPT_FIELDS})
        self.question_slot = bool(prompt.get("question_slot", "{question}" in self.fmt.template))
        self.tokenizer = Tokenizer.from_file(str(self.dir / self.manifest["text"]["tokenizer"]))
        self.max_new_tokens = int(self.manifest.get("generation", {}).get("max_new_tokens", 32))

    def variant_files(self, variant: str) -> dict[str, Path]:
        files = self.manifest["variants"].get(variant)
        if not isinstance(files, dict):
            raise VqtoolError(f"{self.dir} has no variant {variant!r}; it has: {', '.join(self.manifest['variants'])}")
        paths = {k: self.dir / files[k] for k in ("vision", "embedding", "decoder") if k in files}
        missing = [f"{k} ({p.name})" for k, p in paths.items() if not p.is_file()] + \
                  [k for k in ("vision", "embedding", "decoder") if k not in paths]
        if missing:
            raise VqtoolError(f"{self.dir}: variant {variant!r} misses {', '.join(missing)}; {REEXPORT}")
        return paths

    def encode_video(self, video) -> tuple[np.ndarray, np.ndarray]:
        """A path or a uint8 clip [N,H,W,3] -> (image features [T, hidden] float32, frame indices [K])."""
        if isinstance(video, (str, Path)):
            from toolchain.data.video import decode_video

            video = decode_video(video, self.manifest["frames"]["decode_max_frames"])
        clip = check_frames(video)
        if clip.shape[0] != 1:
            raise VqtoolError(f"generate takes one clip [N,H,W,3] at a time, got a batch of {clip.shape[0]}")
        features, indices = self.vision.run(None, {"pixel_values": clip})
        return np.ascontiguousarray(features, np.float32), indices[0]

    def prompt_text(self, prompt: str | None = None) -> str:
        """The prompt as the model sees it, {video} marking where the video's tokens go."""
        template, question = build_prompt(self.fmt, self.question_slot, prompt)
        return template.replace("{question}", (question or "").strip())

    def prompt_ids(self, prompt: str | None = None) -> list[int]:
        """The token ids of `prompt` (see build_prompt) with the video's placeholders in place."""
        before, after = self.prompt_text(prompt).split("{video}", 1)
        return (encode(self.tokenizer, before) + [self.fmt.video_token_id] * self.fmt.video_tokens
                + encode(self.tokenizer, after))

    def generate(self, video, prompt: str | None = None, max_new_tokens: int | None = None, num_beams: int = 1,
                 on_text=None) -> dict:
        """Generate text about one video (a file or uint8 frames [N,H,W,3]).

        Returns {"text", "tokens", "frame_indices", "prompt_tokens", "new_tokens", "seconds", "tokens_per_s"};
        on_text(str) streams the text as it grows (greedy only)."""
        max_new_tokens = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        check_counts(max_new_tokens, num_beams)
        ids = self.prompt_ids(prompt)
        features, indices = self.encode_video(video)
        start = time.perf_counter()
        out = generate(self.sessions, ids, features, max_new_tokens, num_beams, text_streamer(self.tokenizer, on_text),
                       eos_ids=[self.fmt.eos_token_id], pad_id=self.fmt.pad_token_id,
                       video_token_id=self.fmt.video_token_id)[0]
        seconds = time.perf_counter() - start
        text = self.tokenizer.decode([t for t in out if t != self.fmt.eos_token_id], skip_special_tokens=True)
        return {"text": text.strip(), "tokens": out, "frame_indices": indices.tolist(), "prompt_tokens": len(ids),
                "new_tokens": len(out), "seconds": seconds, "tokens_per_s": len(out) / seconds if seconds else 0.0}

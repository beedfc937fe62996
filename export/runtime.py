"""Torch-free inference on an export dir: ONNX Runtime sessions, the tokenizer, raw frames or files in."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.providers import PREFERENCE, choose_providers, open_session, parse_providers, preload_gpu_libraries
from export.tokenize import encode_texts, load_tokenizer
from toolchain.errors import VqtoolError

# The manifest layout this runtime reads; export/onnx_export.py FORMAT_VERSION writes it (a test keeps them equal).
# 2: variants may list a "scorer" graph (X-CLIP's video-conditioned scores); plain exports still write 1.
MANIFEST_FORMAT = 2
__all__ = ["PREFERENCE", "VideoTextRuntime", "check_frames", "choose_providers", "read_manifest"]
REEXPORT = "re-create it with: vqtool export RUN_DIR --force"


def read_manifest(export_dir: Path) -> dict:
    """manifest.json of a retrieval export dir, checked: readable, a format this runtime knows, the keys it uses."""
    manifest = read_manifest_file(Path(export_dir))
    path = Path(export_dir) / "manifest.json"
    check_retrieval(path, manifest)
    check_keys(path, manifest)
    return manifest


def read_manifest_file(export_dir: Path) -> dict:
    """manifest.json of any export dir (retrieval or video-llm): there, valid JSON, a format this runtime knows."""
    path = Path(export_dir) / "manifest.json"
    if not Path(export_dir).is_dir():
        raise VqtoolError(f"export dir {export_dir} does not exist (no {path}); make one with: vqtool export RUN_DIR")
    if not path.is_file():
        raise VqtoolError(f"{path} is missing, so {export_dir} is not an export dir; make one with: vqtool export RUN_DIR")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VqtoolError(f"{path} is not valid JSON ({exc}); {REEXPORT}") from None
    if not isinstance(manifest, dict):
        raise VqtoolError(f"{path} must hold a JSON object; {REEXPORT}")
    check_format(path, manifest.get("format"))
    return manifest


def check_format(path: Path, fmt) -> None:
    if isinstance(fmt, bool) or not isinstance(fmt, int) or fmt < 1:
        raise VqtoolError(f"{path}: 'format' must be a positive integer, got {fmt!r}; {REEXPORT}")
    if fmt > MANIFEST_FORMAT:
        raise VqtoolError(
            f"{path} has manifest format {fmt}, newer than this runtime reads (up to {MANIFEST_FORMAT}): "
            f"upgrade the runtime (pip install -U vqtool), or export again with this version of vqtool"
        )


def check_retrieval(path: Path, manifest: dict) -> None:
    """This runtime scores retrieval exports; a generative (video-llm) export is named, not misread."""
    if manifest.get("kind") == "video-llm":
        raise VqtoolError(
            f"{path} is a video-llm export (vision/embedding/decoder graphs): this runtime scores retrieval "
            "exports only. Generate text from it with export.gen_runtime.VideoLLMRuntime(...).generate(video, prompt) "
            "or `vqtool infer EXPORT --video V [--prompt TEXT]`")


def check_keys(path: Path, manifest: dict) -> None:
    needed = {"variants": dict, "text": dict, "frames": dict}
    for key, kind in needed.items():
        if not isinstance(manifest.get(key), kind) or not manifest[key]:
            raise VqtoolError(f"{path}: key '{key}' is missing or empty; {REEXPORT}")
    for section, key in (("text", "tokenizer"), ("text", "max_length"), ("frames", "decode_max_frames")):
        if key not in manifest[section]:
            raise VqtoolError(f"{path}: key '{section}.{key}' is missing; {REEXPORT}")
    if scorer_kind(manifest):
        missing = [v for v, files in manifest["variants"].items() if not isinstance(files, dict) or "scorer" not in files]
        if missing:
            raise VqtoolError(f"{path}: variant(s) {', '.join(missing)} have no 'scorer' graph, which this export's "
                              f"scores need; {REEXPORT}")


def scorer_kind(manifest: dict) -> bool:
    """True when the export scores with a scorer graph (captions conditioned on each video: X-CLIP)."""
    scoring = manifest.get("scoring")
    return isinstance(scoring, dict) and scoring.get("graph") == "scorer"


def check_frames(frames) -> np.ndarray:
    """Validate before ONNX Runtime sees it: uint8, [N,H,W,3] or [B,N,H,W,3], no empty axis."""
    try:
        arr = np.asarray(frames)
    except (ValueError, TypeError) as exc:
        raise VqtoolError(f"frames must be a uint8 array [N,H,W,3] or [B,N,H,W,3], got {type(frames).__name__} ({exc})") from None
    if arr.dtype != np.uint8:
        raise VqtoolError(f"frames must be uint8 RGB (0..255), got dtype {arr.dtype}; convert with .astype(np.uint8)")
    shape = list(arr.shape)
    if arr.ndim not in (4, 5) or shape[-1] != 3:
        raise VqtoolError(f"frames must have shape [N,H,W,3] or [B,N,H,W,3] (RGB), got {shape}")
    if arr.ndim == 4:
        arr = arr[None]
    if arr.shape[1] == 0:
        raise VqtoolError(f"frames has no frames: shape {shape}; a clip needs at least one frame")
    if 0 in arr.shape:
        raise VqtoolError(f"frames has an empty axis: shape {shape}; batch, height and width must be at least 1")
    return np.ascontiguousarray(arr)


def check_texts(texts) -> list[str]:
    if isinstance(texts, (str, bytes)) or not isinstance(texts, (list, tuple)) or not texts:
        raise VqtoolError(f"encode_text takes a non-empty list of strings, got {type(texts).__name__}")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise VqtoolError(f"encode_text takes a non-empty list of strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
    return list(texts)


class VideoTextRuntime:
    """Load an export dir's graphs for one variant; raw uint8 frames or video files in, embeddings out.

    providers: "auto" (TensorRT, then CUDA, then CPU, as available), or names such as "cuda", "cpu",
    "CUDAExecutionProvider" (a comma list or a list). `self.providers` is what the sessions really run on.
    """

    def __init__(self, export_dir, variant: str = "fp32", providers: str | list[str] = "auto", threads: int | None = None):
        self.dir = Path(export_dir)
        self.manifest = read_manifest(self.dir)
        self.variant = variant
        files = self.variant_files(variant)
        opts = ort.SessionOptions()
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 0):
            raise VqtoolError(f"threads must be a whole number >= 1 (0 or None: ONNX Runtime's default), got {threads!r}")
        if threads:
            opts.intra_op_num_threads = threads
        chosen = choose_providers(providers)
        explicit = parse_providers(providers) is not None
        preload_gpu_libraries(chosen)
        self.video = open_session(files["video"], opts, chosen, explicit)
        self.providers = self.video.get_providers()  # what ORT really started, after any fallback
        self.text = open_session(files["text"], opts, self.providers, explicit)
        self.scorer = open_session(files["scorer"], opts, self.providers, explicit) if "scorer" in files else None
        text = self.manifest["text"]
        self.tokenizer = load_tokenizer(self.dir / text["tokenizer"], text["max_length"])

    def variant_files(self, variant: str) -> dict[str, Path]:
        files = self.manifest["variants"].get(variant)
        if files is None:
            raise VqtoolError(f"{self.dir} has no variant {variant!r}; it has: {', '.join(self.manifest['variants'])}")
        paths = {"video": self.dir / files["video"], "text": self.dir / files["text"],
                 "tokenizer": self.dir / self.manifest["text"]["tokenizer"]}
        if scorer_kind(self.manifest):
            paths["scorer"] = self.dir / files["scorer"]
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise VqtoolError(f"{', '.join(missing)} missing from the export dir; re-create it: vqtool export RUN_DIR --force")
        return paths

    def video_outputs(self, video) -> list[np.ndarray]:
        """Every output of the video graph: embeddings, frame indices (and X-CLIP's video_context)."""
        if isinstance(video, (str, Path)):
            from toolchain.data.video import decode_video

            video = decode_video(video, self.manifest["frames"]["decode_max_frames"])
        return self.video.run(None, {"frames": check_frames(video)})

    def encode_video(self, video) -> tuple[np.ndarray, np.ndarray]:
        """A path, a uint8 clip [N,H,W,3] or a batch [B,N,H,W,3] -> (embeddings [B,D], frame indices [B,K])."""
        emb, idx = self.video_outputs(video)[:2]
        return emb, idx

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Text embeddings [T,D], L2-normalised. With a scorer graph (X-CLIP) these are the captions
        before conditioning on a video: use scores() for the model's real scores."""
        ids, mask = encode_texts(self.tokenizer, check_texts(texts))
        return self.text.run(None, {"input_ids": ids, "attention_mask": mask})[0]

    def scores(self, videos: list, texts: list[str]) -> np.ndarray:
        """The model's cosine scores: one row per video, one column per text."""
        return self.score_videos(videos, texts)[0]

    def score_videos(self, videos: list, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(scores [V,T], frame indices [V,K]): dot products of the embeddings, or with a scorer graph
        (X-CLIP) each caption conditioned on each video, as the trained model scores."""
        if isinstance(videos, (str, Path, np.ndarray)) or not videos:
            raise VqtoolError("scores takes a non-empty list of videos (paths or uint8 clips) and a list of texts")
        runs = [self.video_outputs(v) for v in videos]
        video, indices = np.concatenate([r[0] for r in runs]), np.concatenate([r[1] for r in runs])
        ids, mask = encode_texts(self.tokenizer, check_texts(texts))
        text = self.text.run(None, {"input_ids": ids, "attention_mask": mask})
        if self.scorer is None:
            return video @ text[0].T, indices
        feed = {"video_embeds": video, "video_context": np.concatenate([r[2] for r in runs]), "text_features": text[1]}
        return self.scorer.run(None, feed)[0], indices

"""Torch-free inference on an export dir: ONNX Runtime sessions, the tokenizer, raw frames or files in."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.tokenize import encode_texts, load_tokenizer
from toolchain.errors import VqtoolError

MANIFEST_FORMAT = 1
PREFERENCE = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def read_manifest(export_dir: Path) -> dict:
    path = Path(export_dir) / "manifest.json"
    if not path.is_file():
        raise VqtoolError(f"{export_dir} has no manifest.json; make an export dir with: vqtool export RUN_DIR")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VqtoolError(f"{path} is not valid JSON ({exc}); re-create it with: vqtool export RUN_DIR --force") from None
    if not isinstance(manifest, dict):
        raise VqtoolError(f"{path} must hold a JSON object; re-create it with: vqtool export RUN_DIR --force")
    fmt = manifest.get("format")
    if not isinstance(fmt, int) or fmt > MANIFEST_FORMAT:
        raise VqtoolError(
            f"{path} has format {fmt!r}, newer than this runtime understands ({MANIFEST_FORMAT}); upgrade vqtool"
        )
    return manifest


def choose_providers(requested: str | list[str] = "auto") -> list[str]:
    available = ort.get_available_providers()
    if requested == "auto":
        return [p for p in PREFERENCE if p in available] or available
    wanted = [requested] if isinstance(requested, str) else list(requested)
    missing = [p for p in wanted if p not in available]
    if missing:
        raise VqtoolError(f"execution provider(s) {missing} not available; this ONNX Runtime has: {available}")
    return wanted


def check_frames(frames) -> np.ndarray:
    """Validate before ONNX Runtime sees it: uint8, [N,H,W,3] or [B,N,H,W,3], no empty axis."""
    arr = np.asarray(frames)
    if arr.dtype != np.uint8:
        raise VqtoolError(f"frames must be uint8 RGB (0..255), got dtype {arr.dtype}; convert with .astype(np.uint8)")
    if arr.ndim == 4:
        arr = arr[None]
    if arr.ndim != 5 or arr.shape[-1] != 3:
        raise VqtoolError(f"frames must have shape [N,H,W,3] or [B,N,H,W,3] (RGB), got {list(np.asarray(frames).shape)}")
    if 0 in arr.shape:
        raise VqtoolError(f"frames has an empty axis: shape {list(arr.shape)}; a clip needs at least one frame")
    return np.ascontiguousarray(arr)


class VideoTextRuntime:
    """Load an export dir's graphs for one variant; raw uint8 frames or video files in, embeddings out."""

    def __init__(self, export_dir, variant: str = "fp32", providers: str | list[str] = "auto", threads: int | None = None):
        self.dir = Path(export_dir)
        self.manifest = read_manifest(self.dir)
        files = self.manifest["variants"].get(variant)
        if files is None:
            raise VqtoolError(f"{self.dir} has no variant {variant!r}; it has: {', '.join(self.manifest['variants'])}")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.providers = choose_providers(providers)
        self.video = ort.InferenceSession(str(self.dir / files["video"]), opts, providers=self.providers)
        self.text = ort.InferenceSession(str(self.dir / files["text"]), opts, providers=self.providers)
        text = self.manifest["text"]
        self.tokenizer = load_tokenizer(self.dir / text["tokenizer"], text["max_length"])
        self.variant = variant

    def encode_video(self, video) -> tuple[np.ndarray, np.ndarray]:
        """A path, a uint8 clip [N,H,W,3] or a batch [B,N,H,W,3] -> (embeddings [B,D], frame indices [B,K])."""
        if isinstance(video, (str, Path)):
            from toolchain.data.video import decode_video

            video = decode_video(video, self.manifest["frames"]["decode_max_frames"])
        emb, idx = self.video.run(None, {"frames": check_frames(video)})
        return emb, idx

    def encode_text(self, texts: list[str]) -> np.ndarray:
        if isinstance(texts, str) or not texts:
            raise VqtoolError("encode_text takes a non-empty list of strings")
        ids, mask = encode_texts(self.tokenizer, texts)
        return self.text.run(None, {"input_ids": ids, "attention_mask": mask})[0]

    def scores(self, videos: list, texts: list[str]) -> np.ndarray:
        """Cosine similarities: one row per video, one column per text."""
        vids = np.concatenate([self.encode_video(v)[0] for v in videos])
        return vids @ self.encode_text(texts).T

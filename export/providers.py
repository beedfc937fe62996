"""ONNX Runtime execution providers: pick TensorRT > CUDA > CPU, open sessions, report what was really used."""

from __future__ import annotations

import contextlib
import sys

import onnxruntime as ort

from toolchain.errors import VqtoolError

PREFERENCE = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}
GPU_FIX = (
    "check that the GPU is visible (nvidia-smi; docker run --gpus all), that CUDA 13 and cuDNN 9 libraries are "
    "installed, and that the CPU `onnxruntime` wheel did not overwrite `onnxruntime-gpu` (README: GPU install)"
)


def parse_providers(requested: str | list[str]) -> list[str] | None:
    """'auto' -> None; 'cuda,cpu' or ['CUDAExecutionProvider'] -> full ONNX Runtime names, in order."""
    items = requested.split(",") if isinstance(requested, str) else list(requested)
    names = [ALIASES.get(p.strip().lower(), p.strip()) for p in items if p.strip()]
    if names == ["auto"]:
        return None
    if not names or "auto" in names:
        raise VqtoolError(f"--providers {requested!r}: give 'auto' alone, or provider names such as cuda,cpu")
    return names


def choose_providers(requested: str | list[str] = "auto") -> list[str]:
    """The providers to try, best first; an explicitly named one that is missing is an error listing the rest."""
    available = ort.get_available_providers()
    wanted = parse_providers(requested)
    if wanted is None:
        return [p for p in PREFERENCE if p in available] or list(available)
    missing = [p for p in wanted if p not in available]
    if missing:
        raise VqtoolError(
            f"--providers: {', '.join(missing)} not available in this ONNX Runtime "
            f"(onnxruntime {ort.__version__}); available: {', '.join(available)}. "
            "Use --providers auto, or for CUDA/TensorRT install onnxruntime-gpu (README: GPU install)"
        )
    return wanted


def preload_gpu_libraries(providers: list[str]) -> None:
    """Let pip-installed CUDA/cuDNN wheels (onnxruntime-gpu[cuda,cudnn]) be found; no-op on a CPU build."""
    if GPU_PROVIDERS.isdisjoint(providers) or not hasattr(ort, "preload_dlls"):
        return
    with contextlib.redirect_stdout(sys.stderr):  # it prints; stdout may be JSON (vqtool infer --json)
        ort.preload_dlls()


def open_session(path, options, providers: list[str], explicit: bool):
    """An InferenceSession on the first providers that start. `auto` falls back down the list, saying why on
    stderr; an explicit choice that does not start is an error naming the provider and the fix."""
    for i in range(len(providers)):
        trying = providers[i:]
        try:
            # ORT's own fallback prints to stdout and silently retries on CPU: we do it ourselves instead.
            session = ort.InferenceSession(str(path), options, providers=trying, enable_fallback=0)
        except (RuntimeError, ValueError) as exc:
            if explicit or len(trying) == 1:
                fix = GPU_FIX if trying[0] in GPU_PROVIDERS else "re-create the export dir: vqtool export RUN_DIR --force"
                raise VqtoolError(f"{path}: ONNX Runtime could not open it with {trying[0]} ({exc}); {fix}") from None
            print(f"warning: {trying[0]} did not start ({exc}); trying {trying[1]}", file=sys.stderr)
            continue
        got = session.get_providers()
        if explicit and providers[0] not in got:
            raise VqtoolError(
                f"{providers[0]} is listed by ONNX Runtime but did not start for {path} (it ran on {got[0]}); "
                f"{GPU_FIX}; or use --providers auto"
            )
        dropped = [p for p in trying if p not in got]
        if dropped:  # ORT can also skip a provider without raising (e.g. a CUDA library failed to load)
            print(f"warning: {', '.join(dropped)} did not start; running on {got[0]}", file=sys.stderr)
        return session
    raise VqtoolError("no ONNX Runtime execution provider to try")  # only if ORT lists none at all

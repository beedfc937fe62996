"""A second runtime: each variant of an export run with OpenVINO (CPU) and compared with ONNX Runtime's CPU run.

The same graph files, the same inputs, outputs compared one by one: float outputs by min cosine and
max abs diff per row, integer outputs (frame_indices) by the share of inputs where they are equal.
Torch-free (numpy, onnxruntime, openvino).

OpenVINO runs at f32 inference precision by default: the check asks whether both runtimes read the
graph the same way, and the answer must not depend on the CPU. OpenVINO's own CPU default is bf16
on CPUs that have it (Sapphire Rapids, Zen 4), which moves embeddings ~10x further (docs/results.md,
issue 21); `precision="default"` measures that.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import onnxruntime as ort

from toolchain.errors import VqtoolError

RUNTIMES = ("openvino",)
INSTALL = {"openvino": "pip install 'vqtool[openvino]'  (or: pip install openvino)"}
# Min cosine of OpenVINO's outputs vs ONNX Runtime's on the same graph at f32 precision, per variant.
# Measured on the shipped default (48 eval clips): fp32 1.000000, fp16 0.999997, int8 0.99993,
# int8-static 0.99907, int4 0.99978; quantized graphs differ in requantization rounding, hence the room.
# Integer outputs (frame_indices) must agree exactly.
MIN_COSINE = {"fp32": 0.99999, "fp16": 0.9999, "int8": 0.998, "int8-static": 0.995, "int4": 0.998}
DEFAULT_MIN_COSINE = 0.995


def require_runtime(name: str) -> None:
    """Fail before any work when --check-runtime names an unknown runtime or one that is not installed."""
    if name not in RUNTIMES:
        raise VqtoolError(f"--check-runtime {name!r} is not known; choose from: {', '.join(RUNTIMES)}")
    try:
        importlib.import_module(name)  # an import, not a lookup: a broken install is caught here too
    except ImportError as exc:
        raise VqtoolError(f"--check-runtime {name} needs the {name} package, which is not installed ({exc}): "
                          f"{INSTALL[name]}") from None


def ort_runner(path: Path, threads: int):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda feed: dict(zip(names, sess.run(None, feed)))


def openvino_runner(path: Path, threads: int, precision: str = "f32"):
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": threads}
    if precision != "default":
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()

    def run(feed: dict) -> dict:
        got = request.infer(feed)
        # An output can carry several tensor names (fp16's output Casts add one): keep them all, so the
        # graph's own output names are found. Copies: the request reuses its buffers.
        return {name: np.array(value, copy=True) for out, value in got.items() for name in out.get_names()}

    return run


def openvino_info(precision: str) -> dict:
    import openvino as ov

    core = ov.Core()
    default = core.get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    return {"version": ov.__version__, "device": "CPU", "device_name": core.get_property("CPU", "FULL_DEVICE_NAME"),
            "inference_precision": default if precision == "default" else precision, "default_precision": default}


def rows(array: np.ndarray) -> np.ndarray:
    return array.reshape(array.shape[0], -1) if array.ndim >= 2 else array.reshape(1, -1)


def compare_outputs(ref: list[dict], got: list[dict]) -> dict:
    """Per output name: floats -> min_cosine / max_abs_diff over all rows; integers -> agreement share."""
    out = {}
    for name in ref[0]:
        pairs = [(r[name], g.get(name)) for r, g in zip(ref, got)]
        if any(g is None or g.shape != r.shape for r, g in pairs):
            out[name] = {"error": "missing or differently shaped in the second runtime"}
        elif np.issubdtype(pairs[0][0].dtype, np.floating):
            a = np.concatenate([rows(r.astype(np.float64)) for r, _ in pairs])
            b = np.concatenate([rows(g.astype(np.float64)) for _, g in pairs])
            cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
            out[name] = {"min_cosine": float(cos.min()), "max_abs_diff": float(np.abs(a - b).max())}
        else:
            out[name] = {"agreement": float(np.mean([np.array_equal(r, g) for r, g in pairs]))}
    return out


def output_failures(label: str, outputs: dict, min_cosine: float) -> list[str]:
    fails = []
    for name, m in outputs.items():
        if "error" in m:
            fails.append(f"{label}: {name} {m['error']}")
        elif "min_cosine" in m and not m["min_cosine"] >= min_cosine:
            fails.append(f"{label}: {name} min cosine {m['min_cosine']:.6f} < {min_cosine} "
                         f"(max abs diff {m['max_abs_diff']:.3g})")
        elif "agreement" in m and m["agreement"] < 1.0:
            fails.append(f"{label}: {name} differ on {100 * (1 - m['agreement']):.1f}% of inputs")
    return fails


def compare_graph(path: Path, feeds: list[dict], runtime: str, threads: int, precision: str = "f32") -> dict:
    """One graph file under ONNX Runtime and `runtime`, on the same feeds."""
    runners = {"openvino": openvino_runner}
    try:
        second = runners[runtime](path, threads, precision)
    except Exception as exc:  # a runtime that cannot load the file is a finding, not a crash
        return {"error": f"{runtime} could not load it: {' '.join(str(exc).split())[:300]}"}
    first = ort_runner(path, threads)
    ref = [first(f) for f in feeds]
    try:
        got = [second(f) for f in feeds]
    except Exception as exc:
        return {"error": f"{runtime} could not run it: {' '.join(str(exc).split())[:300]}"}
    return compare_outputs(ref, got)


def compare_variants(export_dir: Path, variants: dict, feeds: dict[str, list[dict]], runtime: str = "openvino",
                     threads: int = 1, min_cosine: dict | None = None, precision: str = "f32") -> dict:
    """Every variant's graphs: `variants` maps variant -> {graph kind: file}, `feeds` kind -> input feeds.

    Returns the runtime's description, per-variant results and every failure (each naming the variant,
    the file, the output, the value and the threshold); `passed` is True only when there is none.
    precision: OpenVINO's inference precision ("f32", or "default": OpenVINO's choice for this CPU).
    """
    require_runtime(runtime)
    gates = {**MIN_COSINE, **(min_cosine or {})}
    results, failures = {}, []
    for variant, files in variants.items():
        gate = gates.get(variant, DEFAULT_MIN_COSINE)
        entry = {"min_cosine_gate": gate}
        for kind, kind_feeds in feeds.items():
            name = files.get(kind)
            if not isinstance(name, str):
                continue
            got = compare_graph(Path(export_dir) / name, kind_feeds, runtime, threads, precision)
            label = f"{variant} {name} ({runtime} vs onnxruntime)"
            fails = [f"{label}: {got['error']}"] if "error" in got else output_failures(label, got, gate)
            entry[kind] = {"file": name, "outputs": got, "failures": fails}
            failures += fails
        entry["passed"] = not any(entry[k]["failures"] for k in feeds if k in entry)
        results[variant] = entry
    info = openvino_info(precision) if runtime == "openvino" else {}
    return {"runtime": runtime, **info, "reference": f"onnxruntime {ort.__version__} CPUExecutionProvider",
            "inputs": {k: len(v) for k, v in feeds.items()}, "threads": threads,
            "variants": results, "passed": not failures, "failures": failures}


def retrieval_feeds(clips: list[np.ndarray], ids: np.ndarray, mask: np.ndarray) -> dict[str, list[dict]]:
    """The retrieval graphs' inputs: one clip per video feed (sizes vary), all captions in one text feed."""
    return {"video": [{"frames": np.ascontiguousarray(c[None])} for c in clips],
            "text": [{"input_ids": ids, "attention_mask": mask}]}

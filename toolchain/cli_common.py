"""What every `vqtool` command shares: the error console, recipe options, the train-extra check."""

from __future__ import annotations

import importlib
import os
from typing import Annotated

import typer
from rich.console import Console

from toolchain.errors import MissingExtraError

err = Console(stderr=True)

SetOpt = Annotated[list[str], typer.Option("--set", help="Override a recipe key, e.g. --set train.lr=1e-4 (repeatable).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace the output directory if it exists.")]
TRAIN_MODULES = ("torch", "transformers", "peft", "bitsandbytes", "onnx", "safetensors")


def require_train_extra() -> None:
    from toolchain.quiet import quiet_libraries

    quiet_libraries()  # before the imports: bitsandbytes logs about optional kernels on import
    for module in TRAIN_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingExtraError(module, "train") from None


def reporter(quiet: bool = False, silent: bool = False):
    from toolchain.progress import Reporter

    if silent:  # a worker other than the main one: the main one reports, warnings included
        return Reporter(Console(file=open(os.devnull, "w")), quiet=True)
    return Reporter(err, quiet=quiet)


def csv_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]

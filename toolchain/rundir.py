"""Output directories written atomically: build in a hidden temp dir, rename into place at the end."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from toolchain.errors import VqtoolError


def check_target(target: Path, force: bool) -> None:
    """Refuse to touch an existing directory unless --force; fail before any work is done."""
    if target.exists() and not force:
        raise VqtoolError(f"{target} already exists; pass --force to replace it, or choose --output-dir")
    if target.exists() and not target.is_dir():
        raise VqtoolError(f"{target} exists and is not a directory; remove it or choose --output-dir")


def work_dir(run_dir: Path) -> Path:
    """Where a checkpointed run lives until it is complete: `runs/.NAME.partial` for `runs/NAME`."""
    return run_dir.parent / f".{run_dir.name}.partial"


def run_dir_of(path: Path) -> Path:
    """`--resume` accepts the run dir (`runs/NAME`) or its partial dir (`runs/.NAME.partial`)."""
    match = re.fullmatch(r"\.(.+)\.partial", path.name)
    return path.with_name(match.group(1)) if match else path


def start(target: Path) -> Path:
    """A fresh temp dir beside `target` (same filesystem, so the final rename is atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes 0700; the result should read like any other directory
    return tmp


def finish(tmp: Path, target: Path) -> Path:
    """Move the finished temp dir into place; an old target (only there with --force) goes last."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


@contextmanager
def building(target: Path):
    """Yield a temp dir to fill; on success it becomes `target`, on any failure it is removed."""
    tmp = start(target)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finish(tmp, target)


def write_text(path: Path, text: str) -> None:
    """Write a file atomically (temp name, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")

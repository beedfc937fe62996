"""User-facing errors: each names the key, file or flag at fault and the fix."""

from __future__ import annotations


class VqtoolError(Exception):
    """A user's mistake or a bad input; the CLI prints it without a traceback and exits 2."""

    exit_code = 2


class RecipeError(VqtoolError):
    """A recipe key or value is wrong; the message names the key and what is allowed."""


class DataError(VqtoolError):
    """An annotation file or video cannot be used."""


class VideoReadError(DataError):
    """One video file cannot be decoded (missing, empty, corrupt, not a video)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read video {path}: {reason}")


class MissingExtraError(VqtoolError):
    """A command needs an optional dependency group that is not installed."""

    def __init__(self, module: str, extra: str):
        super().__init__(
            f"this command needs the '{module}' package, which is not installed. "
            f"Install the extra: pip install 'vqtool[{extra}]'"
        )


class ParityError(VqtoolError):
    """An exported variant failed its parity gate; the files are kept for inspection."""

    exit_code = 1


class CheckpointError(VqtoolError):
    """A run cannot be resumed as asked (nothing to resume, changed recipe, mismatching checkpoint)."""


class TrainingDivergedError(VqtoolError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""

    exit_code = 1


class BenchFailedError(VqtoolError):
    """A benchmarked method failed to run; its row says FAILED and the command exits 1."""

    exit_code = 1

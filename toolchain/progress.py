"""Progress bars and messages for long work (rich, on stderr so --json output stays clean)."""

from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Task:
    """Handle for one bar: call it to advance, or feed it (done, total) from a callback."""

    def __init__(self, progress: Progress, task_id):
        self._p, self._id = progress, task_id

    def __call__(self, n: int = 1, status: str = "") -> None:
        self._p.update(self._id, advance=n, status=status)

    def progress(self, done: int, total: int) -> None:
        self._p.update(self._id, completed=done, total=total)


class Reporter:
    def __init__(self, console: Console | None = None, quiet: bool = False):
        self.console = console or Console(stderr=True)
        self.quiet = quiet

    def say(self, message: str) -> None:
        if not self.quiet:
            self.console.print(escape(message), highlight=False)

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)

    def skipped(self, items: list[tuple[str, str]]) -> None:
        if items:
            head = "; ".join(f"{p}: {r}" for p, r in items[:3])
            self.warn(f"skipped {len(items)} unreadable video(s), e.g. {head}")

    @contextmanager
    def task(self, description: str, total: int | None):
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("{task.fields[status]}")]
        with Progress(*columns, console=self.console, disable=self.quiet, transient=False) as p:
            yield Task(p, p.add_task(description, total=total, status=""))

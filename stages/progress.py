"""Progress bars (rich) for the long loops: reading dataset files, decoding images, writing arrays;
a status line for the slow steps without a count (importing TensorFlow).

Both go to stderr and only when it is a terminal, so logs, CI and captured test output
stay clean; they vanish when the step ends (the command prints its own one-line summary).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

Item = TypeVar("Item")


def track(items: Iterable[Item], description: str, total: int | None = None) -> Iterator[Item]:
    """Yield `items`, showing a progress bar on an interactive terminal."""
    from rich.console import Console
    from rich.progress import track as rich_track

    console = Console(stderr=True)
    yield from rich_track(
        items, description=description, total=total, console=console,
        transient=True, disable=not console.is_terminal,
    )


@contextmanager
def status(description: str) -> Iterator[None]:
    """Show `description` with a spinner while the block runs, on an interactive terminal."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        yield
        return
    with console.status(description):
        yield

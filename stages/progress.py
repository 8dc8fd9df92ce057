"""Progress bars (rich) for the long loops: reading dataset files, decoding images, writing arrays.

Bars go to stderr and only when it is a terminal, so logs, CI and captured test output
stay clean; they vanish when the loop ends (the command prints its own one-line summary).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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

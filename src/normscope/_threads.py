"""Scoped torch thread count: set it for a block, restore the previous setting afterwards.

``torch.set_num_threads`` is process-wide; a command run in-process (tests, notebooks) that set it
without restoring would change every later computation's thread count.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (unchanged when ``n`` is None or 0), restoring after.

    **Arguments:**

    - `n`: torch intra-op thread count for the block; None or 0 leaves torch's setting alone.
    """
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def single_thread() -> contextlib.AbstractContextManager[None]:
    """One torch thread inside the block (``threads(1)``); the previous setting is restored on exit."""
    return threads(1)

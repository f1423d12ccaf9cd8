"""A client-only module whose functions travel inside arguments (the packaging tests).

On the test cluster nothing installs it: a call reaches it only if the packager found it in
the call's pickled arguments and shipped it.
"""

from __future__ import annotations


def tenfold(x: int) -> int:
    return 10 * x


class Offset:
    """An object of a client-only class, carried inside an argument."""

    def __init__(self, by: int) -> None:
        self.by = by

    def __call__(self) -> int:
        return self.by + 1

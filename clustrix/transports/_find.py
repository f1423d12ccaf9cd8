"""GNU ``find -printf`` as a one-command tree scan: the formats, and the parsing of output.

Pure text in, entries out: what the SSH transport (:mod:`clustrix.transports.ssh`) runs and
how it decides on the result lives there. Knows nothing of connections or SFTP.
"""

from __future__ import annotations

import stat as stat_module

from .base import DirEntry, FileStat, TreeUsage

__all__ = [
    "DENIED",
    "FIND_DETAIL",
    "FIND_SIZES",
    "FIND_TYPES",
    "TREE_ERRORS",
    "encodable",
    "parse_find_entries",
    "parse_find_usage",
    "split_find_output",
]

# find -printf formats: NUL-terminated records that start with the entry's type letter.
# %P is the path relative to the starting point (empty for the starting point, printed
# first); it comes last, so that spaces in names need no escaping.
#: Type, size, mtime, permission bits (octal), path: needs a stat of every entry.
FIND_DETAIL = "%y %s %T@ %m %P\\0"
#: Type and path: find takes types from the directory listing, no stat per entry.
FIND_TYPES = "%y %P\\0"
#: Type and size, no names: all du needs.
FIND_SIZES = "%y %s\\0"
DENIED = ": Permission denied"
#: What find (LC_ALL=C) says about the tree itself; anything else means find is not usable.
TREE_ERRORS = (DENIED, ": No such file or directory", ": Too many levels of symbolic links")
_FIND_TYPES = {
    "f": stat_module.S_IFREG,
    "d": stat_module.S_IFDIR,
    "l": stat_module.S_IFLNK,
    "p": stat_module.S_IFIFO,
    "s": stat_module.S_IFSOCK,
    "b": stat_module.S_IFBLK,
    "c": stat_module.S_IFCHR,
}
#: The FileStat of a type-only record, one per type letter (shared: they are immutable).
_TYPE_ONLY = {kind: FileStat(mode, 0, 0.0) for kind, mode in _FIND_TYPES.items()}


def split_find_output(output: str) -> list[str]:
    """The NUL-terminated records of ``find -printf`` output, each ``<type letter> …``.

    Raises ValueError if the output is not that (a find that ignored the format).
    """
    records = output.split("\0")
    if records.pop() != "":
        raise ValueError(f"output does not end with a NUL: {output[-80:]!r}")
    for record in records:
        if len(record) < 2 or record[1] != " ":
            raise ValueError(f"not a record of the format: {record[:80]!r}")
    return records


def parse_find_entries(records: list[str], *, detail: bool) -> list[DirEntry]:
    """Entries from records of :data:`FIND_DETAIL` (``detail``) or :data:`FIND_TYPES`."""
    if not detail:
        other = FileStat(0, 0, 0.0)
        return [DirEntry(r[2:], _TYPE_ONLY.get(r[0], other)) for r in records]
    entries = []
    for record in records:
        kind, size, mtime, perms, rel = record.split(" ", 4)
        mode = _FIND_TYPES.get(kind, 0) | int(perms, 8)
        entries.append(DirEntry(rel, FileStat(mode, int(size), float(mtime))))
    return entries


def parse_find_usage(records: list[str]) -> TreeUsage:
    """Totals from records of :data:`FIND_SIZES`."""
    total = dirs = 0
    for record in records:
        if record[0] == "d":
            dirs += 1
        else:
            total += int(record[2:])
    return TreeUsage(total, len(records) - dirs, dirs)


def encodable(path: str) -> bool:
    """True if ``path`` can go into a command line (asyncssh sends commands as UTF-8)."""
    try:
        path.encode()
    except UnicodeEncodeError:  # a surrogate-escaped, non-UTF-8 name: SFTP handles those
        return False
    return True

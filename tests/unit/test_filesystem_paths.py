"""Pure parts of the filesystem façade: glob matching (against Python's own glob on a real
tree), find patterns, open modes, remote path types, FileInfo and DiskUsage."""

from __future__ import annotations

import glob as stdlib_glob
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clustrix import ClusterConfig, DiskUsage, FileInfo
from clustrix.filesystem import (
    ClusterFileSystem,
    _glob_match,
    _matcher,
    _parse_mode,
    _posix,
)
from clustrix.transports.base import DirEntry, FileStat

TREE = [
    "a/", "a/a", "a/b.", "a/.x", "a/ab/", "a/ab/a", "a/ab/bb/", "a/ab/bb/b.a",
    "b./", "b./a", ".h/", ".h/a", "ab", "b", ".a", "a.b",
]  # fmt: skip
COMPONENTS = ["*", "?", "a*", "*b", "[ab]", "[!a]*", "**", "a", "b.", ".*", "?b", "*.*", "[]a]"]


@pytest.fixture(scope="module")
def local_fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClusterFileSystem, Path]]:
    root = tmp_path_factory.mktemp("glob")
    for entry in TREE:
        if entry.endswith("/"):
            (root / entry).mkdir()
        else:
            (root / entry).write_text(entry)
    with ClusterFileSystem(ClusterConfig(remote_work_dir=str(root))) as fs:
        yield fs, root


@pytest.mark.skipif(sys.version_info < (3, 11), reason="glob's include_hidden is 3.11+")
@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=4))
def test_glob_agrees_with_python_glob(
    local_fs: tuple[ClusterFileSystem, Path], parts: list[str]
) -> None:
    # Python's "x/**" also yields "x/" itself; ours yields what is below x: compare the rest.
    if parts[-1] == "**":
        parts = [*parts, "*"]
    pattern = "/".join(parts)
    fs, root = local_fs
    expected = stdlib_glob.glob(pattern, root_dir=root, recursive=True, include_hidden=True)
    assert fs.glob(pattern) == sorted({p.rstrip("/") for p in expected}), pattern


def test_glob_match() -> None:
    assert _glob_match(["**"], ["a", "b"]) and not _glob_match(["**"], [])
    assert _glob_match(["**", "*.txt"], ["x.txt"]) and _glob_match(["**", "*.txt"], ["a", "x.txt"])
    assert not _glob_match(["*"], ["a", "b"]) and not _glob_match(["a", "*"], ["a"])
    assert _glob_match(["a", "**", "b", "**", "c"], ["a", "b", "x", "c"])


def entry(path: str) -> DirEntry:
    return DirEntry(path, FileStat(stat.S_IFREG | 0o644, 1, 0.0))


def test_find_patterns_match_the_name_or_with_a_slash_the_path() -> None:
    assert _matcher("*.csv")(entry("deep/x.csv"))
    assert not _matcher("deep*")(entry("deep/x.csv"))  # -name: the last component only
    assert _matcher("deep/*")(entry("deep/x.csv")) and _matcher("*/x.csv")(entry("a/b/x.csv"))
    assert _matcher("*")(entry(".hidden")) and _matcher("[.]*")(entry(".hidden"))
    assert not _matcher("X.CSV")(entry("x.csv"))  # case-sensitive on every client OS


@pytest.mark.parametrize(
    ("mode", "parsed"),
    [("r", ("r", False)), ("rb", ("r", True)), ("rt", ("r", False)), ("wb", ("w", True)),
     ("a", ("a", False)), ("xb", ("x", True)), ("br", ("r", True))],
)  # fmt: skip
def test_open_modes(mode: str, parsed: tuple[str, bool]) -> None:
    assert _parse_mode(mode) == parsed


@pytest.mark.parametrize("mode", ["", "r+", "rw", "rbt", "rr", "q", "w+b", "U"])
def test_bad_open_modes(mode: str) -> None:
    with pytest.raises(ValueError):
        _parse_mode(mode)


def test_remote_paths_are_posix_whatever_the_client() -> None:
    assert _posix(PureWindowsPath("data\\run 1\\x.csv")) == "data/run 1/x.csv"
    assert _posix(PurePosixPath("/a/b")) == "/a/b"
    assert _posix("a\\b") == "a\\b"  # a str is never rewritten: \\ is a legal POSIX name
    with pytest.raises(TypeError):
        _posix(b"/a")  # type: ignore[arg-type]


def test_file_info_follows_links_but_says_so() -> None:
    link = FileStat(stat.S_IFLNK | 0o777, 9, 1.0)
    target = FileStat(stat.S_IFREG | 0o640, 1234, 2.0)
    info = FileInfo.of("/d/link", link, target)
    assert (info.name, info.size, info.modified, info.permissions) == ("link", 1234, 2.0, 0o640)
    assert info.is_file and info.is_symlink and not info.is_dir
    assert info.filemode == "-rw-r-----"
    assert info.modified_datetime.year == 1970 and info.modified_datetime.tzinfo is not None
    dangling = FileInfo.of("/d/dangling", link, None)
    assert not dangling.is_file and not dangling.is_dir and dangling.is_symlink
    assert dangling.size == 9 and dangling.filemode == "lrwxrwxrwx"
    directory = FileInfo.of("/", FileStat(stat.S_IFDIR | 0o755, 4096, 0.0), None)
    assert directory.name == "/" and directory.is_dir and directory.filemode == "drwxr-xr-x"
    with pytest.raises(AttributeError):
        info.size = 0  # type: ignore[misc]


def test_disk_usage_units() -> None:
    usage = DiskUsage(3 * 2**30, 2, 1)
    assert usage.total_gb == 3.0 and usage.total_mb == 3 * 1024.0
    assert DiskUsage(0, 0, 0) == DiskUsage(0, 0, 0)


def test_local_open_uses_unix_newlines_and_utf8(tmp_path: Path) -> None:
    with ClusterFileSystem(ClusterConfig(remote_work_dir=str(tmp_path))) as fs:
        with fs.open("t.txt", "w") as fh:
            fh.write("ä\n")
        assert (tmp_path / "t.txt").read_bytes() == "ä\n".encode()
        assert os.listdir(tmp_path) == ["t.txt"]

"""Parsing ``find -printf`` output captured from the real test cluster (tests/data/fs), and the
SSH transport's decisions on it: use the records, raise, or fall back to SFTP."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from clustrix.transports.base import CommandResult, DirEntry, FileStat, TreeUsage
from clustrix.transports.ssh import (
    FIND_DETAIL,
    FIND_SIZES,
    FIND_TYPES,
    SSHTransport,
    parse_find_entries,
    parse_find_usage,
    split_find_output,
)
from clustrix.transports.ssh import _find as ssh_find  # the find-or-SFTP decision

DATA = Path(__file__).resolve().parent.parent / "data" / "fs"
RUNS = json.loads((DATA / "find_runs.json").read_text())
ROOT = RUNS["root"]

#: The captured tree below its root: path -> (type bits, size of a regular file).
#: "locked" has mode 000: find lists it and cannot read it.
EXPECTED: dict[str, tuple[int, int | None]] = {
    "plain.txt": (stat.S_IFREG, 5),
    "with space": (stat.S_IFREG, 0),
    "new\nline": (stat.S_IFREG, 1),
    "semi;$(x)": (stat.S_IFREG, 2),
    "ünï 🐍": (stat.S_IFREG, 3),
    "caf\udce9": (stat.S_IFREG, 2),  # b"caf\xe9", surrogate-escaped like os.fsdecode
    "dir": (stat.S_IFDIR, None),
    "dir/deep.bin": (stat.S_IFREG, 10),
    "dir/empty": (stat.S_IFDIR, None),
    "locked": (stat.S_IFDIR, None),
    "to_file": (stat.S_IFLNK, None),
    "to_dir": (stat.S_IFLNK, None),
    "dangling": (stat.S_IFLNK, None),
    "loop": (stat.S_IFLNK, None),
    "fifo": (stat.S_IFIFO, None),
}


def captured(name: str) -> str:
    return (DATA / f"find_{name}.out").read_bytes().decode("utf-8", "surrogateescape")


def test_detail_records() -> None:
    records = split_find_output(captured("detail"))
    assert records[0].startswith("d ") and records[0].endswith(" ")  # the root, printed first
    entries = parse_find_entries(records[1:], detail=True)
    assert {e.path: stat.S_IFMT(e.stat.mode) for e in entries} == {
        p: kind for p, (kind, _) in EXPECTED.items()
    }
    for entry in entries:
        _, size = EXPECTED[entry.path]
        if size is not None:
            assert entry.stat.size == size, entry
        assert entry.stat.mtime > 1.6e9
    by_path = {e.path: e for e in entries}
    assert by_path["locked"].stat.permissions == 0
    assert by_path["plain.txt"].stat.is_file and by_path["to_dir"].stat.is_symlink
    assert by_path["to_file"].stat.size == len("plain.txt")  # a link's own size
    assert by_path["dir/empty"].name == "empty" and by_path["new\nline"].name == "new\nline"


def test_type_records_agree_with_detail() -> None:
    detail = parse_find_entries(split_find_output(captured("detail"))[1:], detail=True)
    types = parse_find_entries(split_find_output(captured("types"))[1:], detail=False)
    assert sorted((e.path, stat.S_IFMT(e.stat.mode)) for e in types) == sorted(
        (e.path, stat.S_IFMT(e.stat.mode)) for e in detail
    )


def test_size_records_sum_like_the_detail() -> None:
    detail = parse_find_entries(split_find_output(captured("detail"))[1:], detail=True)
    usage = parse_find_usage(split_find_output(captured("sizes"))[1:])
    assert usage == TreeUsage.of(detail)
    assert usage.file_count == 12 and usage.dir_count == 3


@pytest.mark.parametrize(
    "output",
    ["no terminator", "d \0f x", "x\0", "BusyBox v1.36: unrecognized -printf\0", "\0"],
)
def test_output_that_is_not_records_is_refused(output: str) -> None:
    with pytest.raises(ValueError):
        split_find_output(output)


def test_tree_usage_of_entries() -> None:
    entries = [
        DirEntry("d", FileStat(stat.S_IFDIR | 0o755, 4096, 0.0)),
        DirEntry("d/f", FileStat(stat.S_IFREG | 0o644, 10, 0.0)),
        DirEntry("l", FileStat(stat.S_IFLNK | 0o777, 3, 0.0)),
    ]
    assert TreeUsage.of(entries) == TreeUsage(13, 2, 1)


# -- the SSH transport's decisions, on the captured runs -----------------------------------


class CannedSSH(SSHTransport):
    """An SSHTransport whose ``run`` answers with a captured result; never connects."""

    def __init__(self, stdout: str, returncode: int, stderr: str) -> None:
        super().__init__(host="cluster.invalid")
        self.answer = (stdout, returncode, stderr)
        self.argvs: list[list[str]] = []

    async def run(self, argv: Any, **kwargs: Any) -> CommandResult:
        self.argvs.append(list(argv))
        stdout, returncode, stderr = self.answer
        return CommandResult(list(argv), returncode, stdout, stderr)


def find(t: SSHTransport, root: str, fmt: str = FIND_TYPES, on_error: Any = "raise") -> Any:
    return asyncio.run(ssh_find(t, root, fmt, on_error))


def test_argv_passes_the_root_as_one_argument() -> None:
    t = CannedSSH("d \0", 0, "")
    root = "/x/a b;$(rm -rf ~)\n"
    assert find(t, root) == []
    assert t.argvs == [["env", "LC_ALL=C", "find", "-H", root, "-printf", FIND_TYPES]]


def test_unreadable_subdirectory_raises_or_is_omitted() -> None:
    run = RUNS["types"]
    t = CannedSSH(captured("types"), run["returncode"], run["stderr"])
    with pytest.raises(PermissionError, match="locked': Permission denied"):
        find(t, ROOT)
    records = find(t, ROOT, on_error="omit")
    assert sorted(r[2:] for r in records) == sorted(EXPECTED)
    assert t.find_program == "find"  # a tree's own problem: find stays in use


def test_unreadable_root_raises_even_when_omitting() -> None:
    run = RUNS["locked_root"]
    t = CannedSSH(run["stdout"], run["returncode"], run["stderr"])
    for on_error in ("raise", "omit"):
        with pytest.raises(PermissionError):
            find(t, f"{ROOT}/locked", on_error=on_error)


def test_missing_root_falls_back_to_sftp_for_the_exact_error() -> None:
    run = RUNS["missing"]
    t = CannedSSH(run["stdout"], run["returncode"], run["stderr"])
    assert find(t, f"{ROOT}/missing") is None
    assert t.find_program == "find"


def test_file_root_is_not_a_directory() -> None:
    run = RUNS["file_root"]
    t = CannedSSH(run["stdout"], run["returncode"], run["stderr"])
    with pytest.raises(NotADirectoryError):
        find(t, f"{ROOT}/plain.txt")
    t = CannedSSH("l \0", 0, "")  # -H prints a dangling root link itself
    with pytest.raises(FileNotFoundError):
        find(t, f"{ROOT}/dangling")


@pytest.mark.parametrize(
    ("stdout", "returncode", "stderr"),
    [
        ("", 127, "env: 'find': No such file or directory\n"),  # no find at all
        ("", 1, "find: unrecognized: -printf\n"),  # BusyBox
        ("", 1, "find: -printf: unknown primary or operator\n"),  # BSD, macOS
        ("%y %P\n", 0, ""),  # a find that printed the format
        ("", 2, ""),
    ],
)
def test_unusable_find_is_given_up_for_good(stdout: str, returncode: int, stderr: str) -> None:
    t = CannedSSH(stdout, returncode, stderr)
    assert find(t, "/x") is None
    assert t.find_program is None
    assert find(t, "/x") is None and len(t.argvs) == 1  # not tried again


def test_root_that_cannot_go_into_a_command_line_uses_sftp() -> None:
    t = CannedSSH("d \0", 0, "")
    assert find(t, "/x/caf\udce9") is None and t.argvs == []


def test_formats_start_with_the_type_and_end_with_nul() -> None:
    for fmt in (FIND_DETAIL, FIND_TYPES, FIND_SIZES):
        assert fmt.startswith("%y ") and fmt.endswith("\\0")
